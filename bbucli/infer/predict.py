"""`bbu predict CKPT IMAGES...`: a checkpoint's detections on image files, as a predictions JSONL and
as pictures.

The JSONL is the bbu predictions format (`bbucli.evaluation.predictions`), one line per image:
`image` is the path as given, `width`/`height` the upright original image's size (the frame of
`bbox_2d`), and lines of the `lm` source also carry `raw`, the generated text. It can be scored
later with `bbu eval preds.jsonl --data GT` when the paths match the ground truth's keys.

Every image is prompted as in training: after the checkpoint's own teacher examples (`teachers/`,
the fixed label-blind set training saved; `teachers=K` keeps the first K, 0 none). A checkpoint
saved before bbu kept teachers predicts without them, and `PredictRun.notes` says so.

Outputs are checked writable before the model is loaded (`output_paths`). An image that cannot be
predicted (unreadable, truncated, an aspect ratio the model cannot take) costs only itself: its
batch is predicted again image by image, the others are predicted, written and rendered, and the
failures come back in `PredictRun.failures`, one `Problem` per image.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbucli.errors import DataError
from bbucli.evaluation.output_paths import writable_dir, writable_file
from bbucli.evaluation.predictions import prediction_record
from bbucli.evaluation.render_detections import render_detections
from bbucli.evaluation.writers import write_bytes_atomic
from bbucli.infer.inference import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TOP_K,
    Inference,
    Prediction,
    Source,
    pick_teachers,
)
from bbucli.model.checkpoint import checkpoint_teachers
from bbucli.model.checkpoint_layout import check_folder
from bbucli.schema import Problem, Progress, write_jsonl_atomic
from bbucli.taxonomy import Taxonomy


@dataclass(frozen=True)
class PredictRun:
    """predictions: one per image predicted, in order; records: their JSONL lines; out: the JSONL
    written (None when not asked); renders: the pictures written (JPEG, original size: photos
    are large, and PNG is slow and big for them); failures: the images that could not be
    predicted (where: the path as given), in order; teachers: the teacher examples prepended
    to every prompt (image paths); notes: what the caller should say once (no teachers)."""

    predictions: tuple[Prediction, ...]
    records: tuple[dict[str, Any], ...]
    out: Path | None
    renders: tuple[Path, ...]
    source: str
    failures: tuple[Problem, ...] = ()
    teachers: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def prediction_line(prediction: Prediction) -> dict[str, Any]:
    """The predictions-JSONL line of a Prediction: `prediction_record` plus `raw` for lm answers."""
    record = prediction_record(prediction.detections)
    if prediction.answer is not None:
        record["raw"] = prediction.answer
    return record


def render_names(images: Sequence[str | Path]) -> list[str]:
    """A distinct, file-system-safe picture name per image (`<stem>.jpg`, numbered when stems repeat)."""
    names: list[str] = []
    used: set[str] = set()
    for i, image in enumerate(images):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image).stem).strip("_.") or f"image_{i}"
        name = f"{stem}.jpg"
        if name in used:
            name = f"{stem}_{i}.jpg"
        used.add(name)
        names.append(name)
    return names


#: What one bad image raises while it is read and sized (DataError: unreadable; ValueError: an
#: aspect ratio smart_resize refuses; OSError: a truncated file found while decoding).
IMAGE_ERRORS = (DataError, ValueError, OSError)


def _failure(image: str | Path, exc: Exception) -> Problem:
    """The Problem of one image, named once, as given (where), not again in the message."""
    if isinstance(exc, DataError):
        message = exc.message
        for name in (str(Path(image).absolute()), str(image)):
            message = message.replace(f" '{name}'", "").replace(f" {name}", "")
    elif isinstance(exc, ValueError):
        message = f"cannot be resized for the model: {exc}"
    else:  # OSError: found while decoding
        message = f"cannot read image: {getattr(exc, 'strerror', None) or exc}"
    return Problem(str(image), message)


def predict_each(
    inference: Inference,
    images: Sequence[str | Path],
    source: Source,
    report: Progress,
    **options: Any,
) -> tuple[list[tuple[int, Prediction]], list[Problem]]:
    """Predict `images` batch by batch; a batch that fails on an image is predicted again one
    image at a time, so only the bad images are lost: ([(index, prediction)], [failures])."""
    done: list[tuple[int, Prediction]] = []
    failures: list[Problem] = []

    def run(indices: list[int]) -> list[Prediction]:
        chunk = [images[i] for i in indices]
        found = inference.predict(chunk, sources=(source,), keys=[str(p) for p in chunk], **options)
        return found[source]

    step = inference.batch_size
    for start in range(0, len(images), step):
        indices = list(range(start, min(start + step, len(images))))
        try:
            done += zip(indices, run(indices), strict=True)
        except IMAGE_ERRORS as batch_error:
            if len(indices) == 1:
                failures.append(_failure(images[start], batch_error))
            else:
                for i in indices:
                    try:
                        done += zip([i], run([i]), strict=True)
                    except IMAGE_ERRORS as exc:
                        failures.append(_failure(images[i], exc))
        report("predict", indices[-1] + 1, len(images))
    return done, failures


def predict_images(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    *,
    out: str | Path | None = None,
    render_dir: str | Path | None = None,
    source: Source = "head",
    score_threshold: float | None = None,
    top_k: int | None = DEFAULT_TOP_K,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    device: str | None = None,
    dtype: str | None = None,
    teachers: int | None = None,
    progress: Progress | None = None,
) -> PredictRun:
    """Predict `images` (paths) with the checkpoint; write the JSONL to `out` and pictures into
    `render_dir` when given. Raises DataError for a missing image and UsageError for an output
    that cannot be written, both before loading the model; an image that cannot be predicted is
    a `failures` entry (module doc). teachers: how many of the checkpoint's teacher examples
    to prepend (None: all; 0: none); UsageError, before loading, when it stores fewer.
    progress: called as (stage, done, total) for the stages "load", "predict", "render"."""
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image not found: {missing[0]}{more}", hint="pass existing image files")
    check_folder(Path(checkpoint))  # before creating outputs for what is no checkpoint
    pick_teachers(checkpoint_teachers(checkpoint), teachers, Path(checkpoint))  # a bad K fails fast
    out_path = writable_file(out, "predictions file") if out is not None else None
    folder = writable_dir(render_dir, "render folder") if render_dir is not None else None
    report = progress or (lambda stage, done, total: None)
    report("load", 0, 1)
    inference = Inference.from_checkpoint(
        checkpoint, device=device, batch_size=batch_size, dtype=dtype, teachers=teachers
    )
    report("load", 1, 1)
    report("predict", 0, len(images))
    found, failures = predict_each(
        inference,
        images,
        source,
        report,
        score_threshold=score_threshold,
        top_k=top_k,
        max_new_tokens=max_new_tokens,
    )
    predictions = [p for _, p in found]
    records = tuple(prediction_line(p) for p in predictions)
    if out_path is not None:
        write_jsonl_atomic(out_path, records)
    renders: list[Path] = []
    if folder is not None:
        taxonomy_file = Path(checkpoint) / "taxonomy.yaml"
        taxonomy = Taxonomy.load(taxonomy_file if taxonomy_file.is_file() else None)
        names = render_names(images)
        for n, (i, p) in enumerate(found, 1):
            path = folder / names[i]
            buffer = io.BytesIO()
            render_detections(images[i], p.detections, taxonomy).save(buffer, format="JPEG", quality=90)
            write_bytes_atomic(path, buffer.getvalue())
            renders.append(path)
            report("render", n, len(found))
    return PredictRun(
        tuple(predictions),
        records,
        out_path,
        tuple(renders),
        source,
        tuple(failures),
        teachers=tuple(t.image for t in inference.teachers),
        notes=(inference.teacher_note,) if inference.teacher_note else (),
    )
