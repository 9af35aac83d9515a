"""Prediction files -> `Detections`: the bbu predictions JSONL and a COCO results JSON; and the writer
of the bbu predictions JSONL.

bbu predictions JSONL, one line per image (what `bbu predict` / `bbu eval CKPT` write):

    {"image": "images/b.jpeg", "width": 1440, "height": 1920,
     "objects": [{"bbox_2d": [x1, y1, x2, y2], "desc": "type/property/state", "score": 0.93}],
     "source": "head", "unparseable": false}

- `image`: the ground-truth image key (bbu JSONL: the student image path as it lists it; COCO:
  `file_name`); a bare file name works when it is unique.
- `width`/`height` (optional, together): the frame of `bbox_2d`, e.g. the original photo; the
  boxes are scaled into the ground truth's frame. Omitted: boxes are already in that frame.
- `bbox_2d`: xyxy pixels, numbers (not necessarily integers). `score`: any finite number,
  higher is more confident (objectness for `head`, mean token log-probability for `lm`);
  optional, a missing score ranks as 1.0 (reported).
- `source`: "head" or "lm" (default "head"); `unparseable`: the answer could not be parsed
  (default false); `raw` (optional): the generated text, ignored here.

COCO results JSON: `[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]`, ids of the
ground truth (for a bbu JSONL GT: image id = 1-based episode order, category ids = sorted descs,
the ids of the `gt_coco.json` that `bbu eval` writes).

Each malformed line or object is reported by `file:line` (`file: [i]` for COCO results) and
skipped; the rest is read. Unknown images, unknown categories and boxes outside the image are
checked when scoring (`evaluate`), which names the same `file:line`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbucli.errors import DataError
from bbucli.evaluation.types import SOURCES, Detections, GroundTruth
from bbucli.schema import Problem, write_jsonl_atomic

LINE_KEYS = {"image", "width", "height", "objects", "source", "unparseable", "raw"}
OBJECT_KEYS = {"bbox_2d", "desc", "score"}


@dataclass(frozen=True)
class PredictionSet:
    """Predictions read from a file, what was wrong in it, and its format ("bbu-jsonl" or "coco")."""

    detections: tuple[Detections, ...]
    problems: tuple[Problem, ...]
    format: str


def read_predictions(path: str | Path, ground_truth: GroundTruth) -> PredictionSet:
    """Read a bbu predictions JSONL or a COCO results JSON (a JSON array), told apart by content."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read predictions {path}: {exc}", hint="pass a predictions JSONL or a COCO results JSON") from exc
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})",
                hint="a COCO results file is one JSON array of {image_id, category_id, bbox, score}",
            ) from None
        return predictions_from_coco(data, ground_truth, source=path)
    # split on "\n" only: str.splitlines also breaks at U+2028 etc., which JSON strings may hold raw
    return parse_predictions_jsonl(text.split("\n"), source=path)


# ---- bbu predictions JSONL -----------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _object(raw: Any, at: str, problems: list[Problem]) -> tuple[list[float], str, float | None] | None:
    if not isinstance(raw, Mapping):
        problems.append(Problem(at, f"must be an object, got {type(raw).__name__}; skipped"))
        return None
    box = raw.get("bbox_2d")
    coords = [_number(v) for v in box] if isinstance(box, list) and len(box) == 4 else None
    if coords is None or None in coords:
        problems.append(Problem(at, f"bbox_2d must be 4 finite numbers, got {box!r}; skipped"))
        return None
    if coords[2] <= coords[0] or coords[3] <= coords[1]:  # type: ignore[operator]
        problems.append(Problem(at, f"bbox_2d must be xyxy with x2 > x1 and y2 > y1, got {box!r}; skipped"))
        return None
    desc = raw.get("desc")
    if not isinstance(desc, str) or not desc.strip():
        problems.append(Problem(at, f"desc must be a non-empty string, got {desc!r}; skipped"))
        return None
    score = raw.get("score")
    if score is not None and _number(score) is None:
        problems.append(Problem(at, f"score must be a finite number, got {score!r}; skipped"))
        return None
    extra = sorted(set(raw) - OBJECT_KEYS)
    if extra:
        problems.append(Problem(at, f"unknown keys {extra} ignored"))
    return coords, desc.strip(), (None if score is None else float(score))  # type: ignore[return-value]


def _frame(record: Mapping[str, Any], where: str, problems: list[Problem]) -> tuple[float, float] | None:
    if "width" not in record and "height" not in record:
        return None
    w, h = _number(record.get("width")), _number(record.get("height"))
    if w is None or h is None or w <= 0 or h <= 0:
        problems.append(Problem(where, "width and height must both be positive numbers; boxes taken as in the ground truth's frame"))
        return None
    return w, h


