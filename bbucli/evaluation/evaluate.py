"""`evaluate(predictions, ground_truth)`: every metric bbu reports from predictions already in memory.

Three COCOeval runs through the adapter: categories = descs (AP..AR and per-class AP), = types
(the first desc level), = one category (class-agnostic: every prediction counts, also those of a
category the ground truth lacks). Then the operating point (threshold, P/R/F1, confusion matrix,
per-image errors), where predictions of a category the ground truth lacks are false positives with
a per-class row of their own (AP undefined), and the defect escape rate. A checkpoint evaluation calls this same function
with the `Detections` its inference produced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from bbucli.errors import UsageError
from bbucli.evaluation.align import AlignedImage, align_predictions
from bbucli.evaluation.cocoeval import CocoRun, cocoeval_bbox, resolve_backend
from bbucli.evaluation.escape import defect_states, escape_rate, is_defect
from bbucli.evaluation.operating_point import (
    ImageArrays,
    best_f1_threshold,
    category_index,
    count_at,
    f1_score,
    ratio,
)
from bbucli.evaluation.predictions import PredictionSet
from bbucli.evaluation.result import (
    BACKGROUND,
    ClassMetrics,
    ConfusionMatrix,
    EvalResult,
    ImageErrors,
    OperatingPoint,
    PrCurves,
    TypeMetrics,
)
from bbucli.evaluation.types import Detections, GroundTruth
from bbucli.schema import Progress
from bbucli.taxonomy import Taxonomy

WORST_IMAGES = 20
AGNOSTIC = "object"
STAGES = ("align", "coco classes", "coco types", "coco class-agnostic", "operating point")


def _xywh(boxes_xyxy: np.ndarray) -> list[list[float]]:
    """(N, 4) xyxy -> N [x, y, w, h] lists of Python floats."""
    out = boxes_xyxy.copy()
    out[:, 2:] -= boxes_xyxy[:, :2]
    return out.tolist()


def coco_inputs(
    ground_truth: GroundTruth,
    scored: Sequence[AlignedImage],
    label: Callable[[str], int | None],
    categories: Sequence[tuple[int, str]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO instances dict (every image listed) and results list, with `label(desc)` as the
    category id (None: the prediction is not part of this view). Boxes xywh, scoring frame."""
    images, annotations, results = [], [], []
    for image, preds in zip(ground_truth.images, scored, strict=True):
        entry: dict[str, Any] = {"id": image.image_id, "file_name": image.key}
        if image.image_wh is not None:
            entry["width"], entry["height"] = image.image_wh
        images.append(entry)
        for xywh, desc, area, crowd in zip(_xywh(image.boxes_px), image.descs, image.areas.tolist(), image.iscrowd.tolist(), strict=True):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image.image_id, "category_id": label(desc),
                "bbox": xywh, "area": area, "iscrowd": int(crowd),
            })
        for xywh, desc, score in zip(_xywh(preds.boxes_px), preds.descs, preds.scores.tolist(), strict=True):
            cid = label(desc)
            if cid is not None:
                results.append({"image_id": image.image_id, "category_id": cid, "bbox": xywh, "score": score})
    cats = [{"id": cid, "name": name} for cid, name in categories]
    return {"images": images, "annotations": annotations, "categories": cats}, results


def views(ground_truth: GroundTruth) -> dict[str, tuple[Callable[[str], int | None], list[tuple[int, str]]]]:
    class_ids = ground_truth.category_ids
    types = sorted({c.type for c in ground_truth.categories})
    type_ids = {t: i for i, t in enumerate(types, 1)}
    return {
        "classes": (class_ids.get, [(c.id, c.desc) for c in ground_truth.categories]),
        "types": (lambda d: type_ids.get(d.split("/")[0]), list(enumerate(types, 1))),
        "agnostic": (lambda d: 1, [(1, AGNOSTIC)]),
    }


def _curves(run: CocoRun, names: dict[int, str]) -> PrCurves:
    iou50: dict[str, tuple[float, ...]] = {}
    iou50_95: dict[str, tuple[float, ...]] = {}
    for key, k in [("all", None), *((names[c], k) for k, c in enumerate(run.category_ids))]:
        for store, iou in ((iou50, 0.5), (iou50_95, None)):
            curve = run.curve(iou, k)
            if curve is not None:
                store[key] = tuple(float(v) for v in curve)
    return PrCurves(tuple(float(v) for v in np.linspace(0.0, 1.0, 101)), iou50, iou50_95)


