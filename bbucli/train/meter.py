"""What the training logs add per logging window: loss components (means over the window, this
rank's), tokens/s, the vision-token share and the padding fraction (the unused share of packed
rows' token budget, or the padded share of padded batches)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from bbucli.loss.multitask import LossBreakdown


class StepMeter:
    """Sums of loss components and token counts over the steps since the last flush."""

    def __init__(self) -> None:
        self.reset()
        # The first window starts with the first step, not with building the trainer.
        self.since: float | None = None

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}
        self.tokens = 0
        self.vision = 0
        self.padding = 0
        self.capacity = 0
        self.since = time.perf_counter()

    def add(
        self,
        breakdown: LossBreakdown,
        batch: Mapping[str, Any],
        image_token_id: int,
        row_budget: int | None,
        started: float,
    ) -> None:
        if self.since is None:
            self.since = started
        # The total is the Trainer's own `loss` (averaged over ranks); the components are added.
        for key, value in breakdown.losses.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        real = int(ids.numel() if mask is None else mask.sum())
        self.tokens += real
        self.vision += int((ids == image_token_id).sum())
        if mask is None and row_budget:  # a packed row: the unused share of its budget
            self.padding += max(row_budget - real, 0)
            self.capacity += max(row_budget, real)
        else:
            self.padding += ids.numel() - real
            self.capacity += ids.numel()

    def flush(
        self, prefix: str = "", world_size: int = 1, throughput: bool = True
    ) -> dict[str, float]:
        out = {f"{prefix}{k}": float(v) / self.counts[k] for k, v in self.sums.items()}
        if throughput and self.tokens:
            elapsed = max(time.perf_counter() - (self.since or time.perf_counter()), 1e-9)
            out["tokens_per_s"] = self.tokens * world_size / elapsed
            out["vision_share"] = self.vision / self.tokens
            out["padding"] = self.padding / max(self.capacity, 1)
        self.reset()
        return out
