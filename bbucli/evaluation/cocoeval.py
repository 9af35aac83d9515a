"""The one adapter over COCOeval: pycocotools, or faster-coco-eval (same numbers, C++) when installed.

`cocoeval_bbox(gt, results)` takes a COCO instances dict and a COCO results list, the textbook
inputs, and fixes what pycocotools 2.0.x gets silently wrong with them (each
reproduced with pycocotools 2.0.11):
- annotation ids are renumbered from 1: an annotation with id 0 is indistinguishable from
  "unmatched" in `evaluateImg` and lowers AP (0.949 instead of 1.0 on a perfect set);
- every image referenced by an annotation is listed (callers list images without objects
  themselves: a false positive there counts only when its image is listed);
- `area` and `iscrowd` are filled where absent (the box area; 0);
- results are indexed directly instead of through `loadRes`, which raises on an empty list:
  no predictions give AP 0 (-1 where a range has no ground truth), not a crash;
- results of a category or image the ground truth lacks are dropped *and counted* (COCOeval
  drops them silently);
- the library's stdout is captured and discarded.
Stats are computed from COCOeval's `precision`/`recall` arrays with `summarize()`'s formula,
without its printing; the standard parameters (10 IoU thresholds, 101 recall points, maxDets
1/10/100 per image and category) are kept, since others make `summarize()` report -1.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from bbucli.errors import UsageError

BACKENDS = ("auto", "pycocotools", "faster")
STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)
AREAS = ("all", "small", "medium", "large")
MAX_DETS = (1, 10, 100)


def faster_available() -> bool:
    """True when faster-coco-eval can be imported (the optional `fast` extra)."""
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str = "auto") -> str:
    """"pycocotools" or "faster" for a requested backend ("auto" picks faster when installed)."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown COCO backend {backend!r}", hint=f"use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "faster" if faster_available() else "pycocotools"
    if backend == "faster" and not faster_available():
        raise UsageError(
            "faster-coco-eval is not installed",
            hint="pip install 'bbucli[fast]', or use --backend pycocotools",
        )
    return backend


def backend_label(backend: str) -> str:
    """`pycocotools 2.0.11` / `faster-coco-eval 1.8.0` for a resolved backend."""
    dist = "faster-coco-eval" if backend == "faster" else "pycocotools"
    try:
        return f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return dist


@dataclass(frozen=True, eq=False)
class CocoRun:
    """What one COCOeval run gives.

    stats: the 12 numbers of `summarize()` in `STAT_NAMES` order; -1 where undefined (no ground
        truth in that area range).
    category_ids: the ids along the K axis (sorted, as COCOeval orders them).
    precision: (T, R, K, A, M) = (10 IoU thresholds, 101 recall points, K, 4 areas, 3 maxDets);
        -1 where a category has no ground truth. recall: (T, K, A, M).
    dropped: results not scored because the ground truth lacks their category or image.
    """

    backend: str
    stats: tuple[float, ...]
    category_ids: tuple[int, ...]
    precision: np.ndarray
    recall: np.ndarray
    iou_thresholds: np.ndarray
    dropped_categories: Mapping[Any, int] = field(default_factory=dict)
    dropped_images: int = 0

    @property
    def named(self) -> dict[str, float | None]:
        """The stats by name, None where COCOeval says -1."""
        return {n: (None if v < 0 else float(v)) for n, v in zip(STAT_NAMES, self.stats, strict=True)}

    def _iou_index(self, iou: float | None) -> slice | np.ndarray:
        return slice(None) if iou is None else np.where(np.isclose(self.iou_thresholds, iou))[0]

    def category_ap(self, k: int, iou: float | None = None) -> float | None:
        """AP of the k-th category (area all, 100 detections), over all IoUs or at one; None
        when it has no ground truth."""
        s = self.precision[self._iou_index(iou), :, k, 0, -1]
        return _mean_defined(s)

    def curve(self, iou: float | None = None, k: int | None = None) -> np.ndarray | None:
        """(101,) precision at each recall point (area all, 100 detections), averaged over
        categories (or the k-th) and over IoUs (or at one); undefined points excluded."""
        s = self.precision[self._iou_index(iou), :, :, 0, -1]
        if k is not None:
            s = s[:, :, k : k + 1]
        s = np.moveaxis(s, 1, 0).reshape(s.shape[1], -1)
        defined = s > -1
        if not defined.any():
            return None
        with np.errstate(invalid="ignore"):
            out = np.where(defined, s, 0.0).sum(1) / defined.sum(1)
        return np.nan_to_num(out, nan=0.0)


