"""`bbu eval CKPT`: run a checkpoint over a split and score it.

    run = evaluate_checkpoint("runs/tiny/checkpoint-100", sources=("head", "lm"))

Steps: read the ground truth (`--data`, default: the `data.val` JSONL named in the checkpoint's
config.yaml), predict every image whose file exists with `Inference` (teachers as below), then per
source `evaluate` and write the `eval/` folder (`write_eval_dir`) plus the files below. An image
that cannot be decoded (a truncated file: its header read fine) is left out of the scoring and
listed among the problems, `images_unreadable` in inference.json.

    predictions.jsonl   the predictions (bbu predictions JSONL; lm lines also carry `raw`, the
                        generated text), boxes in the pixels of the scored image file
    inference.json      what was run: checkpoint, data, source, teachers (where from, how many,
                        which), seconds per image (all sources together), unparseable answers,
                        mean prompt length

One source writes into `out_dir` (default `CKPT/eval/`); several write `out_dir/<source>/` each.
The folder is created and checked writable before the checkpoint is loaded (`output_paths`).

Teachers (`teacher_source`):
- "checkpoint" (default): every image gets the teacher examples the checkpoint carries
  (`teachers/`, the fixed label-blind set `bbu predict` uses too), the first K = `teachers` of
  them (None: all). Any ground truth, COCO too. A checkpoint saved before bbu kept teachers is
  evaluated without any, and `CheckpointEvalRun.notes` says so.
- "episodes": a bbu JSONL episode's own teachers (drawn by `bbu convert`); the first K are
  prepended, K = `teachers` or, when None, the training config's `data.num_teachers` (all listed
  ones without a config). A COCO ground truth has none. This is how bbu evaluated before the
  checkpoint kept teachers; on a JSONL converted by an older bbu, whose teachers were chosen to
  cover each student's own classes, it measures how much that choice inflated the scores.
Either way, like training, teachers are dropped (the last first) while the prompt exceeds the
config's `data.max_tokens`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bbucli.errors import DataError, UsageError
from bbucli.evaluation.evaluate import evaluate
from bbucli.evaluation.ground_truth import Split, read_split
from bbucli.evaluation.output_paths import writable_dir
from bbucli.evaluation.result import EvalResult
from bbucli.evaluation.types import GroundTruth
from bbucli.evaluation.writers import OVERLAYS, write_eval_dir
from bbucli.infer.inference import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TOP_K,
    SOURCES,
    Inference,
    Prediction,
    pick_teachers,
)
from bbucli.infer.predict import IMAGE_ERRORS, prediction_line
from bbucli.model.checkpoint import Checkpoint, checkpoint_teachers, load_checkpoint
from bbucli.model.checkpoint_layout import check_folder
from bbucli.schema import (
    Episode,
    Problem,
    Progress,
    Sample,
    write_json_atomic,
    write_jsonl_atomic,
)
from bbucli.taxonomy import Taxonomy

TEACHER_SOURCES = ("checkpoint", "episodes")


@dataclass(frozen=True)
class SourceEval:
    """The evaluation of one source: its result, the files written ({name: path}), its folder;
    seconds_per_image: inference wall time per image, all sources asked together (they share
    the image preparation)."""

    source: str
    result: EvalResult
    written: Mapping[str, Path]
    out_dir: Path | None
    seconds_per_image: float


@dataclass(frozen=True)
class CheckpointEvalRun:
    """A checkpoint evaluated on a split: one `SourceEval` per source, in the order asked.
    teachers: K prepended per image (None: all an episode lists); teacher_source: checkpoint or
    episodes (module doc); images: in the ground truth; images_predicted: those whose file
    exists; notes: what the caller should say once (a checkpoint without teachers)."""

    checkpoint: Path
    data: Path
    ground_truth_format: str
    teachers: int | None
    images: int
    images_predicted: int
    sources: tuple[SourceEval, ...]
    teacher_source: str = "checkpoint"
    notes: tuple[str, ...] = ()


def default_data(checkpoint: Checkpoint) -> Path:
    """The val JSONL of the checkpoint's training config (`data.val`); UsageError when it has none."""
    data = (checkpoint.config.get("data") or {}).get("val")
    hint = "pass --data with a JSONL split written by `bbu convert` (e.g. runs/data/bbu.val.jsonl)"
    if not data:
        raise UsageError(
            f"{checkpoint.path} names no validation split (config.yaml data.val)", hint=hint
        )
    path = Path(data)
    if not path.is_absolute():
        path = checkpoint.path / path
    if not path.is_file():
        raise DataError(f"the checkpoint's validation split {path} does not exist", hint=hint)
    return path


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    sources: Sequence[str] = ("head",),
    teachers: int | None = None,
    teacher_source: str = "checkpoint",
    threshold: float | None = None,
    backend: str = "auto",
    taxonomy: Taxonomy | str | Path | None = None,
    overlays: int = OVERLAYS,
    batch_size: int = 4,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    top_k: int | None = DEFAULT_TOP_K,
    hypotheses: int = 1,
    device: str | None = None,
    dtype: str | None = None,
    write: bool = True,
    progress: Progress | None = None,
) -> CheckpointEvalRun:
    """Predict `data` with the checkpoint and score each source (module doc).

    teachers / teacher_source: which teachers each image gets (module doc).
    threshold: the score threshold of the operating point (None: best F1 on this split);
    taxonomy: tells defect classes apart (default: the checkpoint's taxonomy.yaml, else built-in).
    hypotheses: classes per head query (`Inference`; 1: one box per query).
    progress: called as (stage, done, total) for "load", "predict", then "<source>: <stage>" for
    the scoring stages of each source.
    """
    sources = tuple(dict.fromkeys(sources))
    if not sources or any(s not in SOURCES for s in sources):
        raise UsageError(f"sources must be among {', '.join(SOURCES)}, got {list(sources)!r}")
    if teachers is not None and teachers < 0:
        raise UsageError(f"--teachers must be >= 0, got {teachers}")
    if teacher_source not in TEACHER_SOURCES:
        raise UsageError(
            f"--teacher-source must be one of {', '.join(TEACHER_SOURCES)}, got {teacher_source!r}"
        )
    check_folder(Path(checkpoint))
    if teacher_source == "checkpoint":  # a K the checkpoint cannot give fails before loading
        pick_teachers(checkpoint_teachers(checkpoint), teachers, Path(checkpoint))
    base = Path(out_dir) if out_dir is not None else Path(checkpoint) / "eval"
    if write:
        writable_dir(base, "eval folder")
    report = progress or (lambda stage, done, total: None)
    report("load", 0, 1)
    import torch

    resolved_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load_checkpoint(checkpoint, device=resolved_device, dtype=dtype)
    report("load", 1, 1)
    data = Path(data) if data is not None else default_data(ckpt)
    split = read_split(data)  # the ground truth and the episodes, in one read of the file
    ground_truth = split.ground_truth
    taxonomy = _taxonomy(taxonomy, ckpt)
    if teacher_source == "checkpoint":
        inference = Inference.of_checkpoint(
            ckpt,
            device=resolved_device,
            batch_size=batch_size,
            hypotheses=hypotheses,
            teachers=teachers,
        )
        k: int | None = len(inference.teachers)
        inputs: list[Path | Episode] = [image.file for image in ground_truth.images]
        teacher_images = [_in_checkpoint(t.image, ckpt.path) for t in inference.teachers]
    else:
        k = _teacher_count(teachers, ckpt, ground_truth)
        inference = Inference.of_checkpoint(
            ckpt, device=resolved_device, batch_size=batch_size, hypotheses=hypotheses, teachers=0
        )
        inputs = _inputs(split, data.parent, k)
        teacher_images = None
    notes = (inference.teacher_note,) if inference.teacher_note else ()

    unreadable = [image.key for image in ground_truth.images if image.file is None]
    if unreadable:
        # Scoring them would count every object as missed: a silent AP of (nearly) 0.
        raise DataError(
            f"{data}: {len(unreadable)} of {len(ground_truth.images)} images not found or "
            f"unreadable under {data.parent} (first: {unreadable[0]})",
            hint="image paths in a bbu JSONL are relative to its folder: keep the split next to "
            "the images/ folder `bbu convert` wrote",
        )
    total = len(ground_truth.images)
    report("predict", 0, total)
    started = time.perf_counter()
    predictions, failures = _predict_each(
        inference,
        inputs,
        [image.key for image in ground_truth.images],
        sources,
        report,
        top_k=top_k,
        max_new_tokens=max_new_tokens,
    )
    if failures:  # skipped and counted: scoring them would count their objects as missed
        ground_truth = _without(ground_truth, failures)
    scored = list(ground_truth.images)
    seconds = (time.perf_counter() - started) / max(len(scored), 1)

    results = []
    for source in sources:
        found = predictions[source]
        result = evaluate(
            [p.detections for p in found],
            ground_truth,
            threshold=threshold,
            taxonomy=taxonomy,
            backend=backend,
            progress=lambda stage, done, total, s=source: report(f"{s}: {stage}", done, total),
        )
        folder = (base if len(sources) == 1 else base / source) if write else None
        written: dict[str, Path] = {}
        if folder is not None:
            written = write_eval_dir(
                folder, result, ground_truth, taxonomy=taxonomy, overlays=overlays
            )
            written["predictions"] = folder / "predictions.jsonl"
            write_jsonl_atomic(written["predictions"], (prediction_line(p) for p in found))
            written["inference"] = folder / "inference.json"
            n = max(len(found), 1)
            write_json_atomic(
                written["inference"],
                {
                    "checkpoint": str(ckpt.path),
                    "data": str(data),
                    "source": source,
                    "teacher_source": teacher_source,
                    "teachers": k,
                    "teacher_images": teacher_images,
                    "images": total,
                    "images_predicted": len(scored),
                    "images_unreadable": len(failures),
                    "seconds_per_image": round(seconds, 4),
                    "batch_size": batch_size,
                    "device": str(resolved_device),
                    "max_new_tokens": max_new_tokens if source == "lm" else None,
                    "top_k": top_k,
                    "hypotheses": hypotheses if source == "head" else None,
                    "unparseable": sum(p.detections.unparseable for p in found),
                    "teachers_mean": round(sum(p.teachers for p in found) / n, 3),
                    "prompt_tokens_mean": round(sum(p.prompt_tokens for p in found) / n, 1),
                },
            )
        results.append(SourceEval(source, result, written, folder, seconds))
    return CheckpointEvalRun(
        ckpt.path,
        data,
        ground_truth.format,
        k,
        total,
        len(scored),
        tuple(results),
        teacher_source=teacher_source,
        notes=notes,
    )


