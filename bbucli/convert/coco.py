"""Reader for a COCO instances JSON: one file -> one `RawImage` per entry of `images`.

    {"images": [{"id": 1, "file_name": "a.jpg", "width": 1440, "height": 1920}],
     "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [x, y, w, h]}],
     "categories": [{"id": 3, "name": "连接点（螺丝）/BBU安装螺丝/连接正确"}]}

Frame: `bbox` is xywh in original pixels of the frame `width/height` declare (the pipeline checks
it against the EXIF-upright image); it becomes xyxy here. An annotation without a usable `bbox`
falls back to the bbox of its polygon `segmentation`. The label is the category's `name`.
`file_name` is resolved by discovery (relative to the JSON's folder, its `images/`, or by stem).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bbucli.convert.raw import (
    Issue,
    RawImage,
    RawObject,
    ReadResult,
    box_from_points,
    finite_number,
    is_zero_area,
    positive_size,
)

FORMAT = "coco"


def is_coco(data: Any) -> bool:
    """True when a decoded JSON document looks like a COCO instances file."""
    return isinstance(data, Mapping) and "images" in data and "annotations" in data


def _box(ann: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """xyxy box of one annotation from `bbox` (xywh), else from its polygon segmentation."""
    bbox = ann.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4:
        x, y, w, h = (finite_number(v) for v in bbox)
        if None not in (x, y, w, h):
            return x, y, x + w, y + h  # type: ignore[operator]
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg):
        flat = [finite_number(v) for poly in seg for v in poly]
        if len(flat) >= 4 and len(flat) % 2 == 0 and None not in flat:
            return box_from_points(list(zip(flat[0::2], flat[1::2], strict=True)))  # type: ignore[arg-type]
    return None


def _categories(data: Mapping[str, Any]) -> dict[Any, str]:
    names: dict[Any, str] = {}
    for cat in data.get("categories") or []:
        if isinstance(cat, Mapping) and isinstance(cat.get("name"), str) and cat["name"].strip():
            names[cat.get("id")] = cat["name"]
    return names


def read_coco(data: Mapping[str, Any], annotation_path: Path, rel: str) -> ReadResult:
    """Read one COCO file (already decoded). `rel` names the file in issues."""
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        return ReadResult(issues=(Issue("bad_record", rel, "images and annotations must be lists"),))
    issues: list[Issue] = []
    categories = _categories(data)
    entries: dict[Any, Mapping[str, Any]] = {}
    for i, entry in enumerate(images):
        name = entry.get("file_name") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not name or "id" not in entry:
            issues.append(Issue("bad_record", rel, f"images[{i}]: needs id and file_name"))
        elif entry["id"] in entries:
            issues.append(Issue("bad_record", rel, f"images[{i}]: image id {entry['id']!r} used twice"))
        else:
            entries[entry["id"]] = entry
    objects: dict[Any, list[RawObject]] = {image_id: [] for image_id in entries}
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        if not isinstance(ann, Mapping) or ann.get("image_id") not in entries:
            image_id = ann.get("image_id") if isinstance(ann, Mapping) else None
            issues.append(Issue("bad_record", rel, f"{where}: no image with id {image_id!r}", 1))
            continue
        file_name = entries[ann["image_id"]]["file_name"]
        label = categories.get(ann.get("category_id"))
        shown = f"{file_name}: {label or ann.get('category_id')!r}"
        box = _box(ann)
        if box is None:
            issues.append(Issue("bad_polygon", rel, f"{where} ({shown}): unusable bbox {ann.get('bbox')!r}", 1))
            continue
        if is_zero_area(box):
            issues.append(Issue("zero_area", rel, f"{where} ({shown}): bbox {ann.get('bbox')!r}", 1))
            continue
        if label is None:
            issues.append(Issue("missing_label", rel, f"{where} ({file_name}): category_id {ann.get('category_id')!r} has no name", 1))
            continue
        attrs = {k: ann[k] for k in ("id", "iscrowd") if k in ann}
        objects[ann["image_id"]].append(RawObject(box, label, attrs, ref=where))
    raws = []
    for image_id, entry in entries.items():
        size = positive_size(entry.get("width"), entry.get("height"))
        raws.append(
            RawImage(
                annotation_path=annotation_path,
                image_path=None,
                width=size[0] if size else None,
                height=size[1] if size else None,
                objects=tuple(objects[image_id]),
                fmt=FORMAT,
                image_ref=entry["file_name"],
            )
        )
    return ReadResult(images=tuple(raws), issues=tuple(issues))
