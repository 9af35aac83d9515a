"""Operating point, confusion matrix, escape rate and the matcher, on hand-computed cases; the
matcher's true positives equal COCOeval's at IoU 0.5."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bbucli.evaluation import Detections, GroundTruth, GroundTruthImage, evaluate, is_defect
from bbucli.evaluation.matching import iou_matrix, match_image
from bbucli.taxonomy import Taxonomy

A, B = "screw/bbu_install_screw/correct", "screw/bbu_install_screw/incorrect"


def box(x: float, y: float, size: float = 10) -> list[float]:
    return [x, y, x + size, y + size]


def test_threshold_with_the_best_f1_is_chosen():
    gt = GroundTruth.from_images([GroundTruthImage.simple("i", 1, [box(0, 0), box(50, 50)], [A, A])])
    # Scores 0.9 TP, 0.8 FP, 0.3 TP, 0.2 FP. F1 = 2TP / (2TP + FP + FN) at each threshold:
    # 0.9: 2/3; 0.8: 2/4; 0.3: 4/5 (best); 0.2: 4/6.
    preds = [Detections("i", [box(0, 0), box(100, 0), box(50, 50), box(0, 100)], (A,) * 4, [0.9, 0.8, 0.3, 0.2])]
    op = evaluate(preds, gt, backend="pycocotools").operating_point
    assert (op.threshold, op.chosen_by, op.tp, op.fp, op.fn) == (0.3, "max_f1", 2, 1, 0)
    assert op.f1 == pytest.approx(0.8) and op.precision == pytest.approx(2 / 3) and op.recall == 1.0
    given_op = evaluate(preds, gt, threshold=0.85, backend="pycocotools").operating_point
    assert (given_op.threshold, given_op.chosen_by, given_op.tp, given_op.fp, given_op.fn) == (0.85, "given", 1, 0, 1)


def test_confusion_matrix_has_background_row_and_column():
    gt = GroundTruth.from_images([GroundTruthImage.simple("i", 1, [box(0, 0), box(50, 0), box(100, 0)], [A, A, B])])
    preds = [Detections("i", [box(0, 0), box(50, 0), box(0, 100)], (A, B, A), [0.9, 0.8, 0.7])]
    result = evaluate(preds, gt, threshold=0.5, backend="pycocotools")
    assert result.confusion.labels == (A, B, "background")
    assert result.confusion.counts == (
        (1, 1, 0),  # A: one found, one taken for B
        (0, 0, 1),  # B: missed
        (1, 0, 0),  # an A where there is nothing
    )
    op = result.operating_point
    assert (op.tp, op.fp, op.fn) == (1, 2, 2)
    per_class = {m.desc: m for m in result.per_class}
    assert (per_class[A].tp, per_class[A].fp, per_class[A].fn) == (1, 1, 1)
    assert (per_class[B].tp, per_class[B].fp, per_class[B].fn) == (0, 1, 1)


def test_predictions_of_a_category_the_ground_truth_lacks_are_false_positives():
    gt = GroundTruth.from_images([GroundTruthImage.simple("i", 1, [box(0, 0), box(50, 50)], [A, A])])
    odd = "mystery/thing"
    preds = [Detections("i", [box(50, 50), box(0, 0), box(100, 100)], (odd, A, odd), [0.95, 0.9, 0.8])]
    result = evaluate(preds, gt, threshold=0.5, backend="pycocotools")
    op = result.operating_point
    assert (op.tp, op.fp, op.fn, op.unknown_category_fp) == (1, 2, 1, 2)
    assert op.precision == pytest.approx(1 / 3) and op.recall == 0.5
    assert result.confusion.labels == (A, odd, "background")
    assert result.confusion.counts == (
        (1, 1, 0),  # A: one found, one taken for the mystery class
        (0, 0, 0),  # the mystery class has no ground truth
        (0, 1, 0),  # a mystery thing where there is nothing
    )
    row = {m.desc: m for m in result.per_class}[odd]
    assert (row.category_id, row.gt, row.predictions, row.ap, row.ap50, row.tp, row.fp, row.fn) == (None, 0, 2, None, None, 0, 2, 0)
    assert (row.precision, row.recall, row.f1) == (0.0, None, 0.0)
    assert result.counts["unknown_category_predictions"] == 2
    # Class-agnostic AP counts them too: the box on nothing is an FP below two TPs.
    assert result.agnostic_coco["AP50"] == pytest.approx(1.0)


def test_only_unknown_categories_give_precision_zero_not_undefined():
    gt = GroundTruth.from_images([GroundTruthImage.simple("i", 1, [box(0, 0)], [A])])
    preds = [Detections("i", [box(0, 0)], ("nonsense/class",), [0.9])]
    op = evaluate(preds, gt, backend="pycocotools").operating_point
    assert (op.threshold, op.tp, op.fp, op.fn, op.unknown_category_fp) == (0.9, 0, 1, 1, 1)
    assert (op.precision, op.recall, op.f1) == (0.0, 0.0, 0.0)


def test_escape_rate_counts_defects_on_images_without_a_matching_flag():
    new_defect = "screw/new_thing/incorrect"  # unknown to the taxonomy, but a defect state
    shield = "wind_shield/not_installed"
    images = [
        GroundTruthImage.simple("1", 1, [box(0, 0), box(20, 0), box(40, 0)], [B, B, B]),  # 1 of 3 found: no escape
        GroundTruthImage.simple("2", 2, [box(0, 0)], [B]),  # reported as correct: escapes
        GroundTruthImage.simple("3", 3, [box(0, 0), box(50, 50)], [shield, A]),  # shield missed: escapes
        GroundTruthImage.simple("4", 4, [box(0, 0)], [new_defect]),  # found
    ]
    preds = [
        Detections("1", [box(20, 0)], (B,), [0.9]),
        Detections("2", [box(0, 0)], (A,), [0.9]),
        Detections("3", [box(50, 50)], (A,), [0.9]),
        Detections("4", [box(0, 0)], (new_defect,), [0.9]),
    ]
    result = evaluate(preds, GroundTruth.from_images(images), threshold=0.5, backend="pycocotools")
    esc = result.escape
    assert (esc.defect_objects, esc.escaped_objects, esc.defect_images, esc.escaped_images) == (6, 2, 4, 2)
    assert esc.rate == pytest.approx(1 / 3)
    assert dict((d, (n, e)) for d, n, e in esc.per_class) == {B: (4, 1), new_defect: (1, 0), shield: (1, 1)}
    assert [m.desc for m in result.per_class if m.defect] == [B, new_defect, shield]


def test_no_defects_gives_an_undefined_rate():
    gt = GroundTruth.from_images([GroundTruthImage.simple("i", 1, [box(0, 0)], [A])])
    assert evaluate([], gt, backend="pycocotools").escape.rate is None


def test_is_defect_reads_the_taxonomy():
    tax = Taxonomy.load()
    assert is_defect("连接点（螺丝）/BBU安装螺丝/连接错误", tax)
    assert is_defect("connection_point/install_screw/install_screw_false", tax)  # raw spelling
    assert is_defect("wind_shield/not_installed", tax)
    assert not is_defect("cabinet_space/not_full", tax) and not is_defect(A, tax)
    assert is_defect("foo/bar/incorrect", tax) and is_defect("foo/连接错误", tax)
    assert not is_defect("foo/correct", tax) and not is_defect("incorrect", tax)


def test_iou_at_exactly_half_matches_and_crowd_is_ignored():
    gt_boxes = np.array([[0, 0, 10, 10], [50, 50, 90, 90]], float)
    pred = np.array([[0, 0, 10, 20], [60, 60, 70, 70]], float)  # IoU 0.5; inside the crowd region
    assert iou_matrix(pred, gt_boxes)[0, 0] == 0.5
    m = match_image(pred, np.zeros(2, int), np.array([0.9, 0.8]), gt_boxes, np.zeros(2, int), np.array([False, True]))
    assert m.pred_gt.tolist() == [0, -1] and m.pred_ignored.tolist() == [False, True]
    assert m.false_positive.tolist() == [False, False]


boxes_st = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(2, 40), st.integers(2, 40), st.integers(1, 2)),
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(gt=boxes_st, dt=boxes_st, scores=st.lists(st.floats(0, 1), min_size=6, max_size=6))
def test_true_positives_equal_cocoeval_at_iou_half(gt, dt, scores):
    cats = [{"id": 1, "name": "a/x"}, {"id": 2, "name": "a/y"}]
    anns = [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0} for i, (x, y, w, h, c) in enumerate(gt)]
    dets = [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "score": s}
            for i, ((x, y, w, h, c), s) in enumerate(zip(dt, scores[: len(dt)], strict=True))]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": [{"id": 1}], "annotations": anns, "categories": cats}
        coco_dt.dataset = {"images": [{"id": 1}], "annotations": dets, "categories": cats}
        coco_gt.createIndex()
        coco_dt.createIndex()
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.evaluate()
    reference = sum(int(((ev["dtMatches"][0] > 0) & ~ev["dtIgnore"][0]).sum()) for ev in e.evalImgs if ev and ev["aRng"] == [0, 1e10])
    labels = lambda rows: np.array([r[4] for r in rows], int)  # noqa: E731
    xyxy = lambda rows: np.array([[x, y, x + w, y + h] for x, y, w, h, _ in rows], float).reshape(-1, 4)  # noqa: E731
    m = match_image(xyxy(dt), labels(dt), np.array(scores[: len(dt)]), xyxy(gt), labels(gt))
    assert int(m.true_positive.sum()) == reference