def _predict_each(
    inference: Inference,
    inputs: Sequence[Path | Episode],
    keys: Sequence[str],
    sources: tuple[str, ...],
    report: Progress,
    **options: Any,
) -> tuple[dict[str, list[Prediction]], list[Problem]]:
    """Predict batch by batch; a batch that fails on an image (a truncated file decodes only
    here) is predicted again one image at a time, so only the bad images are left out:
    ({source: predictions in input order}, [one Problem per image left out, where = its key])."""
    found: dict[str, list[Prediction]] = {source: [] for source in sources}
    failures: list[Problem] = []

    def run(indices: list[int]) -> None:
        chunk = [inputs[i] for i in indices]
        out = inference.predict(chunk, sources=sources, keys=[keys[i] for i in indices], **options)
        for source in sources:
            found[source] += out[source]

    step = inference.batch_size
    for start in range(0, len(inputs), step):
        indices = list(range(start, min(start + step, len(inputs))))
        try:
            run(indices)
        except IMAGE_ERRORS:
            for i in indices:  # again one at a time: only the bad images are left out
                try:
                    run([i])
                except IMAGE_ERRORS as exc:
                    why = exc.message if isinstance(exc, DataError) else str(exc)
                    failures.append(Problem(keys[i], f"{why}; image not scored"))
        report("predict", indices[-1] + 1, len(inputs))
    return found, failures


