"""Reader for Labelme JSON: one file per image, `shapes[*]` rectangles and polygons.

    {"shapes": [{"label": "...", "points": [[x, y], ...], "shape_type": "rectangle"|"polygon"}],
     "imagePath": "a.jpg", "imageWidth": 1440, "imageHeight": 1920, "imageData": null}

Frame: points are original pixels of the image Labelme displayed, which is EXIF-upright (Labelme
applies EXIF orientation on load); `imageWidth/imageHeight` declare it. A rectangle is its two
corners in any order; a polygon's bbox is the min/max of its points. Circles, lines and points are
reported as `unsupported_shape`.
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
    is_zero_area,
    parse_point,
    positive_size,
)

FORMAT = "labelme"
BOX_SHAPES = {"rectangle", "polygon"}


def is_labelme(data: Any) -> bool:
    """True when a decoded JSON document looks like a Labelme file."""
    return isinstance(data, Mapping) and "shapes" in data and ("imagePath" in data or "imageWidth" in data)


def _attrs(shape: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for key in ("group_id", "description", "flags"):
        value = shape.get(key)
        if value not in (None, "", {}, []):
            attrs[key] = value
    return attrs


def read_labelme(data: Mapping[str, Any], annotation_path: Path, rel: str) -> ReadResult:
    """Read one Labelme file (already decoded). `rel` names the file in issues."""
    shapes = data.get("shapes")
    if not isinstance(shapes, list):
        return ReadResult(issues=(Issue("bad_record", rel, "shapes is not a list"),))
    objects: list[RawObject] = []
    issues: list[Issue] = []
    for i, shape in enumerate(shapes):
        where = f"shapes[{i}]"
        if not isinstance(shape, Mapping):
            issues.append(Issue("bad_polygon", rel, f"{where}: not an object", 1))
            continue
        label = shape.get("label")
        label = label if isinstance(label, str) and label.strip() else None
        shown = label or "<no label>"
        kind = shape.get("shape_type") or "polygon"
        if kind not in BOX_SHAPES:
            issues.append(Issue("unsupported_shape", rel, f"{where} ({shown}): shape_type {kind!r}", 1))
            continue
        raw_points = shape.get("points")
        points = [parse_point(p) for p in raw_points] if isinstance(raw_points, list) else [None]
        if not points or any(p is None for p in points) or len(set(points)) < 2:
            issues.append(Issue("bad_polygon", rel, f"{where} ({shown}): unusable points {str(raw_points)[:80]}", 1))
            continue
        box = box_from_points(points)  # type: ignore[arg-type]
        if is_zero_area(box):
            issues.append(Issue("zero_area", rel, f"{where} ({shown}): box {list(box)}", 1))
            continue
        if label is None:
            issues.append(Issue("missing_label", rel, f"{where}: empty label", 1))
            continue
        objects.append(RawObject(box, label, _attrs(shape), ref=where))
    size = positive_size(data.get("imageWidth"), data.get("imageHeight"))
    image_ref = data.get("imagePath") if isinstance(data.get("imagePath"), str) else None
    image = RawImage(
        annotation_path=annotation_path,
        image_path=None,
        width=size[0] if size else None,
        height=size[1] if size else None,
        objects=tuple(objects),
        fmt=FORMAT,
        image_ref=image_ref or None,
    )
    return ReadResult(images=(image,), issues=tuple(issues))
