"""Qwen2.5-VL's 3-D mRoPE position ids for one unpadded sample, the rule of transformers' `get_rope_index`.

Rows are (temporal, height, width). Text tokens advance all three rows together by one. An image's
`<|image_pad|>` run of `t * (h / m) * (w / m)` merged tokens (m = spatial merge size) gets the grid
of its merged tokens, row-major, offset by the running position `p`: temporal `p + t_i`,
height `p + h_i`, width `p + w_i`; the text after it continues at `p + max(t, h / m, w / m)`
(transformers 5.23 writes `max(h, w) / m`, the same for still images where t == 1).

Computing the ids per sample (here, in the ChatProcessor) rather than per batch in the model lets
the collators pad or pack them as plain tensors: a packed row is the concatenation of its samples'
ids, each starting at 0, exactly as if the sample ran alone.
"""

from __future__ import annotations

import torch

from bbucli.errors import DataError


def image_token_runs(input_ids: torch.Tensor, image_token_id: int) -> list[tuple[int, int]]:
    """`[(start, end), ...]` of the maximal runs of `image_token_id` in a 1-D `input_ids`."""
    is_image = (input_ids == image_token_id).to(torch.int8)
    edges = torch.diff(is_image, prepend=is_image.new_zeros(1), append=is_image.new_zeros(1))
    starts = torch.nonzero(edges == 1).flatten().tolist()
    ends = torch.nonzero(edges == -1).flatten().tolist()
    return list(zip(starts, ends, strict=True))


def mrope_position_ids(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    spatial_merge_size: int,
    image_token_id: int,
    vision_start_id: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Position ids of one sample and its rope delta.

    input_ids: (S,) token ids, no padding. image_grid_thw: (T, 3) patch grids (t, h, w) of the
    sample's images in order, or None / (0, 3) without images. Each image must be one contiguous
    run of `t * h * w / m**2` image tokens; when `vision_start_id` is given, each run must follow it.
    Returns `(position_ids (3, S) long, rope_delta)` where `rope_delta = max + 1 - S` is what
    generation adds to text positions after the prompt.
    Raises DataError when the image runs do not match the grids.
    """
    if input_ids.ndim != 1:
        raise ValueError(
            f"input_ids must be 1-D (one unpadded sample), got shape {tuple(input_ids.shape)}"
        )
    grids = (
        []
        if image_grid_thw is None
        else [tuple(int(v) for v in g) for g in image_grid_thw.tolist()]
    )
    runs = _split_runs(image_token_runs(input_ids, image_token_id), grids, spatial_merge_size)
    if vision_start_id is not None:
        for start, _ in runs:
            if start == 0 or int(input_ids[start - 1]) != vision_start_id:
                raise DataError(f"image tokens at {start} do not follow <|vision_start|>")

    seq_len = input_ids.shape[0]
    pieces: list[torch.Tensor] = []
    pos = 0  # running position: the next text token's id
    cursor = 0  # next token index not yet covered
    m = spatial_merge_size
    for (start, end), (t, h, w) in zip(runs, grids, strict=True):
        if start > cursor:
            pieces.append(torch.arange(pos, pos + start - cursor).expand(3, -1))
            pos += start - cursor
        gt, gh, gw = t, h // m, w // m
        grid = torch.stack(
            torch.meshgrid(torch.arange(gt), torch.arange(gh), torch.arange(gw), indexing="ij")
        ).reshape(3, -1)
        pieces.append(grid + pos)
        pos += max(gt, gh, gw)
        cursor = end
    if cursor < seq_len:
        pieces.append(torch.arange(pos, pos + seq_len - cursor).expand(3, -1))
    position_ids = torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long)
    rope_delta = int(position_ids.max()) + 1 - seq_len if seq_len else 0
    return position_ids.long(), rope_delta


def _split_runs(
    runs: list[tuple[int, int]], grids: list[tuple[int, int, int]], merge: int
) -> list[tuple[int, int]]:
    """Match image-token runs to grids; two images with nothing between them share one run."""
    counts = [t * h * w // (merge * merge) for t, h, w in grids]
    out: list[tuple[int, int]] = []
    gi = 0
    for start, end in runs:
        while start < end:
            if gi >= len(counts):
                raise DataError(
                    f"image tokens at {start}..{end} but only {len(grids)} image grid(s)"
                )
            if start + counts[gi] > end:
                raise DataError(
                    f"image {gi}: grid {grids[gi]} needs {counts[gi]} image tokens, "
                    f"found a run of {end - start} at {start}"
                )
            out.append((start, start + counts[gi]))
            start += counts[gi]
            gi += 1
    if gi != len(counts):
        raise DataError(f"{len(counts)} image grid(s) but image tokens for only {gi}")
    return out
