"""Batches of `ChatProcessorOutput`s: padded (`StandardDataCollator`) or packed (`PackedDataCollator`).

Both return a plain dict the model and the losses read; the keys the Qwen2.5-VL forward accepts
(`input_ids`, `attention_mask`, `position_ids`, `pixel_values`, `image_grid_thw`,
`mm_token_type_ids`) plus `labels`, `segment` (0 prompt, 1 teacher answer, 2 student answer,
-1 padding), the student's spans (`prompt_end`, `student_turn_start`, `student_image_span`, moved
with their sample by the padding or the packing, and `student_image`, the student image's index in
the batch's `image_grid_thw`), `gt_boxes` and `gt_descs` for the detection head.

Packed rows (the default for training) follow the one form transformers 5.23 turns into
per-sample causal attention on every backend without a mask tensor: `position_ids` of shape
(4, 1, L), row 0 the text positions restarting at 0 for each sample (the model's mask builder
starts a new sequence wherever they do not step by +1, and flash-attention-2 derives its varlen
`cu_seqlens` from the zeros of the same row), rows 1-3 each sample's own mRoPE ids; no
`attention_mask`; no KV cache (with one the mask builder does not look for packed sequences and
attention silently crosses samples, in train mode too, so the batch carries `use_cache=False`).
Without row 0, (3, 1, L) ids alone, the samples attend to each other. The vision tower encodes
each image on its own, so `pixel_values` and `image_grid_thw` just concatenate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from bbucli.chat.processor import IGNORE_INDEX, ChatProcessorOutput

PAD_SEGMENT = -1
# transformers (4.x get_rope_index) leaves padded positions at 1; any value works under the mask.
PAD_POSITION = 1


def _vision(samples: Sequence[ChatProcessorOutput]) -> dict[str, torch.Tensor | None]:
    """`pixel_values (sum patches, 1176)` and `image_grid_thw (sum T, 3)`, None when no images."""
    with_images = [s for s in samples if s.image_grid_thw.shape[0] > 0]
    if not with_images:
        return {"pixel_values": None, "image_grid_thw": None}
    return {
        "pixel_values": torch.cat([s.pixel_values for s in with_images], dim=0),
        "image_grid_thw": torch.cat([s.image_grid_thw for s in with_images], dim=0),
    }


def _student(samples: Sequence[ChatProcessorOutput], offsets: Sequence[int]) -> dict[str, Any]:
    """Each sample's spans moved by `offsets[i]` (where its first token lands in the batch row):
    prompt_end (B,), student_turn_start (B,), student_image_span (B, 2) [start, end) long; and
    student_image (B,) long, the index of its student image (its last) in the batch's
    `image_grid_thw`, -1 for a sample without images (its span is empty)."""
    offset = torch.tensor(offsets, dtype=torch.long)
    images = torch.tensor([s.image_grid_thw.shape[0] for s in samples], dtype=torch.long)
    spans = torch.tensor([s.student_image_span for s in samples], dtype=torch.long)
    return {
        "prompt_end": offset + torch.tensor([s.prompt_end for s in samples]),
        "student_turn_start": offset + torch.tensor([s.student_turn_start for s in samples]),
        "student_image_span": offset[:, None] + spans,
        "student_image": torch.where(images > 0, torch.cumsum(images, 0) - 1, -1),
    }


class StandardDataCollator:
    """Pad a batch to its longest sample.

    Returns input_ids, attention_mask, labels, segment, mm_token_type_ids: (B, S);
    position_ids: (3, B, S) mRoPE ids (padding at 1); prompt_end, student_turn_start (B,) and
    student_image_span (B, 2): the sample's own indices shifted by the left padding, so they index
    its padded row; student_image (B,) as in `_student`; pixel_values (sum patches, 1176) and
    image_grid_thw (sum T, 3) or None; gt_boxes: list of (N_i, 4) normalised cxcywh; gt_descs:
    list of tuples of str.
    `padding_side="right"` for training, `"left"` for generation.
    """

    def __init__(self, pad_token_id: int, padding_side: Literal["right", "left"] = "right") -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side

    def __call__(self, samples: Sequence[ChatProcessorOutput]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        batch, width = len(samples), max(s.length for s in samples)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        segment = torch.full((batch, width), PAD_SEGMENT, dtype=torch.int8)
        mm_token_type_ids = torch.zeros((batch, width), dtype=torch.int32)
        position_ids = torch.full((3, batch, width), PAD_POSITION, dtype=torch.long)
        offsets = [width - s.length if self.padding_side == "left" else 0 for s in samples]
        for i, (s, offset) in enumerate(zip(samples, offsets, strict=True)):
            cols = slice(offset, offset + s.length)
            input_ids[i, cols] = s.input_ids
            attention_mask[i, cols] = 1
            labels[i, cols] = s.labels
            segment[i, cols] = s.segment
            mm_token_type_ids[i, cols] = s.mm_token_type_ids
            position_ids[:, i, cols] = s.position_ids
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "segment": segment,
            "mm_token_type_ids": mm_token_type_ids,
            "position_ids": position_ids,
            **_student(samples, offsets),
            **_vision(samples),
            "gt_boxes": [s.gt_boxes for s in samples],
            "gt_descs": [s.gt_descs for s in samples],
        }


class PackedDataCollator:
    """Concatenate a bin of samples into one row of length L = sum of their lengths.

    Returns input_ids, labels, segment, mm_token_type_ids: (1, L) (the first label of every
    sample is -100: it would be predicted from the previous sample's last token);
    position_ids: (4, 1, L), row 0 per-sample text positions 0..len-1, rows 1-3 per-sample mRoPE
    ids (see the module docstring); cu_seqlens: (B + 1,) int32 sample boundaries in the row;
    prompt_end, student_turn_start (B,) and student_image_span (B, 2): the sample's own indices
    shifted by its start in the row; student_image (B,) as in `_student`; pixel_values
    (sum patches, 1176) and image_grid_thw (sum T, 3) or None; gt_boxes, gt_descs: lists as in
    `StandardDataCollator`; use_cache: False. No attention_mask, on purpose: a 2-D one would switch
    off the per-sample masking.
    """

    def __call__(self, samples: Sequence[ChatProcessorOutput]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        lengths = torch.tensor([s.length for s in samples], dtype=torch.int32)
        cu_seqlens = torch.zeros(len(samples) + 1, dtype=torch.int32)
        cu_seqlens[1:] = torch.cumsum(lengths, dim=0)
        labels = torch.cat([s.labels for s in samples])
        labels[cu_seqlens[:-1].long()] = IGNORE_INDEX
        text_positions = torch.cat([torch.arange(s.length) for s in samples])
        mrope = torch.cat([s.position_ids for s in samples], dim=1)
        return {
            "input_ids": torch.cat([s.input_ids for s in samples])[None],
            "labels": labels[None],
            "segment": torch.cat([s.segment for s in samples])[None],
            "mm_token_type_ids": torch.cat([s.mm_token_type_ids for s in samples])[None],
            "position_ids": torch.cat([text_positions[None], mrope], dim=0)[:, None, :],
            "cu_seqlens": cu_seqlens,
            # Travels with the batch into `model(**batch)`: a KV cache disables packed masking.
            "use_cache": False,
            **_student(samples, cu_seqlens[:-1].tolist()),
            **_vision(samples),
            "gt_boxes": [s.gt_boxes for s in samples],
            "gt_descs": [s.gt_descs for s in samples],
        }
