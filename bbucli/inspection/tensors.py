"""Every tensor's name, shape and dtype after the ChatProcessor and after each collator.

The episode at `index` is processed, then collated with the records after it into a batch of
up to `batch_size` samples, once by `StandardDataCollator` (right padding, as in training) and
once by `PackedDataCollator` (one row, `cu_seqlens`). Small integer tensors (`cu_seqlens`,
`prompt_end`, `image_grid_thw`) carry their values too. Records after `index` that cannot be
processed (bad line, missing image, over budget) are left out of the batch and listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from bbucli.data.collators import PackedDataCollator, StandardDataCollator
from bbucli.errors import DataError
from bbucli.inspection.episode import ProcessedRecord, process_record
from bbucli.inspection.jsonable import to_jsonable
from bbucli.inspection.source import InspectOptions, chat_processor
from bbucli.schema import RecordError, iter_episodes

VALUES_UP_TO = 64  # integer tensors with at most this many elements show their values
SHOWN_VALUES = ("cu_seqlens", "prompt_end", "image_grid_thw", "rope_delta")


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a stage's output. shape: the tensor's shape, None for a non-tensor; dtype:
    e.g. "torch.int64", or the Python type; value: values of small integer tensors and scalars;
    note: what a list holds (e.g. the shapes of per-sample gt_boxes)."""

    name: str
    shape: tuple[int, ...] | None
    dtype: str
    value: Any = None
    note: str | None = None


@dataclass(frozen=True)
class TensorStage:
    """The output of one stage: "ChatProcessor" (the sample at `index`), or a collator."""

    stage: str
    tensors: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class TensorsView:
    """lines: the file lines of the batch's samples (the one at `index` first); left_out: lines
    after it that could not join the batch, with why."""

    path: Path
    index: int
    lines: tuple[int, ...]
    left_out: tuple[str, ...]
    stages: tuple[TensorStage, ...]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def _describe(name: str, value: Any) -> TensorInfo:
    if isinstance(value, torch.Tensor):
        small = value.numel() <= VALUES_UP_TO and not value.is_floating_point()
        shown = value.tolist() if small and name in SHOWN_VALUES else None
        return TensorInfo(name, tuple(value.shape), str(value.dtype), shown)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        shapes = ", ".join(str(tuple(v.shape)) for v in value)
        return TensorInfo(name, None, f"list[{value[0].dtype}]", note=f"{len(value)}: {shapes}")
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return TensorInfo(name, None, type(value).__name__, value=list(value))
    if isinstance(value, (list, tuple)):
        return TensorInfo(name, None, type(value).__name__, note=f"{len(value)} item(s)")
    if value is None:
        return TensorInfo(name, None, "None")
    return TensorInfo(name, None, type(value).__name__, value=value)


def _stage(stage: str, items: Mapping[str, Any]) -> TensorStage:
    return TensorStage(stage, tuple(_describe(k, v) for k, v in items.items()))


def tensors_view(
    path: str | Path, index: int = 0, options: InspectOptions | None = None
) -> TensorsView:
    """Shapes and dtypes of the sample at `index` and of its batch (up to options.batch_size)."""
    options = options or InspectOptions()
    return tensors_of(process_record(path, index, options), options)


def tensors_of(first: ProcessedRecord, options: InspectOptions) -> TensorsView:
    """`tensors_view` of an already processed record (the batch is read from its file)."""
    path, index = first.path, first.index
    chat = chat_processor(options, source=path)
    samples, lines, left_out = [first.output], [first.line], []
    for position, (line, item) in enumerate(iter_episodes(path)):
        if len(samples) >= options.batch_size:
            break
        if position <= index:
            continue
        if isinstance(item, RecordError):
            left_out.append(str(item))
            continue
        try:
            sample = chat.process_sample(item, path.parent)
        except DataError as exc:
            left_out.append(f"{path}:{line}: {exc.message}")
            continue
        if sample is None:
            left_out.append(f"{path}:{line}: over max_tokens {options.max_tokens}: skipped")
            continue
        samples.append(sample)
        lines.append(line)

    single = {f.name: getattr(first.output, f.name) for f in fields(first.output)}
    pad_id = chat.tokenizer.pad_token_id
    standard = StandardDataCollator(pad_token_id=pad_id, padding_side="right")(samples)
    packed = PackedDataCollator()(samples)
    count = f"{len(samples)} sample(s)"
    return TensorsView(
        path=path,
        index=index,
        lines=tuple(lines),
        left_out=tuple(left_out),
        stages=(
            _stage("ChatProcessor", single),
            _stage(f"StandardDataCollator (right padding, {count})", standard),
            _stage(f"PackedDataCollator (one row, {count})", packed),
        ),
    )
