"""Token streams as text: an episode's decoded tokens with their segment, a string's ids.

Pieces are decoded token by token, except that tokens holding parts of one UTF-8 character (a
Chinese character is often 2-3 byte-level tokens) are decoded together, so every piece is
readable text. A run of `<|image_pad|>` becomes one piece with its repeat count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbucli.chat.processor import SEGMENT_PROMPT, SEGMENT_STUDENT, SEGMENT_TEACHER
from bbucli.inspection.episode import ProcessedRecord, process_record
from bbucli.inspection.jsonable import to_jsonable
from bbucli.inspection.source import InspectOptions, vl_processor

SEGMENT_NAMES = {
    SEGMENT_PROMPT: "prompt",
    SEGMENT_TEACHER: "teacher answer",
    SEGMENT_STUDENT: "student answer",
}
_MAX_BYTES_PER_CHAR = 4
_REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class TokenPiece:
    """Consecutive tokens shown as one piece of text. ids: the tokens (one, or the byte tokens of
    one character); repeat: how many times the piece occurs in a row (image pads); segment:
    0 prompt, 1 teacher answer, 2 student answer (the segment of its first token)."""

    ids: tuple[int, ...]
    text: str
    segment: int = SEGMENT_PROMPT
    repeat: int = 1

    @property
    def tokens(self) -> int:
        return len(self.ids) * self.repeat


@dataclass(frozen=True)
class TokenStream:
    """An episode's whole token stream as training sees it (see `EpisodeDetail` for `skipped`)."""

    path: Path
    line: int
    index: int
    tokens: int
    skipped: bool
    pieces: tuple[TokenPiece, ...]

    def to_dict(self) -> dict[str, Any]:
        out = to_jsonable(self)
        out["segments"] = {str(k): v for k, v in SEGMENT_NAMES.items()}
        return out


@dataclass(frozen=True)
class TextTokens:
    """A string through the tokenizer (no special tokens added): its ids and readable pieces."""

    text: str
    model: str
    ids: tuple[int, ...]
    pieces: tuple[TokenPiece, ...]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def decode_pieces(
    tokenizer: Any,
    ids: Sequence[int],
    segments: Sequence[int] | None = None,
    *,
    image_token_id: int,
) -> list[TokenPiece]:
    """`ids` as readable pieces (module docstring); segments: one per id, default all prompt."""
    segments = segments if segments is not None else [SEGMENT_PROMPT] * len(ids)
    pieces: list[TokenPiece] = []
    pending: list[int] = []
    for i, (token, segment) in enumerate(zip(ids, segments, strict=True)):
        last = pieces[-1] if pieces else None
        if token == image_token_id and not pending and last and last.ids == (token,):
            pieces[-1] = TokenPiece(last.ids, last.text, last.segment, last.repeat + 1)
            continue
        if not pending:
            first_segment = segment
        pending.append(token)
        text = tokenizer.decode(pending, clean_up_tokenization_spaces=False)
        unfinished = text.endswith(_REPLACEMENT) and len(pending) < _MAX_BYTES_PER_CHAR
        if unfinished and i + 1 < len(ids):
            continue
        pieces.append(TokenPiece(tuple(pending), text, first_segment))
        pending = []
    return pieces


def stream_of(record: ProcessedRecord) -> TokenStream:
    """The decoded token stream of a processed record, with segments."""
    out = record.output
    pieces = decode_pieces(
        record.chat.tokenizer,
        out.input_ids.tolist(),
        out.segment.tolist(),
        image_token_id=record.chat.image_token_id,
    )
    return TokenStream(
        path=record.path,
        line=record.line,
        index=record.index,
        tokens=out.length,
        skipped=record.skipped,
        pieces=tuple(pieces),
    )


def token_stream(
    path: str | Path, index: int = 0, options: InspectOptions | None = None
) -> TokenStream:
    """The decoded token stream of the `index`-th record (0-based) with segments."""
    return stream_of(process_record(path, index, options))


def text_tokens(text: str, model: str = "tiny") -> TextTokens:
    """`text` tokenised by `model`'s tokenizer without special tokens added (special-token
    strings such as `<|image_pad|>` in the text are still read as their ids)."""
    processor = vl_processor(str(model))
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = decode_pieces(processor.tokenizer, ids, image_token_id=processor.image_token_id)
    return TextTokens(text=text, model=str(model), ids=tuple(ids), pieces=tuple(pieces))
