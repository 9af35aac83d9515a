"""Sigmoid focal terms for the single-class objectness logit: the loss and the matching cost.

Both are pure, elementwise functions of objectness logits (any shape, e.g. (B, Q)); the
criterion reduces the loss, the matcher broadcasts the cost over targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """RetinaNet's focal loss per element, unreduced.

    logits: (...) raw objectness logits; targets: (...) same shape, 1 for an object, 0 for none
    (floats in between are allowed). Returns (...) losses. `alpha < 0` disables the class balance,
    as in RetinaNet and transformers' `sigmoid_focal_loss`.
    """
    targets = targets.to(logits.dtype)
    prob = logits.sigmoid()
    # The logits form of BCE stays finite where log(sigmoid(x)) would underflow.
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def focal_objectness_cost(
    logits: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Deformable-DETR's focal class cost for the object class, per query.

    logits: (...) objectness logits -> (...) cost = focal loss if labelled object minus focal loss
    if labelled background; lower means "more likely an object". With one class the cost does not
    depend on the target, so the matcher broadcasts it along the target axis.

    Deformable-DETR writes `-log(p + 1e-8)`; softplus gives the same values without the 1e-8 floor
    (which flattens the cost for |logit| > ~18 and differs by < 1e-6 below |logit| ~ 10).
    """
    prob = logits.sigmoid()
    pos = alpha * (1 - prob) ** gamma * F.softplus(-logits)  # -log(p)
    neg = (1 - alpha) * prob**gamma * F.softplus(logits)  # -log(1 - p)
    return pos - neg
