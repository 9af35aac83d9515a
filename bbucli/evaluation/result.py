"""`EvalResult`: every number `evaluate` computes, frozen, with `to_dict()` for `metrics.json`.

Undefined numbers (a category without ground truth, a precision without predictions) are None,
never -1 or NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from bbucli.evaluation.align import AlignedImage
from bbucli.evaluation.cocoeval import STAT_NAMES
from bbucli.evaluation.escape import EscapeRate
from bbucli.schema import Problem

BACKGROUND = "background"


@dataclass(frozen=True)
class ClassMetrics:
    """One category: COCO AP (area all, 100 detections), `predictions` of it at any score, and
    tp/fp/fn and precision/recall/F1 at the operating threshold. A predicted category the ground
    truth lacks has a row too: category_id None, gt 0, AP None, every prediction a false positive."""

    desc: str
    category_id: int | None
    defect: bool
    gt: int
    predictions: int
    ap: float | None
    ap50: float | None
    ap75: float | None
    tp: int
    fp: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None


@dataclass(frozen=True)
class TypeMetrics:
    """One type (first desc level): AP over its classes merged into one category."""

    type: str
    gt: int
    ap: float | None
    ap50: float | None


@dataclass(frozen=True)
class OperatingPoint:
    """Micro precision / recall / F1 at `threshold` (score >= threshold kept), IoU 0.5.

    chosen_by: "max_f1" (picked on this split) or "given"; threshold None: no predictions.
    unknown_category_fp: how many of the `fp` are predictions of a category the ground truth lacks.
    """

    threshold: float | None
    chosen_by: str
    tp: int
    fp: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None
    unknown_category_fp: int = 0


@dataclass(frozen=True)
class ConfusionMatrix:
    """counts[i][j]: ground truth labels[i] predicted as labels[j]; the last label is background
    (row: predictions matching no ground truth; column: ground truth nothing matched). Predicted
    categories the ground truth lacks come after its own, with all-zero rows."""

    labels: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ImageErrors:
    """One image's counts at the operating threshold; `errors` = fp + fn."""

    image: str
    gt: int
    predictions: int
    tp: int
    fp: int
    fn: int

    @property
    def errors(self) -> int:
        return self.fp + self.fn


@dataclass(frozen=True)
class PrCurves:
    """Precision at the 101 COCO recall points (area all, 100 detections), by curve name:
    "all" (mean over categories) and each desc; at IoU 0.5 and averaged over 0.5:0.95."""

    recall: tuple[float, ...]
    iou50: Mapping[str, tuple[float, ...]]
    iou50_95: Mapping[str, tuple[float, ...]]


def _coco(stats: tuple[float, ...]) -> dict[str, float | None]:
    return {n: (None if v < 0 else v) for n, v in zip(STAT_NAMES, stats, strict=True)}


@dataclass(frozen=True, eq=False)
class EvalResult:
    """Everything one evaluation found.

    stats / type_stats / agnostic_stats: COCOeval's 12 stats (STAT_NAMES order, -1 undefined)
    with categories = descs, = types, = one category for everything. counts: images,
    images_without_objects, gt_objects, predictions (read), predictions_scored (of a known
    image), unknown_category_predictions, out_of_image_predictions (scored as given),
    images_without_predictions, unparseable, by source.
    scored: the predictions as scored, one per ground-truth image in its order (scoring frame,
    canonical descs); for the writers, not part of `to_dict()`.
    """

    backend: str
    iou_type: str
    counts: Mapping[str, int]
    stats: tuple[float, ...]
    type_stats: tuple[float, ...]
    agnostic_stats: tuple[float, ...]
    per_class: tuple[ClassMetrics, ...]
    per_type: tuple[TypeMetrics, ...]
    operating_point: OperatingPoint
    confusion: ConfusionMatrix
    escape: EscapeRate
    worst_images: tuple[ImageErrors, ...]
    pr_curves: PrCurves
    problems: tuple[Problem, ...]
    scored: tuple[AlignedImage, ...] = field(default=(), repr=False)

    @property
    def coco(self) -> dict[str, float | None]:
        """AP, AP50, AP75, AP_small/medium/large, AR1/10/100, AR_small/medium/large (None: undefined)."""
        return _coco(self.stats)

    @property
    def type_coco(self) -> dict[str, float | None]:
        """The same 12 numbers with categories = types (first desc level)."""
        return _coco(self.type_stats)

    @property
    def agnostic_coco(self) -> dict[str, float | None]:
        """The same 12 numbers with every box in one category."""
        return _coco(self.agnostic_stats)

    @property
    def unparseable(self) -> int:
        return self.counts.get("unparseable", 0)

    def to_dict(self) -> dict:
        """JSON-ready (what `metrics.json` holds)."""
        return {
            "backend": self.backend,
            "iou_type": self.iou_type,
            "counts": dict(self.counts),
            "coco": self.coco,
            "type_level": {"coco": self.type_coco, "per_type": [asdict(t) for t in self.per_type]},
            "class_agnostic": {"coco": self.agnostic_coco},
            "per_class": [asdict(c) for c in self.per_class],
            "operating_point": asdict(self.operating_point),
            "confusion": {"rows": "ground truth", "columns": "prediction", "labels": list(self.confusion.labels),
                          "counts": [list(r) for r in self.confusion.counts]},
            "escape": self.escape.to_dict(),
            "worst_images": [{**asdict(w), "errors": w.errors} for w in self.worst_images],
            "pr_curves": {
                "recall": list(self.pr_curves.recall),
                "iou50": {k: list(v) for k, v in self.pr_curves.iou50.items()},
                "iou50_95": {k: list(v) for k, v in self.pr_curves.iou50_95.items()},
            },
            "problems": [str(p) for p in self.problems],
        }
