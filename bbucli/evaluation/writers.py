"""The `eval/` folder, every file written atomically (a temporary file renamed into place):

    metrics.json       EvalResult.to_dict()
    results_coco.json  the scored predictions as a COCO results list (ids of the ground truth)
    gt_coco.json       the ground truth as COCO instances (only for a bbu JSONL ground truth: the
                       ids results_coco.json refers to; image id = episode order, categories = descs)
    per_class.csv      one row per category (predicted ones the ground truth lacks last, no AP):
                       AP, AP50, AP75, counts and P/R/F1 at the threshold
    confusion.csv      ground truth (rows) x prediction (columns), background last
    pr_curve.png       precision-recall curves at IoU 0.5 and 0.5:0.95, per category and mean
    overlays/NN_<image>.png  the worst images (most errors at the threshold), ground truth vs
                       predictions; images whose file is missing are skipped
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from pathlib import Path

from PIL import Image

from bbucli.evaluation.align import EMPTY
from bbucli.evaluation.evaluate import coco_inputs, views
from bbucli.evaluation.operating_point import ImageArrays, category_index
from bbucli.evaluation.plots import ascii_label, render_overlay, render_pr_curves
from bbucli.evaluation.render_detections import ascii_desc
from bbucli.evaluation.result import EvalResult
from bbucli.evaluation.types import GroundTruth
from bbucli.schema import new_file_mode, write_json_atomic, write_text_atomic
from bbucli.taxonomy import Taxonomy

OVERLAYS = 8
_OVERLAY_NAME = re.compile(r"^\d{2}_.*\.png$")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes so that readers see the old file or the whole new one; the file gets the
    umask's mode (`new_file_mode`), not the temporary file's 0o600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.chmod(tmp, new_file_mode())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_png_atomic(path: Path, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    write_bytes_atomic(path, buffer.getvalue())


def _compact_json(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def _csv(rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows([["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in row] for row in rows])
    return buffer.getvalue()


def per_class_rows(result: EvalResult) -> list[list[object]]:
    """The per-class table: a header and one row per category."""
    header = ["category_id", "desc", "defect", "gt", "predictions", "AP", "AP50", "AP75", "tp", "fp", "fn", "precision", "recall", "f1"]
    return [header] + [
        [m.category_id, m.desc, m.defect, m.gt, m.predictions, m.ap, m.ap50, m.ap75, m.tp, m.fp, m.fn, m.precision, m.recall, m.f1]
        for m in result.per_class
    ]


def _safe_name(key: str, fallback: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key).stem).strip("_.")
    return stem[:80] or f"image_{fallback}"


def write_overlays(folder: Path, result: EvalResult, ground_truth: GroundTruth, taxonomy: Taxonomy | None = None, limit: int = OVERLAYS) -> list[Path]:
    """Overlay PNGs of the `limit` worst images whose file exists; old overlays are replaced."""
    if folder.is_dir():
        for old in folder.iterdir():
            if _OVERLAY_NAME.match(old.name):
                old.unlink()
    index = category_index(ground_truth, result.scored)
    labels = {c.desc: ascii_label(c, taxonomy) for c in ground_truth.categories}
    for n, desc in enumerate(d for d in index if d not in labels):
        labels[desc] = ascii_desc(desc, taxonomy, f"unknown {n + 1}")
    threshold = result.operating_point.threshold
    written: list[Path] = []
    for worst in result.worst_images:
        if len(written) >= limit:
            break
        i = ground_truth.index(worst.image)
        image = ground_truth.images[i]  # type: ignore[index]
        if image.file is None:
            continue
        preds = result.scored[i]  # type: ignore[index]
        arrays = ImageArrays.build(image, preds, index)
        keep = arrays.kept(threshold)
        at = "no predictions kept" if threshold is None else f"score >= {threshold:.3g}"
        caption = f"{image.key}  tp {worst.tp}  fp {worst.fp}  fn {worst.fn}  ({at})"
        picture = render_overlay(image.file, image, preds, keep, arrays.match(keep), labels, caption)
        if picture is None:
            continue
        path = folder / f"{len(written) + 1:02d}_{_safe_name(image.key, image.image_id)}.png"
        write_png_atomic(path, picture)
        written.append(path)
    return written


def write_eval_dir(
    out_dir: str | Path,
    result: EvalResult,
    ground_truth: GroundTruth,
    *,
    taxonomy: Taxonomy | None = None,
    overlays: int = OVERLAYS,
) -> dict[str, Path]:
    """Write every file of the module doc into `out_dir`; returns {name: path} of what was written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    write_json_atomic(out / "metrics.json", result.to_dict())
    written["metrics"] = out / "metrics.json"
    label, categories = views(ground_truth)["classes"]
    scored = result.scored or (EMPTY,) * len(ground_truth.images)
    gt_dict, results = coco_inputs(ground_truth, scored, label, categories)
    write_text_atomic(out / "results_coco.json", _compact_json(results))
    written["results_coco"] = out / "results_coco.json"
    if ground_truth.format != "coco":
        write_text_atomic(out / "gt_coco.json", _compact_json(gt_dict))
        written["gt_coco"] = out / "gt_coco.json"
    write_text_atomic(out / "per_class.csv", _csv(per_class_rows(result)))
    written["per_class"] = out / "per_class.csv"
    labels = list(result.confusion.labels)
    confusion = [["ground truth \\ prediction", *labels]] + [[lab, *row] for lab, row in zip(labels, result.confusion.counts, strict=True)]
    write_text_atomic(out / "confusion.csv", _csv(confusion))
    written["confusion"] = out / "confusion.csv"
    write_png_atomic(out / "pr_curve.png", render_pr_curves(result, ground_truth.categories, taxonomy))
    written["pr_curve"] = out / "pr_curve.png"
    for n, path in enumerate(write_overlays(out / "overlays", result, ground_truth, taxonomy, overlays), 1):
        written[f"overlay_{n}"] = path
    return written
