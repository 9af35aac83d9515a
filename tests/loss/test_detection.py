"""DetectionCriterion: L1/GIoU/focal against transformers' DETR losses, perfect predictions, images
without objects, gradients, num_boxes normalisation, auxiliary keys, the matching it returns."""

from __future__ import annotations

import pytest
import torch
from transformers.loss.loss_deformable_detr import DeformableDetrImageLoss
from transformers.loss.loss_for_object_detection import (
    ImageLoss,
    center_to_corners_format,
)
from transformers.loss.loss_for_object_detection import (
    generalized_box_iou as hf_generalized_box_iou,
)
from transformers.loss.loss_for_object_detection import (
    sigmoid_focal_loss as hf_sigmoid_focal_loss,
)

from bbucli.geometry import cxcywh_to_xyxy, generalized_box_iou
from bbucli.loss.detection import (
    DetectionCriterion,
    DetTargets,
    LayerOutput,
    num_boxes_across_ranks,
)
from bbucli.loss.focal import sigmoid_focal_loss
from bbucli.loss.matcher import HungarianMatcher


def random_boxes(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """(*shape, 4) valid cxcywh boxes inside [0, 1]."""
    wh = torch.rand(*shape, 2, generator=gen) * 0.4 + 0.02
    centre = wh / 2 + torch.rand(*shape, 2, generator=gen) * (1 - wh)
    return torch.cat((centre, wh), dim=-1)


def make_batch(seed: int, sizes: list[int], queries: int = 16, layers: int = 3):
    gen = torch.Generator().manual_seed(seed)
    outputs = [
        LayerOutput(
            logits=(torch.randn(len(sizes), queries, generator=gen) * 2).requires_grad_(),
            boxes=random_boxes(gen, len(sizes), queries).requires_grad_(),
        )
        for _ in range(layers)
    ]
    targets = [DetTargets(boxes=random_boxes(gen, n)) for n in sizes]
    return outputs, targets


def test_l1_giou_and_focal_equal_transformers_detr_losses():
    """Oracle: transformers' DETR box loss and Deformable-DETR's focal label loss, one class."""
    sizes = [5, 0, 20, 13]
    outputs, targets = make_batch(0, sizes, queries=40, layers=1)
    out = outputs[0]
    ours = DetectionCriterion()(outputs, targets, num_boxes=7.5).losses
    indices = HungarianMatcher()(out.logits, out.boxes, [t.boxes for t in targets])
    hf_targets = [
        {"boxes": t.boxes, "class_labels": torch.zeros(len(t.boxes), dtype=torch.long)}
        for t in targets
    ]
    boxes = ImageLoss(matcher=None, num_classes=1, eos_coef=0.1, losses=[]).loss_boxes(
        {"pred_boxes": out.boxes}, hf_targets, indices, 7.5
    )
    labels = DeformableDetrImageLoss(
        matcher=None, num_classes=1, focal_alpha=0.25, losses=[]
    ).loss_labels({"logits": out.logits[..., None]}, hf_targets, indices, 7.5)
    torch.testing.assert_close(ours["l1"], boxes["loss_bbox"], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["giou"], boxes["loss_giou"], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["objectness"], labels["loss_ce"], rtol=0, atol=1e-6)


def test_giou_matrix_and_focal_values_equal_transformers():
    gen = torch.Generator().manual_seed(1)
    a, b = random_boxes(gen, 64), random_boxes(gen, 48)
    ours = generalized_box_iou(cxcywh_to_xyxy(a), cxcywh_to_xyxy(b))
    theirs = hf_generalized_box_iou(center_to_corners_format(a), center_to_corners_format(b))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)

    logits = torch.randn(4, 30, generator=gen) * 4
    labels = (torch.rand(4, 30, generator=gen) < 0.2).float()
    # transformers reduces as mean over dim 1, sum, / num_boxes: undo it with num_boxes = 1 / 30.
    theirs = hf_sigmoid_focal_loss(logits, labels, 1 / 30, alpha=0.25, gamma=2)
    torch.testing.assert_close(sigmoid_focal_loss(logits, labels).sum(), theirs, rtol=0, atol=1e-6)


