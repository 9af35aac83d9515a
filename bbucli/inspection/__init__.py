"""`bbu inspect` as a library: what a JSONL costs in tokens, how it batches, how one episode looks.

Views, one module each, every one a frozen dataclass with `to_dict()`: `summary` (the whole file),
`episode` (one episode turn by turn), `tensors` (shapes after ChatProcessor and the collators),
`tokens` (the decoded token stream, a string's ids), `render` (boxes drawn on the images).
`source` reads the file and turns bad input into `RecordProblem`s (a `bbucli.schema.Problem` with its kind); `batching` holds the padding maths.
"""
