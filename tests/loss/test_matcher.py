"""HungarianMatcher: default costs, the cost against a plain-Python reference and transformers'
Deformable-DETR matcher, optimality against brute force, batched == per image, all layers == layer
by layer, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher
from transformers.loss.loss_for_object_detection import center_to_corners_format
from transformers.loss.loss_for_object_detection import (
    generalized_box_iou as hf_generalized_box_iou,
)

from bbucli.errors import BbuError
from bbucli.loss.matcher import HungarianMatcher, MatchingError, center_prior_outside

WEIGHTS = {"cost_obj": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0}


def random_boxes(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """(*shape, 4) valid cxcywh boxes inside [0, 1]."""
    wh = torch.rand(*shape, 2, generator=gen) * 0.4 + 0.02
    centre = wh / 2 + torch.rand(*shape, 2, generator=gen) * (1 - wh)
    return torch.cat((centre, wh), dim=-1)


def random_case(seed: int, batch: int, queries: int, sizes: list[int]):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, generator=gen) * 2
    boxes = random_boxes(gen, batch, queries)
    targets = [random_boxes(gen, n) for n in sizes]
    return logits, boxes, targets


def naive_cost(logit: float, pred: list[float], tgt: list[float]) -> float:
    """One pair's cost in plain Python, written from the definitions."""
    p = 1 / (1 + math.exp(-logit))
    obj = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)
    l1 = sum(abs(a - b) for a, b in zip(pred, tgt, strict=True))

    def corners(b):
        return b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2

    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = corners(pred), corners(tgt)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    giou = inter / union - (hull - union) / hull
    return 2.0 * obj + 5.0 * l1 - 2.0 * giou


def naive_matrix(logits: torch.Tensor, boxes: torch.Tensor, tgt: torch.Tensor) -> list[list[float]]:
    """(Q,), (Q, 4), (N, 4) -> Q x N nested lists, double loop."""
    lg, bx, tg = logits.tolist(), boxes.tolist(), tgt.tolist()
    return [[naive_cost(lg[q], bx[q], tg[n]) for n in range(len(tg))] for q in range(len(lg))]


def test_default_costs():
    assert HungarianMatcher() == HungarianMatcher(
        **WEIGHTS, cost_center=0.0, focal_alpha=0.25, focal_gamma=2.0
    )


def test_cost_matches_plain_python_reference():
    logits, boxes, targets = random_case(0, 1, 12, [7])
    got = HungarianMatcher(**WEIGHTS).cost(logits, boxes, targets[0][None])[0]
    torch.testing.assert_close(got, torch.tensor(naive_matrix(logits[0], boxes[0], targets[0])))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), queries=st.integers(1, 5), objects=st.integers(1, 5))
def test_assignment_is_optimal_vs_brute_force(seed, queries, objects):
    logits, boxes, targets = random_case(seed, 1, queries, [objects])
    cost = naive_matrix(logits[0], boxes[0], targets[0])
    src, tgt = HungarianMatcher()(logits, boxes, targets)[0]
    assert len(src) == len(tgt) == min(queries, objects)
    assert len(set(src.tolist())) == len(src) and len(set(tgt.tolist())) == len(tgt)
    ours = sum(cost[q][n] for q, n in zip(src.tolist(), tgt.tolist(), strict=True))
    if objects <= queries:  # every target gets a distinct query
        best = min(
            sum(cost[q][n] for n, q in enumerate(perm))
            for perm in itertools.permutations(range(queries), objects)
        )
    else:  # every query gets a distinct target
        best = min(
            sum(cost[q][n] for q, n in enumerate(perm))
            for perm in itertools.permutations(range(objects), queries)
        )
    assert ours == pytest.approx(best, abs=1e-4)


def test_batched_equals_per_image():
    sizes = [3, 0, 7, 1, 12, 5]
    logits, boxes, targets = random_case(1, len(sizes), 20, sizes)
    batched = HungarianMatcher()(logits, boxes, targets)
    for i, (src, tgt) in enumerate(batched):
        alone_src, alone_tgt = HungarianMatcher()(
            logits[i : i + 1], boxes[i : i + 1], [targets[i]]
        )[0]
        assert torch.equal(src, alone_src) and torch.equal(tgt, alone_tgt)
        assert len(src) == sizes[i]


def test_match_layers_equals_layer_by_layer():
    sizes = [4, 0, 9]
    layers = [random_case(seed, 3, 15, sizes)[:2] for seed in range(4)]
    targets = random_case(0, 3, 15, sizes)[2]
    together = HungarianMatcher().match_layers(layers, targets, step=5)
    assert len(together) == 4
    for (logits, boxes), pairs in zip(layers, together, strict=True):
        for (src, tgt), (ref_src, ref_tgt) in zip(
            pairs, HungarianMatcher()(logits, boxes, targets), strict=True
        ):
            assert torch.equal(src, ref_src) and torch.equal(tgt, ref_tgt)


