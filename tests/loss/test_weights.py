"""LossWeights and total_loss: the one place the loss weights are applied."""

from __future__ import annotations

import pytest
import torch

from bbucli.loss.weights import LossWeights, total_loss


def test_total_loss_weights_every_component_and_its_auxiliaries() -> None:
    weights = LossWeights(
        teacher_weight=0.5,
        student_weight=2.0,
        bbox_l1_weight=5.0,
        bbox_giou_weight=3.0,
        objectness_weight=7.0,
        caption_weight=0.0,
    )
    losses = {
        "teacher_lm": 1.0,
        "student_lm": 10.0,
        "l1": 100.0,
        "l1_0": 1000.0,
        "giou": 1e4,
        "objectness": 1e5,
        "objectness_0": 1e6,
        "objectness_token": 1e7,
        "caption": 1e8,
    }
    total = total_loss(
        {k: torch.tensor(v, dtype=torch.float64) for k, v in losses.items()}, weights
    )
    expected = 0.5 + 20 + 5 * 1100 + 3e4 + 7 * (1e5 + 1e6 + 1e7)
    assert float(total) == pytest.approx(expected)


def test_total_loss_refuses_unknown_components_and_all_zero_weights() -> None:
    with pytest.raises(KeyError, match="focal"):
        total_loss({"focal": torch.tensor(1.0)}, LossWeights())
    zero = LossWeights(*(0.0,) * 6)
    with pytest.raises(ValueError, match="every loss weight is 0"):
        total_loss({"l1": torch.tensor(1.0)}, zero)


def test_loss_weights_must_be_finite_and_non_negative() -> None:
    with pytest.raises(ValueError, match="caption_weight=-1"):
        LossWeights(caption_weight=-1.0)
    with pytest.raises(ValueError, match="bbox_l1_weight=nan"):
        LossWeights(bbox_l1_weight=float("nan"))