def test_perfect_predictions_give_zero_box_losses():
    gen = torch.Generator().manual_seed(2)
    targets = [DetTargets(boxes=random_boxes(gen, n)) for n in (3, 7)]
    boxes = random_boxes(gen, 2, 10)
    logits = torch.full((2, 10), -8.0)
    for image, t in enumerate(targets):
        boxes[image, : len(t.boxes)] = t.boxes
        logits[image, : len(t.boxes)] = 8.0
    losses = DetectionCriterion()([LayerOutput(logits, boxes)], targets, num_boxes=10.0).losses
    assert losses["l1"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["objectness"].item() < 1e-4


def test_images_without_objects_give_finite_objectness_only_losses():
    outputs, targets = make_batch(3, [0, 0], layers=2)
    num_boxes = num_boxes_across_ranks(targets, "cpu")
    assert num_boxes == 1.0  # clamped
    losses = DetectionCriterion()(outputs, targets, num_boxes=num_boxes).losses
    assert all(torch.isfinite(v) for v in losses.values())
    for key in ("l1", "giou", "l1_0", "giou_0"):
        assert losses[key].item() == 0.0
    assert losses["objectness"].item() > 0
    sum(losses.values()).backward()
    assert outputs[-1].logits.grad.abs().sum() > 0


def test_gradients_reach_boxes_and_logits_of_matched_queries():
    outputs, targets = make_batch(4, [3, 0, 5])
    sum(DetectionCriterion()(outputs, targets, num_boxes=8.0).losses.values()).backward()
    for out in outputs:
        assert out.boxes.grad.abs().sum() > 0 and out.logits.grad.abs().sum() > 0
        # Boxes are supervised on matched queries only: one per target.
        assert (out.boxes.grad.abs().sum(-1) > 0).sum(-1).tolist() == [3, 0, 5]


def test_padding_queries_are_not_matched_and_not_scored():
    """Image 0 has 3 real queries and 5 objects, padded to image 1's 8 queries: its padding
    queries (confident ones, to be sure) get no target, no objectness loss and no gradient, and
    the batch's losses are the sum of each image's losses alone."""
    gen = torch.Generator().manual_seed(11)
    logits = (torch.randn(2, 8, generator=gen) * 2).requires_grad_()
    boxes = random_boxes(gen, 2, 8).requires_grad_()
    targets = [DetTargets(random_boxes(gen, 5)), DetTargets(random_boxes(gen, 2))]
    mask = torch.tensor([[True] * 3 + [False] * 5, [True] * 8])
    with torch.no_grad():
        logits[0, 3:] = 6.0  # not PAD_LOGIT: the mask alone must keep padding out
    criterion = DetectionCriterion()
    result = criterion([LayerOutput(logits, boxes)], targets, num_boxes=7.0, query_mask=mask)
    src, _ = result.indices[-1][0]
    assert src.tolist() == [0, 1, 2]
    assert result.losses["objectness"].item() < 10
    sum(result.losses.values()).backward()
    assert logits.grad[0, 3:].abs().sum() == 0 and boxes.grad[0, 3:].abs().sum() == 0
    alone = [
        criterion([LayerOutput(logits[i : i + 1, :n], boxes[i : i + 1, :n])], [t], num_boxes=7.0)
        for i, (n, t) in enumerate(zip((3, 8), targets, strict=True))
    ]
    for key, value in result.losses.items():
        torch.testing.assert_close(value, alone[0].losses[key] + alone[1].losses[key])


def test_losses_are_divided_by_num_boxes():
    outputs, targets = make_batch(5, [4, 2])
    criterion = DetectionCriterion()
    one, three = (
        criterion(outputs, targets, num_boxes=1.0).losses,
        criterion(outputs, targets, num_boxes=3.0).losses,
    )
    assert one.keys() == three.keys()
    for key in one:
        torch.testing.assert_close(three[key], one[key] / 3)
    with pytest.raises(ValueError, match="num_boxes"):
        criterion(outputs, targets, num_boxes=0.0)


def test_aux_keys_and_the_matching_of_every_layer():
    outputs, targets = make_batch(6, [3, 1], layers=3)
    result = DetectionCriterion()(outputs, targets, num_boxes=4.0)
    assert set(result.losses) == {
        "l1",
        "giou",
        "objectness",
        "l1_0",
        "giou_0",
        "objectness_0",
        "l1_1",
        "giou_1",
        "objectness_1",
    }
    boxes = [t.boxes for t in targets]
    expected = HungarianMatcher().match_layers([(o.logits, o.boxes) for o in outputs], boxes)
    assert len(result.indices) == 3
    for got, want in zip(result.indices, expected, strict=True):
        for (src, tgt), (ref_src, ref_tgt) in zip(got, want, strict=True):
            assert torch.equal(src, ref_src) and torch.equal(tgt, ref_tgt)
    final_only = DetectionCriterion(aux=False)(outputs, targets, num_boxes=4.0)
    assert set(final_only.losses) == {"l1", "giou", "objectness"}
    torch.testing.assert_close(final_only.losses["l1"], result.losses["l1"])
    assert len(final_only.indices) == 1
    assert all(
        torch.equal(a[0], b[0]) for a, b in zip(final_only.indices[0], expected[-1], strict=True)
    )


def test_objectness_uses_the_matchers_focal_parameters():
    outputs, targets = make_batch(7, [2], layers=1)
    plain = DetectionCriterion()(outputs, targets, num_boxes=2.0).losses
    matcher = HungarianMatcher(focal_alpha=-1.0, focal_gamma=0.0)
    bce = DetectionCriterion(matcher)(outputs, targets, num_boxes=2.0).losses
    # gamma 0 and no class balance: plain binary cross entropy on every query.
    indices = matcher(outputs[0].logits, outputs[0].boxes, [targets[0].boxes])
    is_object = torch.zeros_like(outputs[0].logits)
    is_object[0, indices[0][0]] = 1.0
    expected = (
        torch.nn.functional.binary_cross_entropy_with_logits(
            outputs[0].logits, is_object, reduction="sum"
        )
        / 2.0
    )
    torch.testing.assert_close(bce["objectness"], expected)
    assert not torch.isclose(plain["objectness"], bce["objectness"])


def test_num_boxes_across_ranks_counts_boxes_without_distributed():
    _, targets = make_batch(8, [3, 0, 4])
    assert num_boxes_across_ranks(targets, "cpu") == 7.0