def parse_predictions_line(text: str, where: str, problems: list[Problem]) -> Detections | None:
    """One JSONL line -> Detections (bad objects dropped and reported), or None when unusable."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(Problem(where, f"invalid JSON: {exc.msg} at column {exc.colno}; line skipped"))
        return None
    if not isinstance(record, Mapping):
        problems.append(Problem(where, f"a line must be a JSON object, got {type(record).__name__}; line skipped"))
        return None
    image = record.get("image")
    if not isinstance(image, str) or not image:
        problems.append(Problem(where, "missing `image` (the ground-truth image path); line skipped"))
        return None
    extra = sorted(set(record) - LINE_KEYS)
    if extra:
        problems.append(Problem(where, f"unknown keys {extra} ignored (expected {sorted(LINE_KEYS)})"))
    source = record.get("source", "head")
    if source not in SOURCES:
        problems.append(Problem(where, f"source must be one of {list(SOURCES)}, got {source!r}; read as 'head'"))
        source = "head"
    unparseable = record.get("unparseable", False)
    if not isinstance(unparseable, bool):
        problems.append(Problem(where, f"unparseable must be true or false, got {unparseable!r}; read as false"))
        unparseable = False
    objects = record.get("objects", [])
    if not isinstance(objects, list):
        problems.append(Problem(where, f"objects must be a list, got {type(objects).__name__}; no objects read"))
        objects = []
    parsed = [_object(o, f"{where}: objects[{i}]", problems) for i, o in enumerate(objects)]
    kept = [p for p in parsed if p is not None]
    unscored = sum(p[2] is None for p in kept)
    if unscored:
        problems.append(Problem(where, f"{unscored} object(s) without a score rank as 1.0"))
    return Detections(
        image=image,
        boxes_px=np.asarray([p[0] for p in kept], dtype=np.float64).reshape(-1, 4),
        descs=tuple(p[1] for p in kept),
        scores=np.asarray([1.0 if p[2] is None else p[2] for p in kept], dtype=np.float64),
        image_wh=_frame(record, where, problems),
        source=source,
        unparseable=unparseable,
        origin=where,
    )


def parse_predictions_jsonl(lines: Iterable[str], source: str | Path = "<predictions>") -> PredictionSet:
    """Every non-blank line of a predictions JSONL; bad lines and objects reported by file:line."""
    problems: list[Problem] = []
    detections: list[Detections] = []
    for line_no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        det = parse_predictions_line(text, f"{source}:{line_no}", problems)
        if det is not None:
            detections.append(det)
    return PredictionSet(tuple(detections), tuple(problems), "bbu-jsonl")


# ---- COCO results --------------------------------------------------------------------------------


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def predictions_from_coco(data: Any, ground_truth: GroundTruth, source: str | Path = "<results>") -> PredictionSet:
    """A decoded COCO results array -> one Detections per image id (in the GT's scoring frame).

    Image ids are looked up in the ground truth; a category id it does not know keeps the name
    `category_id=<id>`, so scoring reports it and counts it as a false positive.
    """
    if not isinstance(data, list):
        raise DataError(f"{source}: a COCO results file must be a JSON array", hint="[{image_id, category_id, bbox: [x, y, w, h], score}, ...]")
    key_of = {image.image_id: image.key for image in ground_truth.images}
    name_of = {c.id: c.desc for c in ground_truth.categories}
    problems: list[Problem] = []
    grouped: dict[Any, dict[str, list]] = {}
    for i, entry in enumerate(data):
        at = f"{source}: [{i}]"
        if not isinstance(entry, Mapping):
            problems.append(Problem(at, f"must be an object, got {type(entry).__name__}; skipped"))
            continue
        bbox = entry.get("bbox")
        xywh = [_number(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else None
        if xywh is None or None in xywh or xywh[2] <= 0 or xywh[3] <= 0:  # type: ignore[operator]
            problems.append(Problem(at, f"bbox must be [x, y, w, h] with w, h > 0, got {bbox!r}; skipped"))
            continue
        score = _number(entry.get("score"))
        if score is None:
            problems.append(Problem(at, f"score must be a finite number, got {entry.get('score')!r}; skipped"))
            continue
        image_id, category_id = entry.get("image_id"), entry.get("category_id")
        if not _is_id(image_id) or image_id not in key_of:
            problems.append(Problem(at, f"image_id {image_id!r} is not in the ground truth; skipped"))
            continue
        group = grouped.setdefault(image_id, {"boxes": [], "descs": [], "scores": [], "first": i})
        x, y, w, h = xywh  # type: ignore[misc]
        group["boxes"].append((x, y, x + w, y + h))
        known = name_of.get(category_id) if _is_id(category_id) else None
        group["descs"].append(known or f"category_id={category_id}")
        group["scores"].append(score)
    detections = tuple(
        Detections(
            image=key_of[image_id],
            boxes_px=np.asarray(g["boxes"], dtype=np.float64),
            descs=tuple(g["descs"]),
            scores=np.asarray(g["scores"], dtype=np.float64),
            origin=f"{source}: image_id {image_id}",
        )
        for image_id, g in grouped.items()
    )
    return PredictionSet(detections, tuple(problems), "coco")


# ---- writing -------------------------------------------------------------------------------------


def prediction_record(det: Detections) -> dict[str, Any]:
    """The predictions-JSONL line of one Detections (floats rounded to 0.01 px / 1e-6)."""
    record: dict[str, Any] = {"image": det.image}
    if det.image_wh is not None:
        record["width"], record["height"] = (round(v, 2) for v in det.image_wh)
    record["objects"] = [
        {"bbox_2d": [round(float(v), 2) for v in box], "desc": desc, "score": round(float(score), 6)}
        for box, desc, score in zip(det.boxes_px, det.descs, det.scores, strict=True)
    ]
    record["source"] = det.source
    record["unparseable"] = det.unparseable
    return record


def write_predictions_jsonl(path: str | Path, detections: Iterable[Detections]) -> int:
    """Write predictions as a bbu predictions JSONL, atomically; returns the number of lines."""
    return write_jsonl_atomic(path, (prediction_record(d) for d in detections))
