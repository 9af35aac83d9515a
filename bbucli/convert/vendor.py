"""Reader for the annotation platform's vendor export ("markResult", and its legacy `dataList`).

    {"info": {"width": 1440, "height": 1920, ...},
     "markResult": {"features": [
        {"geometry": {"type": "ExtentPolygon", "coordinates": [[[x, y], [x, y], ..., [x, y]]]},
         "properties": {"contentZh": {"标签": "连接点（螺丝）/BBU安装螺丝/连接正确", ...},
                        "content": {"label": "connection_point/install_screw/install_screw_true"},
                        "question": ["untight"], "question_ex": "..."}}]},
     "statistcs": ..., "qualityResult": ..., "workload": ...}

Legacy variant: a top-level `dataList` whose items hold two corner points in `coordinates` (and
the same label fields, at the item's top level or under `properties`).

Frame: coordinates are original pixels of the frame `info.width/height` declares (the
EXIF-upright photo, per the platform; the pipeline checks it). A ring's bbox is the min/max of its
points. `coordinates` is normally a GeoJSON polygon (`[ring]`) or a bare ring; one level deeper
(`[[ring]]`) is accepted and noted, an unclosed ring too. `markResult` (or `info`) given as a JSON string is decoded. Bloat keys are
ignored.
"""

from __future__ import annotations

import json
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

FORMAT = "vendor"
ZH_LABEL_KEY = "标签"


def is_vendor(data: Any) -> bool:
    """True when a decoded JSON document looks like a vendor export."""
    return isinstance(data, Mapping) and ("markResult" in data or "dataList" in data)


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _is_point_like(value: Any) -> bool:
    if isinstance(value, Mapping):
        return True
    return isinstance(value, list) and not any(isinstance(v, (list, Mapping)) for v in value)


def _ring_points(coords: Any) -> tuple[list[tuple[float, float]] | None, list[str]]:
    """Points of a ring given as `coordinates`, with notes (`nested_polygon`, `unclosed_ring`).

    Accepts a bare ring, a GeoJSON polygon (`[ring, ...]`, the usual form) and the same nested
    one level deeper (`[[ring]]`, noted); every ring's points count (an outer ring contains its
    holes, so the bbox is the outer ring's). None when any point is unusable or fewer than two
    distinct points remain.
    """
    notes: list[str] = []
    rings: list[Any] = [coords]
    depth = 0
    while True:
        if not all(isinstance(r, list) and r for r in rings):
            return None, notes
        if all(_is_point_like(p) for r in rings for p in r):
            break
        if depth == 3 or not all(isinstance(p, list) for r in rings for p in r):
            return None, notes
        rings = [inner for r in rings for inner in r]
        depth += 1
    if depth >= 2:
        notes.append("nested_polygon")
    points: list[tuple[float, float]] = []
    for ring in rings:
        pts = [parse_point(p) for p in ring]
        if any(p is None for p in pts):
            return None, notes
        if len(pts) >= 3 and pts[0] != pts[-1] and "unclosed_ring" not in notes:
            notes.append("unclosed_ring")
        points += pts  # type: ignore[arg-type]
    if len(set(points)) < 2:
        return None, notes
    return points, notes


def _labels(props: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...], dict[str, Any]]:
    """(primary label, fallback labels, extra attributes) of one feature's properties."""
    zh = _maybe_json(props.get("contentZh"))
    en = _maybe_json(props.get("content"))
    zh = zh if isinstance(zh, Mapping) else {}
    en = en if isinstance(en, Mapping) else {}
    candidates: list[str] = []
    for value in (zh.get(ZH_LABEL_KEY), en.get("label"), props.get("label")):
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, str)), None)
        if isinstance(value, str) and value.strip() and value not in candidates:
            candidates.append(value)
    attrs: dict[str, Any] = {}
    for key in ("question", "question_ex"):
        value = props.get(key, en.get(key))
        if value not in (None, "", []):
            attrs[key] = value
    for key, value in zh.items():
        if key != ZH_LABEL_KEY and value not in (None, "", []):
            attrs[str(key)] = value
    if not candidates:
        return None, (), attrs
    return candidates[0], tuple(candidates[1:]), attrs


def _read_items(items: list[Any], legacy: bool, rel: str) -> tuple[list[RawObject], list[Issue]]:
    objects: list[RawObject] = []
    issues: list[Issue] = []
    for i, item in enumerate(items):
        where = f"{'dataList' if legacy else 'features'}[{i}]"
        if not isinstance(item, Mapping):
            issues.append(Issue("bad_polygon", rel, f"{where}: not an object", 1))
            continue
        props = _maybe_json(item.get("properties"))
        props = props if isinstance(props, Mapping) else item
        geometry = _maybe_json(item.get("geometry"))
        coords = item.get("coordinates")
        if coords is None and isinstance(geometry, Mapping):
            coords = geometry.get("coordinates")
        label, fallbacks, attrs = _labels(props)
        points, notes = _ring_points(coords)
        shown = label or "<no label>"
        if points is None:
            issues.append(Issue("bad_polygon", rel, f"{where} ({shown}): unusable coordinates {str(coords)[:80]}", 1))
            continue
        for note in notes:
            issues.append(Issue(note, rel, f"{where} ({shown})"))
        box = box_from_points(points)
        if is_zero_area(box):
            issues.append(Issue("zero_area", rel, f"{where} ({shown}): box {list(box)}", 1))
            continue
        if label is None:
            issues.append(Issue("missing_label", rel, f"{where}: no contentZh['{ZH_LABEL_KEY}'] nor content.label", 1))
            continue
        objects.append(RawObject(box, label, attrs, fallbacks, where))
    return objects, issues


def read_vendor(data: Mapping[str, Any], annotation_path: Path, rel: str) -> ReadResult:
    """Read one vendor export (already decoded). `rel` names the file in issues."""
    info = _maybe_json(data.get("info"))
    info = info if isinstance(info, Mapping) else {}
    size = positive_size(info.get("width"), info.get("height"))
    legacy = "markResult" not in data
    if legacy:
        items = _maybe_json(data.get("dataList"))
    else:
        mark = _maybe_json(data.get("markResult"))
        items = mark.get("features") if isinstance(mark, Mapping) else mark
    if not isinstance(items, list):
        key = "dataList" if legacy else "markResult.features"
        return ReadResult(issues=(Issue("bad_record", rel, f"{key} is not a list"),))
    objects, issues = _read_items(items, legacy, rel)
    image = RawImage(
        annotation_path=annotation_path,
        image_path=None,
        width=size[0] if size else None,
        height=size[1] if size else None,
        objects=tuple(objects),
        fmt=FORMAT + ("-legacy" if legacy else ""),
    )
    return ReadResult(images=(image,), issues=tuple(issues))
