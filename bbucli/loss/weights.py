"""The multi-task loss's weights and the weighted total, the one place weights are applied:

    total = teacher_weight * teacher_lm + student_weight * student_lm
          + bbox_l1_weight * l1 + bbox_giou_weight * giou + objectness_weight * objectness
          + caption_weight * caption

Auxiliary components (`l1_0`, `giou_1`, `objectness_token`, ...) take the weight of their plain
key. Torch-free at import, so the training config's schema reads the defaults from `LossWeights`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LossWeights:
    """The weight of every loss component (config `loss.*`); 0 switches a term off."""

    teacher_weight: float = 1.0
    student_weight: float = 1.0
    bbox_l1_weight: float = 5.0
    bbox_giou_weight: float = 2.0
    objectness_weight: float = 2.0
    caption_weight: float = 1.0

    def __post_init__(self) -> None:
        bad = [
            f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)
            if not (math.isfinite(getattr(self, f.name)) and getattr(self, f.name) >= 0)
        ]
        if bad:
            raise ValueError(f"loss weights must be finite and >= 0: {', '.join(bad)}")


DEFAULT_WEIGHTS = LossWeights()

# Loss key (without an auxiliary suffix `_<layer>` / `_token`) -> its LossWeights field.
_WEIGHT_OF = {
    "teacher_lm": "teacher_weight",
    "student_lm": "student_weight",
    "l1": "bbox_l1_weight",
    "giou": "bbox_giou_weight",
    "objectness": "objectness_weight",
    "caption": "caption_weight",
}
_AUX_SUFFIX = re.compile(r"_(\d+|token)$")


def total_loss(losses: Mapping[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """The weighted sum of unweighted scalar components keyed as `MultiTaskLoss` keys them.
    Raises KeyError for a key with no weight, ValueError when every weight is 0."""
    total: torch.Tensor | float = 0.0
    for key, value in losses.items():
        base = key if key in _WEIGHT_OF else _AUX_SUFFIX.sub("", key)
        if base not in _WEIGHT_OF:
            raise KeyError(f"loss component {key!r} has no weight in LossWeights")
        weight = getattr(weights, _WEIGHT_OF[base])
        if weight:
            total = total + weight * value
    if isinstance(total, float):
        raise ValueError("every loss weight is 0: nothing to train")
    return total
