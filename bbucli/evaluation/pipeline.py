"""Score a predictions file against a ground-truth file and write the `eval/` folder: read, evaluate,
write. What `bbu eval PREDICTIONS --data GT` runs; a checkpoint evaluation produces `Detections`
in memory and calls `evaluate` and `write_eval_dir` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bbucli.errors import DataError
from bbucli.evaluation.evaluate import evaluate
from bbucli.evaluation.ground_truth import read_ground_truth
from bbucli.evaluation.predictions import read_predictions
from bbucli.evaluation.result import EvalResult
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
    results), evaluate, and write into `out_dir` (default: `eval/` beside the predictions)."""
    predictions = Path(predictions)
    if not predictions.is_file():
        raise DataError(f"predictions file {predictions} does not exist", hint="pass a predictions JSONL or a COCO results JSON")
    if not isinstance(taxonomy, Taxonomy):
        taxonomy = Taxonomy.load(taxonomy)
    ground_truth = read_ground_truth(data)
    prediction_set = read_predictions(predictions, ground_truth)
    result = evaluate(prediction_set, ground_truth, threshold=threshold, taxonomy=taxonomy, backend=backend, progress=progress)
    written: dict[str, Path] = {}
    folder = None
    if write:
        folder = Path(out_dir) if out_dir is not None else default_out_dir(predictions)
        written = write_eval_dir(folder, result, ground_truth, taxonomy=taxonomy, overlays=overlays)
    return EvalRun(result, written, prediction_set.format, ground_truth.format, folder)
