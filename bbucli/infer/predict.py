"""`bbu predict CKPT IMAGES...`: a checkpoint's detections on image files, as a predictions JSONL and
as pictures.

The JSONL is the bbu predictions format (`bbucli.evaluation.predictions`), one line per image:
`image` is the path as given, `width`/`height` the upright original image's size (the frame of
`bbox_2d`), and lines of the `lm` source also carry `raw`, the generated text. It can be scored
later with `bbu eval preds.jsonl --data GT` when the paths match the ground truth's keys.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbucli.errors import DataError
from bbucli.evaluation.predictions import prediction_record
from bbucli.evaluation.render_detections import render_detections
from bbucli.evaluation.writers import write_bytes_atomic
from bbucli.infer.inference import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TOP_K,
    Inference,
    Prediction,
    Source,
)
from bbucli.schema import Progress, write_jsonl_atomic
from bbucli.taxonomy import Taxonomy


@dataclass(frozen=True)
class PredictRun:
    """predictions: one per image, in order; records: their JSONL lines; out: the JSONL written
    (None when not asked); renders: the pictures written (JPEG, original size: photos
    are large, and PNG is slow and big for them)."""

    predictions: tuple[Prediction, ...]
    records: tuple[dict[str, Any], ...]
    out: Path | None
    renders: tuple[Path, ...]
    source: str


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
    progress: Progress | None = None,
) -> PredictRun:
    """Predict `images` (paths) with the checkpoint; write the JSONL to `out` and pictures into
    `render_dir` when given. Raises DataError for a missing image before loading the model.
    progress: called as (stage, done, total) for the stages "load", "predict", "render"."""
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image not found: {missing[0]}{more}", hint="pass existing image files")
    report = progress or (lambda stage, done, total: None)
    report("load", 0, 1)
    inference = Inference.from_checkpoint(
        checkpoint, device=device, batch_size=batch_size, dtype=dtype
    )
    report("load", 1, 1)
    report("predict", 0, len(images))
    found = inference.predict(
        list(images),
        sources=(source,),
        score_threshold=score_threshold,
        top_k=top_k,
        max_new_tokens=max_new_tokens,
        keys=[str(p) for p in images],
        progress=report,
    )
    predictions = found[source]
    records = tuple(prediction_line(p) for p in predictions)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        write_jsonl_atomic(out_path, records)
    renders: list[Path] = []
    if render_dir is not None:
        folder = Path(render_dir)
        taxonomy_file = Path(checkpoint) / "taxonomy.yaml"
        taxonomy = Taxonomy.load(taxonomy_file if taxonomy_file.is_file() else None)
        for n, (image, name, p) in enumerate(
            zip(images, render_names(images), predictions, strict=True), 1
        ):
            path = folder / name
            buffer = io.BytesIO()
            render_detections(image, p.detections, taxonomy).save(buffer, format="JPEG", quality=90)
            write_bytes_atomic(path, buffer.getvalue())
            renders.append(path)
            report("render", n, len(images))
    return PredictRun(tuple(predictions), records, out_path, tuple(renders), source)
