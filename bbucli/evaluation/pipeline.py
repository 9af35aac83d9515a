"""Score a predictions file against a ground-truth file and write the `eval/` folder: read, evaluate,
write. What `bbu eval PREDICTIONS --data GT` runs; a checkpoint evaluation produces `Detections`
in memory and calls `evaluate` and `write_eval_dir` itself.

A predictions file none of whose records names an image of the ground truth (an empty file, a file
of another kind, predictions made on another split) is refused with a DataError before anything is
written: its metrics would only say that nothing was predicted. The output folder is created and
checked writable (`output_paths`) before the evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bbucli.errors import DataError
from bbucli.evaluation.evaluate import evaluate
from bbucli.evaluation.ground_truth import read_ground_truth
from bbucli.evaluation.output_paths import writable_dir
from bbucli.evaluation.predictions import PredictionSet, read_predictions
from bbucli.evaluation.result import EvalResult
from bbucli.evaluation.types import GroundTruth
from bbucli.evaluation.writers import OVERLAYS, write_eval_dir
from bbucli.schema import Progress
from bbucli.taxonomy import Taxonomy


@dataclass(frozen=True)
class EvalRun:
    """One scored predictions file: the result, the files written ({name: path}), the formats read."""

    result: EvalResult
    written: Mapping[str, Path]
    predictions_format: str
    ground_truth_format: str
    out_dir: Path | None


def default_out_dir(predictions: str | Path) -> Path:
    """`eval/` beside the predictions file."""
    return Path(predictions).parent / "eval"


def evaluate_files(
    predictions: str | Path,
    data: str | Path,
    out_dir: str | Path | None = None,
    *,
    threshold: float | None = None,
    backend: str = "auto",
    taxonomy: Taxonomy | str | Path | None = None,
    overlays: int = OVERLAYS,
    write: bool = True,
    progress: Progress | None = None,
) -> EvalRun:
    """Read `data` (bbu JSONL or COCO instances) and `predictions` (bbu predictions JSONL or COCO
    results), evaluate, and write into `out_dir` (default: `eval/` beside the predictions).
    DataError when no predictions record matches a ground-truth image (module doc); UsageError
    when `out_dir` cannot be written, both before evaluating."""
    predictions = Path(predictions)
    if not predictions.is_file():
        raise DataError(f"predictions file {predictions} does not exist", hint="pass a predictions JSONL or a COCO results JSON")
    if not isinstance(taxonomy, Taxonomy):
        taxonomy = Taxonomy.load(taxonomy)
    ground_truth = read_ground_truth(data)
    prediction_set = read_predictions(predictions, ground_truth)
    _check_matched(prediction_set, ground_truth, predictions, data)
    folder = None
    if write:
        folder = writable_dir(out_dir if out_dir is not None else default_out_dir(predictions), "eval folder")
    result = evaluate(prediction_set, ground_truth, threshold=threshold, taxonomy=taxonomy, backend=backend, progress=progress)
    written: dict[str, Path] = {}
    if folder is not None:
        written = write_eval_dir(folder, result, ground_truth, taxonomy=taxonomy, overlays=overlays)
    return EvalRun(result, written, prediction_set.format, ground_truth.format, folder)


def _check_matched(prediction_set: PredictionSet, ground_truth: GroundTruth, predictions: Path, data: str | Path) -> None:
    """DataError unless at least one predictions record names a ground-truth image."""
    if any(ground_truth.index(d.image) is not None for d in prediction_set.detections):
        return
    read = len(prediction_set.detections)
    found = f"none of its {read} record(s) names an image of {data}" if read else "no predictions record could be read"
    first = f"; first problem: {prediction_set.problems[0]}" if prediction_set.problems else ""
    raise DataError(
        f"{predictions}: {found}{first}",
        hint="pass the predictions made on this ground truth (bbu predictions JSONL or COCO results JSON); "
        "their image keys must match the ground truth's",
    )
