"""The dry run of `bbu train --dry-run`: one batch forward and backward, reported, nothing written.

Owns `DryRunReport` and its `GroupRow` table, `dry_run_batch` (shapes, losses, memory and the
parameter-group table of one training batch) and `remove_empty_tree`, which takes away the empty
output folder the Trainer made so that a dry run leaves no trace. `run_training(dry_run=True)`
builds the parts and calls these.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbucli.data.dataset import DatasetStats
from bbucli.train.config.loading import BbuConfig


@dataclass(frozen=True)
class GroupRow:
    """One parameter group: its learning rate (0: frozen), tensors and parameters, trainable ones."""

    group: str
    lr: float
    tensors: int
    params: int
    trainable: int


@dataclass(frozen=True)
class DryRunReport:
    """One batch through the model. shapes: batch and output tensors (name -> shape); losses: every
    component; groups: the parameter-group table; memory_gb: peak process RSS, and CUDA peak
    allocated on a GPU; tokens / vision_tokens / padding of the batch; device, dtype, attention;
    train / val: dataset counts; seconds: the forward + backward."""

    shapes: dict[str, tuple[int, ...]]
    losses: dict[str, float]
    groups: tuple[GroupRow, ...]
    memory_gb: dict[str, float]
    tokens: int
    vision_tokens: int
    padding: float
    device: str
    dtype: str
    attention: str
    train: DatasetStats
    val: DatasetStats | None
    seconds: float


def dry_run_batch(
    trainer: Any, cfg: BbuConfig, *, image_token_id: int, train: DatasetStats, val: DatasetStats | None
) -> DryRunReport:
    """One training batch of `trainer` (a `BBUTrainer`) forward and backward, no optimizer step;
    the gradients are cleared again. train / val: the dataset counts to report."""
    import torch

    from bbucli.model.param_groups import group_parameters

    model = trainer.model
    device = trainer.args.device
    model.to(device)
    model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    batch = _to_device(batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    output = model(batch)
    breakdown = trainer.loss_fn(model, output, batch, step=0)
    breakdown.total.backward()
    seconds = time.perf_counter() - started
    model.zero_grad(set_to_none=True)

    shapes = {f"batch.{k}": tuple(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    shapes["output.hidden_states"] = tuple(output.hidden_states.shape)
    if output.head is not None:
        shapes["output.head.logits"] = tuple(output.head.pred_logits.shape)
        shapes["output.head.boxes"] = tuple(output.head.pred_boxes.shape)
        shapes["output.vision_memory"] = tuple(output.vision_memory.shape)
        shapes["output.text_memory"] = tuple(output.text_memory.shape)
    memory = {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.type == "cuda":
        memory["cuda_peak_allocated"] = torch.cuda.max_memory_allocated(device) / 2**30
    rows = []
    for group, members in group_parameters(model.named_parameters()).items():
        rows.append(
            GroupRow(
                group=group,
                lr=float(getattr(cfg.optim.lrs, group)),
                tensors=len(members),
                params=sum(p.numel() for _, p in members),
                trainable=sum(p.numel() for _, p in members if p.requires_grad),
            )
        )
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    tokens = int(ids.numel() if mask is None else mask.sum())
    capacity = cfg.data.max_tokens_per_batch if mask is None else ids.numel()
    qwen_param = next(model.qwen.parameters())
    return DryRunReport(
        shapes=shapes,
        losses={k: v for k, v in breakdown.for_logging().items()},
        groups=tuple(rows),
        memory_gb=memory,
        tokens=tokens,
        vision_tokens=int((ids == image_token_id).sum()),
        padding=max(0.0, 1.0 - tokens / max(capacity, 1)),
        device=str(device),
        dtype=str(qwen_param.dtype).removeprefix("torch."),
        attention=str(getattr(model.qwen.config, "_attn_implementation", "?")),
        train=train,
        val=val,
        seconds=seconds,
    )


def remove_empty_tree(folder: Path) -> None:
    """Remove `folder` if it holds nothing but empty folders."""
    if not folder.is_dir() or any(p.is_file() for p in folder.rglob("*")):
        return
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        path.rmdir()
    folder.rmdir()


def _to_device(value: Any, device: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_device(v, device) for v in value)
    return value