def _without(ground_truth: GroundTruth, failures: Sequence[Problem]) -> GroundTruth:
    """The ground truth without the images that could not be predicted, which become problems."""
    left_out = {p.where for p in failures}
    return replace(
        ground_truth,
        images=tuple(image for image in ground_truth.images if image.key not in left_out),
        problems=(*ground_truth.problems, *failures),
    )


def _in_checkpoint(image: str, folder: Path) -> str:
    """A teacher image path as inference.json records it: relative to the checkpoint folder."""
    try:
        return Path(image).relative_to(folder.absolute()).as_posix()
    except ValueError:
        return image


def _taxonomy(taxonomy: Taxonomy | str | Path | None, checkpoint: Checkpoint) -> Taxonomy:
    if isinstance(taxonomy, Taxonomy):
        return taxonomy
    if taxonomy is None and (checkpoint.path / "taxonomy.yaml").is_file():
        return Taxonomy.load(checkpoint.path / "taxonomy.yaml")
    return Taxonomy.load(taxonomy)


def _teacher_count(
    teachers: int | None, checkpoint: Checkpoint, ground_truth: GroundTruth
) -> int | None:
    """K, the teachers per image; None: every teacher an episode lists."""
    if ground_truth.format != "bbu-jsonl":
        if teachers:
            raise UsageError(
                f"--teachers {teachers}: a {ground_truth.format} ground truth lists no teachers",
                hint="use a bbu JSONL split (its episodes carry teachers), or --teachers 0",
            )
        return 0
    if teachers is not None:
        return teachers
    configured = (checkpoint.config.get("data") or {}).get("num_teachers")
    return configured if isinstance(configured, int) and configured >= 0 else None


def _inputs(split: Split, root: Path, k: int | None) -> list[Path | Episode]:
    """What `Inference` reads for each scored image: its file, or (a bbu JSONL, k != 0) its
    episode with the first `k` (None: all) teachers, image paths resolved against the JSONL folder."""
    inputs: list[Path | Episode] = []
    for image in split.ground_truth.images:
        episode = split.episodes.get(image.key)
        if episode is None or k == 0 or not episode.teachers:
            inputs.append(image.file)
            continue
        teachers = tuple(
            replace(t, images=tuple(str(root / p) for p in t.images)) for t in episode.teachers[:k]
        )
        inputs.append(Episode(student=Sample((str(image.file),)), teachers=teachers))
    return inputs
