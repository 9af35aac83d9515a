"""The Hungarian matcher's settings: its four cost weights and the focal objectness parameters.

A plain frozen value, torch-free, so the training config's schema reads its defaults from here
without importing torch. `bbucli.loss.matcher.HungarianMatcher` is this value plus the matching;
the detection criterion's focal loss uses the same `focal_alpha` / `focal_gamma`.

Cost per (query, target) pair: `cost_obj * focal objectness cost + cost_bbox * L1 + cost_giou *
(-GIoU) + cost_center * [query's cell outside the target]`, lower is a better match.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the matching cost's terms (each >= 0; `cost_center` 0 switches the spatial
    prior off) and the focal parameters (`focal_alpha` < 0 disables the class balance)."""

    cost_obj: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cost_center: float = 0.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


DEFAULT_COSTS = MatchCosts()