def test_images_without_targets_get_empty_indices():
    logits, boxes, _ = random_case(2, 3, 10, [])
    targets = [torch.zeros(0, 4), random_boxes(torch.Generator(), 2), torch.zeros(0, 4)]
    for case in (targets, [torch.zeros(0, 4)] * 3):
        for image, (src, tgt) in enumerate(HungarianMatcher()(logits, boxes, case)):
            assert src.dtype == tgt.dtype == torch.int64
            assert len(src) == len(tgt) == len(case[image])


def test_query_equal_to_a_target_is_matched_to_it():
    gen = torch.Generator().manual_seed(3)
    logits = torch.full((1, 30), -3.0)
    boxes = random_boxes(gen, 1, 30)
    targets = random_boxes(gen, 6)
    copies = torch.randperm(30, generator=gen)[:6]  # query copies[j] predicts target j exactly
    boxes[0, copies] = targets
    logits[0, copies] = 6.0
    src, tgt = HungarianMatcher()(logits, boxes, [targets])[0]
    assert dict(zip(tgt.tolist(), src.tolist(), strict=True)) == {
        j: int(q) for j, q in enumerate(copies)
    }


def test_more_targets_than_queries_matches_every_query():
    logits, boxes, targets = random_case(4, 1, 3, [8])
    src, tgt = HungarianMatcher()(logits, boxes, targets)[0]
    assert src.tolist() == [0, 1, 2] and len(set(tgt.tolist())) == 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_cost_names_step_layer_and_image(bad):
    sizes = [2, 3, 1]
    layers = [random_case(seed, 3, 6, sizes)[:2] for seed in range(2)]
    targets = random_case(0, 3, 6, sizes)[2]
    layers[1][1][1, 4, 2] = bad  # layer 1, image 1, query 4
    with pytest.raises(MatchingError, match=r"step 12, decoder layer 1, image 1") as info:
        HungarianMatcher().match_layers(layers, targets, step=12)
    assert isinstance(info.value, BbuError) and info.value.hint


def test_non_finite_predictions_of_an_image_without_targets_are_not_a_matching_error():
    logits, boxes, targets = random_case(5, 2, 6, [2, 0])
    boxes[1, 0, 0] = float("nan")  # image 1 has no cost matrix to solve
    assert len(HungarianMatcher()(logits, boxes, targets, step=1)[0][0]) == 2


def test_padding_queries_are_never_matched():
    """Image 0 has 3 real queries (not at the front, to check the index mapping) and 5 objects,
    padded next to image 1's 8 queries: its padding is left out, even where it would match best,
    and each image is matched as if it were alone."""
    logits, boxes, targets = random_case(6, 2, 8, [5, 2])
    real = torch.tensor([0, 2, 5])
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, real], mask[1] = True, True
    boxes[0, 1] = targets[0][0]  # a padding query predicting an object exactly, sure of it
    logits[0, 1] = 9.0
    boxes[0, 7] = float("nan")  # padding predictions may be anything: not a MatchingError
    matcher = HungarianMatcher()
    layers = matcher.match_layers([(logits, boxes)] * 2, targets, query_mask=mask)
    for pairs in layers:
        src, tgt = pairs[0]
        assert src.tolist() == real.tolist() and len(set(tgt.tolist())) == 3
        alone_src, alone_tgt = matcher(logits[:1, real], boxes[:1, real], targets[:1])[0]
        assert torch.equal(src, real[alone_src]) and torch.equal(tgt, alone_tgt)
        assert [t.tolist() for t in pairs[1]] == [
            t.tolist() for t in matcher(logits[1:], boxes[1:], targets[1:])[0]
        ]
    assert HungarianMatcher()(logits, boxes, targets, query_mask=mask)[0][0].tolist() == [0, 2, 5]
    # A non-finite real query is still an error, named by its image.
    boxes[1, 3] = float("nan")
    with pytest.raises(MatchingError, match="image 1"):
        matcher(logits, boxes, targets, query_mask=mask)


def test_cost_matrix_equals_transformers_terms():
    """Oracle: Deformable-DETR's cost written with transformers' own GIoU and box conversion."""
    logits, boxes, targets = random_case(7, 1, 100, [50])
    giou = hf_generalized_box_iou(
        center_to_corners_format(boxes[0]), center_to_corners_format(targets[0])
    )
    box_part = 5.0 * torch.cdist(boxes[0], targets[0], p=1) - 2.0 * giou
    got = HungarianMatcher(**{**WEIGHTS, "cost_obj": 0.0}).cost(logits, boxes, targets[0][None])[0]
    torch.testing.assert_close(got, box_part, rtol=0, atol=1e-6)

    # Deformable-DETR's focal class cost has 1e-8 inside its logs, ours does not: they agree
    # to ~1e-5 while |logit| <= 6 and drift apart (by design) beyond.
    logits = logits.clamp(-6.0, 6.0)
    prob = logits[0].double().sigmoid()
    neg = 0.75 * prob**2 * -(1 - prob + 1e-8).log()
    pos = 0.25 * (1 - prob) ** 2 * -(prob + 1e-8).log()
    only_obj = {**WEIGHTS, "cost_bbox": 0.0, "cost_giou": 0.0}
    got = HungarianMatcher(**only_obj).cost(logits, boxes, targets[0][None])[0, :, 0]
    torch.testing.assert_close(got.double(), 2.0 * (pos - neg), rtol=0, atol=2e-5)


