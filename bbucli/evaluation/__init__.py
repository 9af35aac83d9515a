"""Scoring detections against ground truth without a model: readers of predictions and
ground truth, one adapter over COCOeval, the operating point, defect escapes, the `eval/` folder.

    gt = read_ground_truth("data/bbu.val.jsonl")
    preds = read_predictions("preds.jsonl", gt)
    result = evaluate(preds, gt)            # EvalResult; result.to_dict() is metrics.json
    write_eval_dir("eval", result, gt)
"""

from __future__ import annotations

from bbucli.evaluation.cocoeval import (
    BACKENDS,
    CocoRun,
    cocoeval_bbox,
    faster_available,
    resolve_backend,
)
from bbucli.evaluation.escape import EscapeRate, is_defect
from bbucli.evaluation.evaluate import evaluate
from bbucli.evaluation.ground_truth import (
    Split,
    ground_truth_from_coco,
    read_bbu_jsonl,
    read_ground_truth,
    read_split,
)
from bbucli.evaluation.pipeline import EvalRun, default_out_dir, evaluate_files
from bbucli.evaluation.predictions import (
    PredictionSet,
    parse_predictions_jsonl,
    prediction_record,
    predictions_from_coco,
    read_predictions,
    write_predictions_jsonl,
)
from bbucli.evaluation.result import (
    ClassMetrics,
    ConfusionMatrix,
    EvalResult,
    ImageErrors,
    OperatingPoint,
    TypeMetrics,
)
from bbucli.evaluation.types import Category, Detections, GroundTruth, GroundTruthImage
from bbucli.evaluation.writers import write_eval_dir
from bbucli.schema import Problem  # re-exported: the one Problem every stage reports

__all__ = [
    "BACKENDS", "Category", "ClassMetrics", "CocoRun", "ConfusionMatrix", "Detections", "EscapeRate",
    "EvalResult", "EvalRun", "GroundTruth", "GroundTruthImage", "ImageErrors", "OperatingPoint",
    "PredictionSet", "Problem", "Split", "TypeMetrics", "cocoeval_bbox", "default_out_dir", "evaluate",
    "evaluate_files", "faster_available", "ground_truth_from_coco", "is_defect", "parse_predictions_jsonl",
    "prediction_record", "predictions_from_coco", "read_bbu_jsonl", "read_ground_truth", "read_predictions", "read_split",
    "resolve_backend", "write_eval_dir", "write_predictions_jsonl",
]
