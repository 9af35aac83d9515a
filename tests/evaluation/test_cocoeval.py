"""The COCOeval adapter: hand-computed AP, the pycocotools traps it fixes, and equality with plain
pycocotools (run the textbook way, traps avoided by hand) and with faster-coco-eval."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bbucli.errors import UsageError
from bbucli.evaluation import (
    Detections,
    GroundTruth,
    GroundTruthImage,
    cocoeval_bbox,
    evaluate,
    faster_available,
    ground_truth_from_coco,
    predictions_from_coco,
)

EXACT = 1e-12


def gt_dict(boxes_per_image, first_ann_id=1, cats=(1,)):
    """COCO instances with one image per entry of `boxes_per_image` ([(x, y, w, h, cat)])."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 200} for i in range(1, len(boxes_per_image) + 1)]
    anns = []
    for image_id, boxes in enumerate(boxes_per_image, 1):
        for x, y, w, h, cat in boxes:
            anns.append({"id": first_ann_id + len(anns), "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"type{c}/class{c}"} for c in cats]}


def det(image_id, x, y, w, h, score, cat=1):
    return {"image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "score": score}


def plain_pycocotools(gt, results):
    """The textbook way: COCO(), loadRes, evaluate, accumulate, summarize."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats), e.eval["precision"]


# ---- hand-computed -------------------------------------------------------------------------------


def test_tp_then_fp_is_ap_1():
    # Sorted by score: TP (recall 1, precision 1), then FP (recall 1, precision 1/2). The
    # interpolated precision max_{r' >= r} p(r') is 1 at every recall point: AP = 1.
    run = cocoeval_bbox(gt_dict([[(0, 0, 10, 10, 1)]]), [det(1, 0, 0, 10, 10, 0.9), det(1, 100, 100, 10, 10, 0.1)], backend="pycocotools")
    assert run.stats[0] == pytest.approx(1.0, abs=EXACT)
    assert run.stats[1] == pytest.approx(1.0, abs=EXACT)


def test_fp_then_tp_is_ap_half():
    # Sorted: FP (precision 0, recall 0), then TP (precision 1/2, recall 1). The precision
    # envelope is 1/2 on all 101 recall points 0.00..1.00: AP = 101 * 0.5 / 101 = 0.5.
    run = cocoeval_bbox(gt_dict([[(0, 0, 10, 10, 1)]]), [det(1, 100, 100, 10, 10, 0.9), det(1, 0, 0, 10, 10, 0.1)], backend="pycocotools")
    assert run.stats[0] == pytest.approx(0.5, abs=EXACT)


def test_two_gt_one_tp_is_51_over_101():
    # One of two objects found, precision 1 up to recall 0.5 and nothing beyond: the recall
    # points 0.00, 0.01, ..., 0.50 (51 of 101) get precision 1, the other 50 get 0.
    run = cocoeval_bbox(gt_dict([[(0, 0, 10, 10, 1), (50, 50, 10, 10, 1)]]), [det(1, 0, 0, 10, 10, 0.9)], backend="pycocotools")
    assert run.stats[0] == pytest.approx(51 / 101, abs=EXACT)
    assert round(51 / 101, 5) == 0.50495


def test_false_positive_on_an_image_without_ground_truth_counts():
    # Image 2 has no object; its FP scores above the TP, so AP drops from 1 to 0.5 — but only
    # because image 2 is listed (pycocotools ignores results on images it does not know).
    gt = gt_dict([[(0, 0, 10, 10, 1)], []])
    results = [det(2, 0, 0, 10, 10, 0.9), det(1, 0, 0, 10, 10, 0.5)]
    assert cocoeval_bbox(gt, results, backend="pycocotools").stats[0] == pytest.approx(0.5, abs=EXACT)
    gt_only_annotated = {**gt, "images": gt["images"][:1]}
    assert cocoeval_bbox(gt_only_annotated, results, backend="pycocotools").dropped_images == 1


def test_false_positive_on_empty_image_through_evaluate():
    gt = GroundTruth.from_images([
        GroundTruthImage.simple("a.jpg", 1, [[0, 0, 10, 10]], ["x/y"], (100, 100)),
        GroundTruthImage.simple("b.jpg", 2, [], [], (100, 100)),
    ])
    preds = [Detections("b.jpg", [[0, 0, 10, 10]], ("x/y",), [0.9]), Detections("a.jpg", [[0, 0, 10, 10]], ("x/y",), [0.5])]
    result = evaluate(preds, gt, backend="pycocotools")
    assert result.coco["AP"] == pytest.approx(0.5, abs=EXACT)
    assert result.counts["images_without_objects"] == 1


def test_iou_exactly_at_threshold_matches():
    # GT 10x10 = 100 px; prediction 10x20 over it: intersection 100, union 200, IoU = 0.5 exactly.
    run = cocoeval_bbox(gt_dict([[(0, 0, 10, 10, 1)]]), [det(1, 0, 0, 10, 20, 0.9)], backend="pycocotools")
    assert run.stats[1] == pytest.approx(1.0, abs=EXACT)  # AP50: matched at exactly 0.5
    assert run.stats[2] == 0.0  # AP75: not matched
    assert run.stats[0] == pytest.approx(0.1, abs=EXACT)  # only 1 of the 10 thresholds


# ---- traps ---------------------------------------------------------------------------------------


def test_gt_as_predictions_is_1_even_with_annotation_ids_from_0():
    rng = np.random.default_rng(3)
    boxes = [[(*rng.uniform(0, 150, 2).round(1), *rng.uniform(5, 40, 2).round(1), int(rng.integers(1, 3))) for _ in range(4)] for _ in range(6)]
    gt = gt_dict(boxes, first_ann_id=0, cats=(1, 2))
    results = [det(a["image_id"], *a["bbox"], 1.0, a["category_id"]) for a in gt["annotations"]]
    plain, _ = plain_pycocotools(gt, results)
    assert plain[0] < 0.99  # the trap: annotation 0 counts as unmatched
    assert cocoeval_bbox(gt, results, backend="pycocotools").stats[0] == pytest.approx(1.0, abs=EXACT)
    ground_truth = ground_truth_from_coco(gt)
    result = evaluate(predictions_from_coco(results, ground_truth), ground_truth, backend="pycocotools")
    assert result.coco["AP"] == pytest.approx(1.0, abs=EXACT)
    assert result.operating_point.f1 == 1.0


def test_missing_area_and_iscrowd_are_filled():
    gt = gt_dict([[(0, 0, 10, 10, 1)]])
    for ann in gt["annotations"]:
        del ann["area"], ann["iscrowd"]
    run = cocoeval_bbox(gt, [det(1, 0, 0, 10, 10, 0.9)], backend="pycocotools")
    assert run.stats[0] == pytest.approx(1.0, abs=EXACT)
    assert run.stats[3] == pytest.approx(1.0, abs=EXACT)  # 100 px^2 is "small"


def test_empty_predictions_give_zeros_not_a_crash():
    gt = gt_dict([[(0, 0, 10, 10, 1)], []])
    with pytest.raises(IndexError):  # what plain pycocotools does with an empty result list
        plain_pycocotools(gt, [])
    run = cocoeval_bbox(gt, [], backend="pycocotools")
    assert run.named["AP"] == 0.0 and run.named["AR100"] == 0.0
    assert run.named["AP_large"] is None  # no ground truth in that range: undefined, not 0
    ground_truth = ground_truth_from_coco(gt)
    result = evaluate([], ground_truth, backend="pycocotools")
    assert result.coco["AP"] == 0.0 and result.operating_point.threshold is None
    assert result.operating_point.recall == 0.0 and result.operating_point.precision is None


def test_unknown_categories_are_counted_and_reported():
    gt = gt_dict([[(0, 0, 10, 10, 1)]])
    run = cocoeval_bbox(gt, [det(1, 0, 0, 10, 10, 0.9), det(1, 0, 0, 10, 10, 0.8, cat=7)], backend="pycocotools")
    assert dict(run.dropped_categories) == {7: 1}
    ground_truth = ground_truth_from_coco(gt)
    preds = [Detections("1.jpg", [[0, 0, 10, 10], [50, 50, 60, 60]], ("type1/class1", "mystery/thing"), [0.5, 0.9])]
    result = evaluate(preds, ground_truth, backend="pycocotools")
    assert result.coco["AP"] == pytest.approx(1.0, abs=EXACT)  # per class: the unknown one is left out
    assert result.agnostic_stats[0] == pytest.approx(0.5, abs=EXACT)  # class-agnostic: it is an FP ranked first
    assert result.counts["unknown_category_predictions"] == 1
    assert any("'mystery/thing' is not in the ground truth" in str(p) for p in result.problems)


def test_a_prediction_half_outside_the_image_is_scored_as_given():
    gt = gt_dict([[(150, 20, 40, 40, 1)]])  # 200x200 image, object at x 150..190
    results = [det(1, 160, 20, 80, 40, 0.9)]  # x 160..240: IoU 0.375 as given, 0.75 if clipped to 200
    plain_stats, _ = plain_pycocotools(gt, results)
    ground_truth = ground_truth_from_coco(gt)
    result = evaluate(predictions_from_coco(results, ground_truth), ground_truth, backend="pycocotools")
    np.testing.assert_allclose(result.stats, plain_stats, atol=EXACT, rtol=0)
    assert result.coco["AP50"] == 0.0 and result.operating_point.fp == 1
    assert result.counts["out_of_image_predictions"] == 1
    assert any("1 box(es) reach outside the 200x200 image" in str(p) and "scored as given" in str(p) for p in result.problems)


def test_pycocotools_stdout_is_captured(capsys):
    cocoeval_bbox(gt_dict([[(0, 0, 10, 10, 1)]]), [det(1, 0, 0, 10, 10, 0.9)], backend="pycocotools")
    assert capsys.readouterr().out == ""


def test_unknown_backend_is_a_usage_error():
    with pytest.raises(UsageError):
        cocoeval_bbox(gt_dict([[]]), [], backend="tensorflow")


# ---- equivalence ---------------------------------------------------------------------------------


def random_set(seed: int, n_images: int = 40, n_cats: int = 4):
    """GT with crowd regions, areas that differ from the box, empty images; noisy predictions, some
    reaching past the image (scored as given, as pycocotools scores them)."""
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        for _ in range(int(rng.integers(0, 8))):
            x, y = rng.uniform(0, 500), rng.uniform(0, 380)
            w, h = rng.uniform(4, 140), rng.uniform(4, 100)
            cat = int(rng.integers(1, n_cats + 1))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h * rng.uniform(0.5, 1.0), "iscrowd": int(rng.random() < 0.05)})
            if rng.random() < 0.8:
                jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
                cat_pred = cat if rng.random() < 0.85 else int(rng.integers(1, n_cats + 1))
                results.append(det(image_id, x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1), float(rng.random()), cat_pred))
        for _ in range(int(rng.integers(0, 3))):
            results.append(det(image_id, rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(4, 100), rng.uniform(4, 100), float(rng.random()), int(rng.integers(1, n_cats + 1))))
    cats = [{"id": c, "name": f"t{c % 2}/c{c}"} for c in range(1, n_cats + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_sets_equal_plain_pycocotools(seed):
    gt, results = random_set(seed)
    plain_stats, plain_precision = plain_pycocotools(gt, results)
    run = cocoeval_bbox(gt, results, backend="pycocotools")
    np.testing.assert_allclose(run.stats, plain_stats, atol=EXACT, rtol=0)
    np.testing.assert_allclose(run.precision, plain_precision, atol=EXACT, rtol=0)
    ground_truth = ground_truth_from_coco(gt)
    result = evaluate(predictions_from_coco(results, ground_truth), ground_truth, backend="pycocotools")
    np.testing.assert_allclose(result.stats, plain_stats, atol=EXACT, rtol=0)


@pytest.mark.skipif(not faster_available(), reason="faster-coco-eval not installed (the optional `fast` extra)")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_sets_equal_faster_coco_eval(seed):
    gt, results = random_set(seed)
    slow = cocoeval_bbox(gt, results, backend="pycocotools")
    fast = cocoeval_bbox(gt, results, backend="faster")
    assert fast.backend.startswith("faster-coco-eval")
    np.testing.assert_allclose(fast.stats, slow.stats, atol=EXACT, rtol=0)
    np.testing.assert_allclose(fast.precision, slow.precision, atol=EXACT, rtol=0)
    ground_truth = ground_truth_from_coco(gt)
    preds = predictions_from_coco(results, ground_truth)
    a = evaluate(preds, ground_truth, backend="pycocotools")
    b = evaluate(preds, ground_truth, backend="faster")
    for x, y in ((a.stats, b.stats), (a.type_stats, b.type_stats), (a.agnostic_stats, b.agnostic_stats)):
        np.testing.assert_allclose(x, y, atol=EXACT, rtol=0)


def test_forcing_faster_without_it_installed_is_a_usage_error(monkeypatch):
    import bbucli.evaluation.cocoeval as adapter

    monkeypatch.setattr(adapter, "faster_available", lambda: False)
    assert adapter.resolve_backend("auto") == "pycocotools"
    with pytest.raises(UsageError, match="faster-coco-eval is not installed"):
        adapter.resolve_backend("faster")