def test_assignment_cost_equals_transformers_deformable_detr_matcher():
    """Oracle: transformers' Deformable-DETR matcher with one class is our cost definition
    (focal alpha 0.25, gamma 2 are hard-coded there; it adds 1e-8 inside the logs)."""
    sizes = [5, 0, 20, 50, 1]
    logits, boxes, targets = random_case(6, len(sizes), 100, sizes)
    theirs = DeformableDetrHungarianMatcher(class_cost=2.0, bbox_cost=5.0, giou_cost=2.0)(
        {"logits": logits[..., None], "pred_boxes": boxes},
        [
            {"class_labels": torch.zeros(n, dtype=torch.long), "boxes": t}
            for n, t in zip(sizes, targets, strict=True)
        ],
    )
    ours = HungarianMatcher()(logits, boxes, targets)
    for i, ((src, tgt), (ref_src, ref_tgt)) in enumerate(zip(ours, theirs, strict=True)):
        cost = HungarianMatcher(**WEIGHTS).cost(
            logits[i : i + 1], boxes[i : i + 1], targets[i][None]
        )[0]
        assert cost[src, tgt].sum().item() == pytest.approx(
            cost[ref_src, ref_tgt].sum().item(), abs=1e-4
        )
        assert torch.equal(src, ref_src) and torch.equal(tgt, ref_tgt)


def test_center_prior_flags_cells_outside_the_grown_target():
    # Two cells 0.2 wide; a target 0.1 wide at x = 0.5 reaches cells whose centres are within
    # (0.2 + 0.1) / 2 = 0.15 of it.
    anchors = torch.tensor([[[0.36, 0.5, 0.2, 0.2], [0.34, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]]])
    target = torch.tensor([[[0.5, 0.5, 0.1, 0.1]]])
    assert center_prior_outside(anchors, target)[0, :, 0].tolist() == [False, True, False]
    below = anchors.clone()
    below[..., 1] = 0.66
    assert center_prior_outside(below, target)[0, :, 0].tolist() == [True, True, True]


def test_center_prior_matches_a_target_to_the_queries_around_it():
    # Query 0 already predicts the target's box but comes from a far cell; query 1's cell holds
    # the target but its box is off. Without the prior the box wins, with it the cell does.
    boxes = torch.tensor([[[0.8, 0.8, 0.1, 0.1], [0.2, 0.3, 0.3, 0.3]]])
    logits = torch.zeros(1, 2)
    anchors = torch.tensor([[[0.2, 0.2, 0.25, 0.25], [0.8, 0.8, 0.25, 0.25]]])
    target = [torch.tensor([[0.8, 0.8, 0.1, 0.1]])]
    (free,) = HungarianMatcher(**WEIGHTS)(logits, boxes, target)
    assert free[0].tolist() == [0]
    (prior,) = HungarianMatcher(cost_center=100.0, **WEIGHTS)(
        logits, boxes, target, anchors=anchors
    )
    assert prior[0].tolist() == [1]
    # It is a cost, not a rule: a target with no query around it still gets matched.
    far = [torch.tensor([[0.5, 0.05, 0.05, 0.05]])]
    (alone,) = HungarianMatcher(cost_center=100.0, **WEIGHTS)(logits, boxes, far, anchors=anchors)
    assert len(alone[0]) == 1
    # Every layer of match_layers uses the same anchors.
    layers = HungarianMatcher(cost_center=100.0, **WEIGHTS).match_layers(
        [(logits, boxes), (logits, boxes)], target, anchors=anchors
    )
    assert [layer[0][0].tolist() for layer in layers] == [[1], [1]]


def test_the_public_function_equals_the_matcher_object() -> None:
    # `bbucli.hungarian_matcher` (the 0.1 name) must stay the matcher with the same costs.
    from bbucli import hungarian_matcher

    gen = torch.Generator().manual_seed(3)
    logits, boxes = torch.randn(2, 6, generator=gen), torch.rand(2, 6, 4, generator=gen) * 0.5 + 0.2
    targets = [torch.rand(3, 4, generator=gen) * 0.4 + 0.3, torch.zeros(0, 4)]
    got = hungarian_matcher(logits, boxes, targets, cost_bbox=1.0)
    want = HungarianMatcher(cost_bbox=1.0)(logits, boxes, targets)
    assert [(p.tolist(), t.tolist()) for p, t in got] == [(p.tolist(), t.tolist()) for p, t in want]
