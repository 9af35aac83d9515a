"""Ground-truth readers: a bbu JSONL split or a COCO instances JSON -> `GroundTruth`.

bbu JSONL: the *student* of each episode is the scored image; key = its image path as written
(relative to the JSONL's folder); boxes stay in stored-image pixels; image ids are 1-based line
order of the episodes kept; categories are the descs that occur, ids 1.. in sorted order.

COCO instances: image ids, category ids and names, `area` and `iscrowd` are kept as given; only
annotation ids are replaced later (COCOeval treats id 0 as "unmatched"). Key = `file_name`
(`str(id)` where it has none).

A malformed record is reported (`file:line` or `file: annotations[i]`) and skipped; the rest is read.
`read_split` also keeps each scored image's episode (its teachers), so that a checkpoint evaluation
reads the file once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bbucli.errors import DataError
from bbucli.evaluation.types import Category, GroundTruth, GroundTruthImage
from bbucli.schema import Episode, Problem, RecordError, iter_episodes


@dataclass(frozen=True)
class Split:
    """A ground truth as read, with the episode of each scored image by its key (a bbu JSONL: the
    first episode of each student image, paths relative to the JSONL's folder; COCO: none)."""

    ground_truth: GroundTruth
    episodes: Mapping[str, Episode] = field(default_factory=dict)


def read_split(path: str | Path) -> Split:
    """Read a bbu JSONL or a COCO instances JSON (told apart by content), reporting bad records."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ground truth {path} does not exist", hint="pass --data with a JSONL split from `bbu convert` or a COCO instances JSON")
    data = _whole_json(path)
    if isinstance(data, Mapping) and "images" in data:
        return Split(ground_truth_from_coco(data, source=path))
    return _bbu_jsonl(path)


def read_ground_truth(path: str | Path) -> GroundTruth:
    """`read_split` without the episodes."""
    return read_split(path).ground_truth


def _whole_json(path: Path) -> Any:
    """The file as one JSON document, or None when it is not one (e.g. JSONL)."""
    with path.open("rb") as handle:
        head = handle.read(64).lstrip()
    if not head.startswith(b"{"):
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _image_size(file: Path) -> tuple[int, int] | None:
    """(width, height) from the image header only; None when the file is missing or unreadable."""
    try:
        with Image.open(file) as image:
            return image.size
    except (OSError, ValueError):
        return None


def read_bbu_jsonl(path: str | Path) -> GroundTruth:
    """Ground truth from a canonical JSONL split: one image per episode (its student)."""
    return _bbu_jsonl(Path(path)).ground_truth


def _bbu_jsonl(path: Path) -> Split:
    root = path.parent
    episodes: dict[str, Episode] = {}
    images: list[GroundTruthImage] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    missing: list[str] = []
    for line, item in iter_episodes(path):
        if isinstance(item, RecordError):
            problems.append(Problem(f"{path}:{line}", f"{item.message}; record skipped"))
            continue
        sample = item.student
        if sample.image in seen:
            problems.append(Problem(f"{path}:{line}", f"student image {sample.image} already scored at line {seen[sample.image]}; record skipped"))
            continue
        seen[sample.image] = line
        episodes[sample.image] = item
        file = root / sample.image
        wh = _image_size(file)
        if wh is None:
            missing.append(sample.image)
        images.append(
            GroundTruthImage.simple(
                sample.image,
                len(images) + 1,
                [o.bbox_2d for o in sample.objects],
                [o.desc for o in sample.objects],
                image_wh=wh,
                file=file if wh is not None else None,
            )
        )
    if missing:
        problems.append(Problem(
            str(path),
            f"{len(missing)} image(s) not found or unreadable under {root} (first: {missing[0]}): "
            "their size is unknown, so boxes outside them are not checked and no overlays are drawn",
        ))
    if not images:
        raise DataError(f"{path} holds no usable episode", hint="pass the .val.jsonl split written by `bbu convert`")
    ground_truth = GroundTruth.from_images(images, format="bbu-jsonl", source=path, problems=tuple(problems))
    return Split(ground_truth, episodes)


# ---- COCO instances ------------------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _categories(data: Mapping[str, Any], where: str, problems: list[Problem]) -> tuple[list[Category], dict[int, str]]:
    categories: list[Category] = []
    name_of: dict[int, str] = {}
    by_name: dict[str, int] = {}
    for i, cat in enumerate(data.get("categories") or []):
        cid = _int_id(cat.get("id")) if isinstance(cat, Mapping) else None
        name = cat.get("name") if isinstance(cat, Mapping) else None
        if cid is None or not isinstance(name, str) or not name:
            problems.append(Problem(f"{where}: categories[{i}]", "needs an integer id and a non-empty name; skipped"))
            continue
        if cid in name_of:
            problems.append(Problem(f"{where}: categories[{i}]", f"id {cid} is used twice; skipped"))
            continue
        if name in by_name:
            problems.append(Problem(f"{where}: categories[{i}]", f"name {name!r} already has id {by_name[name]}; id {cid} is scored as it"))
            name_of[cid] = name
            continue
        by_name[name] = cid
        name_of[cid] = name
        categories.append(Category(cid, name))
    return categories, name_of


def _coco_images(data: Mapping[str, Any], where: str, root: Path | None, problems: list[Problem]) -> dict[int, dict[str, Any]]:
    images: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(data.get("images") or []):
        iid = _int_id(img.get("id")) if isinstance(img, Mapping) else None
        if iid is None:
            problems.append(Problem(f"{where}: images[{i}]", "needs an integer id; skipped"))
            continue
        if iid in images:
            problems.append(Problem(f"{where}: images[{i}]", f"image id {iid} is listed twice; skipped"))
            continue
        w, h = _finite(img.get("width")), _finite(img.get("height"))
        name = img.get("file_name")
        key = name if isinstance(name, str) and name else str(iid)
        file = None
        if root is not None and isinstance(name, str) and name:
            for candidate in (root / name, root / "images" / name):
                if candidate.is_file():
                    file = candidate
                    break
        wh = (int(w), int(h)) if w and h and w > 0 and h > 0 else None
        images[iid] = {"key": key, "wh": wh, "file": file, "boxes": [], "descs": [], "areas": [], "crowd": []}
    return images


def ground_truth_from_coco(data: Mapping[str, Any], source: Path | None = None) -> GroundTruth:
    """Ground truth from a decoded COCO instances document (ids, area, iscrowd as given)."""
    where = str(source) if source is not None else "coco"
    problems: list[Problem] = []
    categories, name_of = _categories(data, where, problems)
    images = _coco_images(data, where, source.parent if source is not None else None, problems)
    if not images:
        raise DataError(f"{where} lists no usable image", hint="a COCO instances JSON needs `images` with integer ids")
    for i, ann in enumerate(data.get("annotations") or []):
        at = f"{where}: annotations[{i}]"
        if not isinstance(ann, Mapping):
            problems.append(Problem(at, "must be an object; skipped"))
            continue
        image = images.get(_int_id(ann.get("image_id")))  # type: ignore[arg-type]
        if image is None:
            problems.append(Problem(at, f"image_id {ann.get('image_id')!r} is not in `images`; skipped"))
            continue
        name = name_of.get(_int_id(ann.get("category_id")))  # type: ignore[arg-type]
        if name is None:
            problems.append(Problem(at, f"category_id {ann.get('category_id')!r} is not in `categories`; skipped"))
            continue
        bbox = ann.get("bbox")
        xywh = [_finite(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else None
        if xywh is None or None in xywh or xywh[2] <= 0 or xywh[3] <= 0:  # type: ignore[operator]
            problems.append(Problem(at, f"bbox must be [x, y, w, h] with w, h > 0, got {bbox!r}; skipped"))
            continue
        x, y, w, h = xywh  # type: ignore[misc]
        area = ann.get("area")
        if area is None:
            area = w * h
        elif _finite(area) is None or area < 0:
            problems.append(Problem(at, f"area {area!r} is not a number >= 0; the box area is used"))
            area = w * h
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1, False, True):
            problems.append(Problem(at, f"iscrowd {crowd!r} is not 0 or 1; scored as 0"))
            crowd = 0
        image["boxes"].append((x, y, x + w, y + h))
        image["descs"].append(name)
        image["areas"].append(float(area))
        image["crowd"].append(bool(crowd))
    gt_images = tuple(
        GroundTruthImage(
            img["key"], iid, np.asarray(img["boxes"], dtype=np.float64).reshape(-1, 4), tuple(img["descs"]),
            np.asarray(img["areas"], dtype=np.float64), np.asarray(img["crowd"], dtype=bool), img["wh"], img["file"],
        )
        for iid, img in images.items()
    )
    keys = [image.key for image in gt_images]
    if len(set(keys)) != len(keys):
        problems.append(Problem(where, "some images share a file_name: predictions naming it go to the first"))
    return GroundTruth(gt_images, tuple(categories), format="coco", source=source, problems=tuple(problems))