def evaluate(
    predictions: Iterable[Detections] | PredictionSet,
    ground_truth: GroundTruth,
    *,
    iou_type: str = "bbox",
    threshold: float | None = None,
    taxonomy: Taxonomy | None = None,
    backend: str = "auto",
    progress: Progress | None = None,
) -> EvalResult:
    """Score predictions against ground truth (module doc).

    predictions: Detections per image (boxes in their own `image_wh` frame or the GT's), or a
        `PredictionSet` read from a file (its problems are kept).
    threshold: score threshold of the operating point; None picks the one with the best F1.
    taxonomy: tells defect classes apart and maps descs; None = the built-in one.
    backend: "auto" (faster-coco-eval when installed), "pycocotools" or "faster".
    progress: called as (stage, done, total) with the stages of `STAGES`.
    """
    if iou_type != "bbox":
        raise UsageError(f"iou_type {iou_type!r} is not supported", hint="bbu predicts boxes: use iou_type='bbox'")
    resolved = resolve_backend(backend)
    taxonomy = taxonomy if taxonomy is not None else Taxonomy.load()
    report = progress or (lambda stage, done, total: None)
    problems = list(ground_truth.problems)
    if isinstance(predictions, PredictionSet):
        problems += predictions.problems
        predictions = predictions.detections

    report(STAGES[0], 0, len(STAGES))
    aligned = align_predictions(predictions, ground_truth, taxonomy)
    problems += aligned.problems
    runs: dict[str, CocoRun] = {}
    for step, (view, (label, categories)) in enumerate(views(ground_truth).items(), 1):
        report(STAGES[step], step, len(STAGES))
        gt_dict, results = coco_inputs(ground_truth, aligned.images, label, categories)
        runs[view] = cocoeval_bbox(gt_dict, results, backend=resolved)

    report(STAGES[4], 4, len(STAGES))
    index = category_index(ground_truth, aligned.images)
    arrays = [ImageArrays.build(image, preds, index) for image, preds in zip(ground_truth.images, aligned.images, strict=True)]
    chosen_by = "given" if threshold is not None else "max_f1"
    if threshold is None:
        threshold = best_f1_threshold(arrays)
    counts = count_at(arrays, len(index), threshold)
    states = defect_states(taxonomy)
    defect = [is_defect(c.desc, taxonomy, states) for c in ground_truth.categories]
    descs = [c.desc for c in ground_truth.categories]
    escape = escape_rate([a.gt_labels for a in arrays], [a.gt_crowd for a in arrays], counts.gt_found, descs, defect)
    all_descs = list(index)
    k_gt = len(descs)

    classes = runs["classes"]
    k_of = {cid: k for k, cid in enumerate(classes.category_ids)}
    gt_per_class = np.zeros(len(all_descs), np.int64)
    pred_per_class = np.zeros(len(all_descs), np.int64)
    for a in arrays:
        gt_per_class += np.bincount(a.gt_labels[~a.gt_crowd], minlength=len(all_descs))
        pred_per_class += np.bincount(a.pred_labels, minlength=len(all_descs))
    ids = [c.id for c in ground_truth.categories]

    def ap(i: int, iou: float | None = None) -> float | None:
        return classes.category_ap(k_of[ids[i]], iou) if i < k_gt else None

    per_class = tuple(
        ClassMetrics(
            desc=desc, category_id=ids[i] if i < k_gt else None,
            defect=defect[i] if i < k_gt else is_defect(desc, taxonomy, states),
            gt=int(gt_per_class[i]), predictions=int(pred_per_class[i]), ap=ap(i), ap50=ap(i, 0.5), ap75=ap(i, 0.75),
            tp=int(counts.tp[i]), fp=int(counts.fp[i]), fn=int(counts.fn[i]),
            precision=ratio(int(counts.tp[i]), int(counts.tp[i] + counts.fp[i])),
            recall=ratio(int(counts.tp[i]), int(counts.tp[i] + counts.fn[i])),
            f1=f1_score(int(counts.tp[i]), int(counts.fp[i]), int(counts.fn[i])),
        )
        for i, desc in enumerate(all_descs)
    )
    types_run = runs["types"]
    type_names = dict(views(ground_truth)["types"][1])
    per_type = tuple(
        TypeMetrics(
            type=type_names[cid],
            gt=sum(m.gt for m in per_class if m.desc.split("/")[0] == type_names[cid]),
            ap=types_run.category_ap(k), ap50=types_run.category_ap(k, 0.5),
        )
        for k, cid in enumerate(types_run.category_ids)
    )
    tp, fp, fn = int(counts.tp.sum()), int(counts.fp.sum()), int(counts.fn.sum())
    operating_point = OperatingPoint(
        threshold, chosen_by, tp, fp, fn, ratio(tp, tp + fp), ratio(tp, tp + fn), f1_score(tp, fp, fn),
        unknown_category_fp=int(counts.fp[k_gt:].sum()),
    )
    confusion = ConfusionMatrix((*all_descs, BACKGROUND), tuple(tuple(int(v) for v in row) for row in counts.confusion))
    errors = [
        ImageErrors(image.key, int((~image.iscrowd).sum()), len(preds.descs), *e)
        for image, preds, e in zip(ground_truth.images, aligned.images, counts.image_errors, strict=True)
    ]
    worst = tuple(sorted((e for e in errors if e.errors), key=lambda e: (-e.errors, -e.fn, e.image))[:WORST_IMAGES])
    result_counts = {
        "images": len(ground_truth.images),
        "images_without_objects": sum(1 for image in ground_truth.images if not len(image)),
        "gt_objects": ground_truth.object_count,
        **{k: v for k, v in aligned.counts.items() if k != "records"},
        "prediction_records": aligned.counts["records"],
    }
    return EvalResult(
        backend=classes.backend,
        iou_type=iou_type,
        counts=result_counts,
        stats=classes.stats,
        type_stats=types_run.stats,
        agnostic_stats=runs["agnostic"].stats,
        per_class=per_class,
        per_type=per_type,
        operating_point=operating_point,
        confusion=confusion,
        escape=escape,
        worst_images=worst,
        pr_curves=_curves(classes, {c.id: c.desc for c in ground_truth.categories}),
        problems=tuple(problems),
        scored=aligned.images,
    )