def _mean_defined(s: np.ndarray) -> float | None:
    s = s[s > -1]
    return float(np.mean(s)) if s.size else None


def summarize_stats(precision: np.ndarray, recall: np.ndarray, iou_thresholds: np.ndarray) -> tuple[float, ...]:
    """COCOeval.summarize()'s 12 detection stats from its arrays (same formula, no printing)."""

    def one(ap: bool, iou: float | None = None, area: str = "all", max_dets: int = 100) -> float:
        a, m = AREAS.index(area), MAX_DETS.index(max_dets)
        s = precision if ap else recall
        if iou is not None:
            s = s[np.where(iou == iou_thresholds)[0]]
        s = s[:, :, :, a, m] if ap else s[:, :, a, m]
        defined = s[s > -1]
        return float(np.mean(defined)) if defined.size else -1.0

    return (
        one(True), one(True, iou=0.5), one(True, iou=0.75),
        one(True, area="small"), one(True, area="medium"), one(True, area="large"),
        one(False, max_dets=1), one(False, max_dets=10), one(False),
        one(False, area="small"), one(False, area="medium"), one(False, area="large"),
    )


def _clean_gt(gt: Mapping[str, Any]) -> dict[str, Any]:
    images = [dict(image) for image in gt.get("images", [])]
    listed = {image["id"] for image in images}
    annotations = []
    for i, ann in enumerate(gt.get("annotations", []), start=1):
        x, y, w, h = ann["bbox"]
        clean = {**ann, "id": i, "area": ann.get("area", w * h), "iscrowd": int(ann.get("iscrowd", 0))}
        annotations.append(clean)
        if clean["image_id"] not in listed:
            listed.add(clean["image_id"])
            images.append({"id": clean["image_id"]})
    return {"images": images, "annotations": annotations, "categories": [dict(c) for c in gt.get("categories", [])]}


def _clean_results(results: Sequence[Mapping[str, Any]], gt: Mapping[str, Any]) -> tuple[list[dict], dict[Any, int], int]:
    images = {image["id"] for image in gt["images"]}
    categories = {c["id"] for c in gt["categories"]}
    kept: list[dict] = []
    dropped_categories: dict[Any, int] = {}
    dropped_images = 0
    for r in results:
        if r["image_id"] not in images:
            dropped_images += 1
        elif r["category_id"] not in categories:
            dropped_categories[r["category_id"]] = dropped_categories.get(r["category_id"], 0) + 1
        else:
            x, y, w, h = (float(v) for v in r["bbox"])
            kept.append({
                "id": len(kept) + 1, "image_id": r["image_id"], "category_id": r["category_id"],
                "bbox": [x, y, w, h], "score": float(r["score"]), "area": w * h, "iscrowd": 0,
            })
    return kept, dropped_categories, dropped_images


def cocoeval_bbox(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], *, backend: str = "auto") -> CocoRun:
    """Run bbox COCOeval on a COCO instances dict and a results list, traps fixed (module doc).

    gt: {"images": [{"id", ...}], "annotations": [{"image_id", "category_id", "bbox": xywh,
    "area"?, "iscrowd"?}], "categories": [{"id", "name"}]}; results: [{"image_id",
    "category_id", "bbox": xywh, "score"}]. Neither is modified.
    """
    resolved = resolve_backend(backend)
    if resolved == "faster":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

    gt_clean = _clean_gt(gt)
    dt_anns, dropped_categories, dropped_images = _clean_results(results, gt_clean)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_clean
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {"images": gt_clean["images"], "categories": gt_clean["categories"], "annotations": dt_anns}
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    p = evaluator.params
    precision = np.asarray(evaluator.eval["precision"], dtype=np.float64)
    recall = np.asarray(evaluator.eval["recall"], dtype=np.float64)
    iou_thresholds = np.asarray(p.iouThrs, dtype=np.float64)
    return CocoRun(
        backend=backend_label(resolved),
        stats=summarize_stats(precision, recall, iou_thresholds),
        category_ids=tuple(int(c) for c in p.catIds),
        precision=precision,
        recall=recall,
        iou_thresholds=iou_thresholds,
        dropped_categories=dropped_categories,
        dropped_images=dropped_images,
    )
