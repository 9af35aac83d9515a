"""Bring predictions onto the ground truth: one set per ground-truth image, boxes in its scoring
frame, descs in its category names; everything that cannot be scored as given is reported.

Checks, each reported at the record's origin (`preds.jsonl:7`):
- an image the ground truth does not have: its predictions are not scored;
- a second record for the same image: not scored;
- boxes in another frame (`Detections.image_wh`): scaled per axis into the scoring frame;
- boxes reaching outside the image: scored as given, as COCOeval scores them (clipping could
  only raise their IoU), reported and counted (`out_of_image_predictions`); a 0.5 px overhang is
  rounding and passes silently;
- non-finite or empty boxes: dropped;
- a desc that is no ground-truth category: mapped through the taxonomy when it names a class whose
  zh or en desc is one (a zh prediction against en ground truth), otherwise kept as an unknown
  category (reported once per desc, counted in `unknown_category_predictions`): false positives
  wherever they are scored (P/R/F1, the confusion matrix, class-agnostic AP, type AP when the
  type is known), with a per-class row whose AP is undefined;
- more than 100 predictions of one class on one image: COCOeval scores only the 100 best.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from bbucli.evaluation.types import Detections, GroundTruth, GroundTruthImage
from bbucli.schema import Problem
from bbucli.taxonomy import Taxonomy

OVERHANG_PX = 0.5
MAX_DETS = 100
SHOWN = 3


@dataclass(frozen=True, eq=False)
class AlignedImage:
    """One ground-truth image's predictions: boxes_px (N, 4) xyxy in the scoring frame, descs
    (canonical where known), scores (N,)."""

    boxes_px: np.ndarray
    descs: tuple[str, ...]
    scores: np.ndarray


EMPTY = AlignedImage(np.zeros((0, 4)), (), np.zeros(0))


@dataclass(frozen=True, eq=False)
class Aligned:
    """Predictions per ground-truth image (same order as `GroundTruth.images`), counts, problems."""

    images: tuple[AlignedImage, ...]
    counts: dict[str, int]
    problems: tuple[Problem, ...]


def _fmt_box(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _to_frame(det: Detections, image: GroundTruthImage, problems: list[Problem]) -> np.ndarray:
    boxes = det.boxes_px.copy()
    if det.image_wh is None:
        return boxes
    if image.image_wh is None:
        problems.append(Problem(det.where, f"boxes are in a {det.image_wh[0]:g}x{det.image_wh[1]:g} frame but the size of {image.key} is unknown; scored unscaled"))
        return boxes
    sx, sy = image.image_wh[0] / det.image_wh[0], image.image_wh[1] / det.image_wh[1]
    if (sx, sy) != (1.0, 1.0):
        boxes *= np.array([sx, sy, sx, sy])
    return boxes


def _checked(boxes: np.ndarray, det: Detections, image: GroundTruthImage, problems: list[Problem]) -> tuple[np.ndarray, int]:
    """The (N,) mask of boxes kept (finite, non-empty) and how many of those reach outside the image
    (reported, scored as given)."""
    finite = np.isfinite(boxes).all(1)
    keep = finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if (~keep).any():
        problems.append(Problem(det.where, f"{int((~keep).sum())} box(es) not finite or empty; dropped"))
    if image.image_wh is None:
        return keep, 0
    w, h = image.image_wh
    outside = keep & ((boxes[:, :2] < -OVERHANG_PX).any(1) | (boxes[:, 2] > w + OVERHANG_PX) | (boxes[:, 3] > h + OVERHANG_PX))
    if outside.any():
        wholly = keep & ((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | (boxes[:, 0] >= w) | (boxes[:, 1] >= h))
        idx = np.flatnonzero(outside)
        shown = "; ".join(f"{_fmt_box(det.boxes_px[i])} {det.descs[i]}" for i in idx[:SHOWN])
        more = f" and {len(idx) - SHOWN} more" if len(idx) > SHOWN else ""
        whole = f", {int(wholly.sum())} of them wholly outside" if wholly.any() else ""
        problems.append(Problem(det.where, f"{len(idx)} box(es) reach outside the {w}x{h} image {image.key}{whole}; scored as given (not clipped): {shown}{more}"))
    return keep, int(outside.sum())


class _Categories:
    """desc -> ground-truth category name (or the desc itself when unknown), unknowns tallied."""

    def __init__(self, ground_truth: GroundTruth, taxonomy: Taxonomy | None) -> None:
        self.known = set(ground_truth.category_ids)
        self.taxonomy = taxonomy
        self.cache: dict[str, str] = {}
        self.unknown: dict[str, list[str]] = {}
        self.unknown_count: dict[str, int] = {}

    def canonical(self, desc: str, where: str) -> str:
        name = self.cache.get(desc)
        if name is None:
            name = desc
            if desc not in self.known and self.taxonomy is not None:
                cls = self.taxonomy.resolve(desc)
                if cls is not None:
                    name = next((d for d in (cls.zh, cls.en) if d in self.known), desc)
            self.cache[desc] = name
        if name not in self.known:
            self.unknown_count[name] = self.unknown_count.get(name, 0) + 1
            places = self.unknown.setdefault(name, [])
            if len(places) <= SHOWN and (not places or places[-1] != where):
                places.append(where)
        return name

    def problems(self) -> list[Problem]:
        out = []
        for name, places in self.unknown.items():
            also = f"; also {', '.join(places[1:SHOWN])}" if len(places) > 1 else ""
            out.append(Problem(places[0], (
                f"category {name!r} is not in the ground truth: {self.unknown_count[name]} prediction(s){also}; "
                "false positives in P/R/F1, the confusion matrix, class-agnostic AP (and type AP when its "
                "type is known); its per-class row has no AP"
            )))
        return out


def align_predictions(predictions: Iterable[Detections], ground_truth: GroundTruth, taxonomy: Taxonomy | None = None) -> Aligned:
    """One AlignedImage per ground-truth image (module doc for every check)."""
    slots: list[AlignedImage | None] = [None] * len(ground_truth.images)
    first_at: dict[int, str] = {}
    problems: list[Problem] = []
    categories = _Categories(ground_truth, taxonomy)
    counts = {"predictions": 0, "predictions_scored": 0, "unparseable": 0, "records": 0, "head": 0, "lm": 0,
              "out_of_image_predictions": 0}
    crowded = 0
    for det in predictions:
        counts["records"] += 1
        counts["predictions"] += len(det)
        counts["unparseable"] += int(det.unparseable)
        counts[det.source] = counts.get(det.source, 0) + 1
        i = ground_truth.index(det.image)
        if i is None:
            problems.append(Problem(det.where, f"image {det.image!r} is not in the ground truth; its {len(det)} prediction(s) are not scored"))
            continue
        if i in first_at:
            problems.append(Problem(det.where, f"image {det.image!r} already has predictions at {first_at[i]}; these are not scored"))
            continue
        first_at[i] = det.where
        image = ground_truth.images[i]
        boxes = _to_frame(det, image, problems)
        keep, outside = _checked(boxes, det, image, problems)
        counts["out_of_image_predictions"] += outside
        descs = tuple(categories.canonical(d, det.where) for d, k in zip(det.descs, keep, strict=True) if k)
        slots[i] = AlignedImage(boxes[keep], descs, det.scores[keep])
        counts["predictions_scored"] += len(descs)
        _, per_desc = np.unique(np.asarray(descs, dtype=object), return_counts=True) if descs else (None, np.zeros(0))
        crowded += int((per_desc > MAX_DETS).sum())
    missing = [ground_truth.images[i].key for i, s in enumerate(slots) if s is None]
    counts["images_without_predictions"] = len(missing)
    counts["unknown_category_predictions"] = sum(categories.unknown_count.values())
    if missing and counts["records"]:
        problems.append(Problem("predictions", f"{len(missing)} ground-truth image(s) have no predictions record (first: {missing[0]}); scored as no detections"))
    if crowded:
        problems.append(Problem("predictions", f"{crowded} image/class pair(s) have more than {MAX_DETS} predictions; COCOeval scores only the {MAX_DETS} highest of each"))
    problems.extend(categories.problems())
    return Aligned(tuple(s or EMPTY for s in slots), counts, tuple(problems))
