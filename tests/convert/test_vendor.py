"""Vendor "markResult" reader: rings (plain, GeoJSON, nested deeper, unclosed), the legacy
`dataList`, labels and attributes, and every malformed feature reported as an issue."""

from __future__ import annotations

import json
from pathlib import Path

from bbucli.convert.vendor import is_vendor, read_vendor

ZH = "连接点（螺丝）/BBU安装螺丝/连接正确"
EN = "connection_point/install_screw/install_screw_true"
RING = [[10.5, 20.0], [50.0, 20.0], [50.0, 60.25], [10.5, 60.25], [10.5, 20.0]]
PATH = Path("/data/a.json")


def feature(coords, zh=ZH, en=EN, **props):
    properties = {
        "contentZh": {"标签": zh} if zh else {},
        "content": {"label": en} if en else {},
        **props,
    }
    return {
        "type": "Feature",
        "geometry": {"type": "ExtentPolygon", "coordinates": coords},
        "properties": properties,
    }


def doc(*features, **extra):
    return {
        "info": {"width": 100, "height": 80},
        "markResult": {"type": "FeatureCollection", "features": list(features)},
        **extra,
    }


def reasons(result):
    return [i.reason for i in result.issues]


def test_reads_geojson_ring_labels_attributes_and_ignores_bloat():
    data = doc(
        feature([RING], question=["untight", "rust"], question_ex="螺丝松动"),
        statistcs={"count": 1},
        qualityResult={"status": "pass"},
        workload={"rect": 1},
    )
    data["markResult"]["features"][0]["properties"]["contentZh"]["颜色"] = ["红"]
    assert is_vendor(data)
    result = read_vendor(data, PATH, "a.json")
    assert result.issues == ()
    (image,) = result.images
    assert (image.width, image.height, image.fmt, image.image_path) == (100, 80, "vendor", None)
    (obj,) = image.objects
    assert obj.box_xyxy == (10.5, 20.0, 50.0, 60.25)
    assert obj.label == ZH and obj.fallback_labels == (EN,)
    assert obj.attrs == {"question": ["untight", "rust"], "question_ex": "螺丝松动", "颜色": ["红"]}


def test_label_falls_back_to_the_english_code():
    result = read_vendor(doc(feature(RING, zh=None)), PATH, "a.json")
    assert result.images[0].objects[0].label == EN


def test_bare_ring_nested_deeper_and_unclosed_rings():
    unclosed = RING[:4]
    result = read_vendor(doc(feature(RING), feature([[RING]]), feature([unclosed])), PATH, "a.json")
    boxes = [o.box_xyxy for o in result.images[0].objects]
    assert boxes == [(10.5, 20.0, 50.0, 60.25)] * 3  # all kept, same box
    assert reasons(result) == ["nested_polygon", "unclosed_ring"]
    assert all(i.file == "a.json" and ZH in i.detail for i in result.issues)


def test_bad_polygons_zero_area_and_missing_labels_are_issues_not_exceptions():
    result = read_vendor(
        doc(
            feature([[["x", 1], [2, 3], [4, 5]]]),  # non-numeric point
            feature([]),  # empty
            feature([[[[[RING]]]]]),  # far too deep
            feature("not a list"),
            feature([[[5, 5], [5, 5], [5, 5]]]),  # a single point
            feature([[[1, 1], [9, 1], [9, 1], [1, 1]]]),  # zero height
            feature([RING], zh=None, en=None),  # no label
            "not a feature",
        ),
        PATH,
        "a.json",
    )
    assert result.images[0].objects == ()
    assert reasons(result) == ["bad_polygon"] * 5 + ["zero_area", "missing_label", "bad_polygon"]


def test_legacy_datalist_with_two_corners():
    data = {
        "info": {"width": 100, "height": 80},
        "dataList": [
            {"coordinates": [[50, 60], [10, 20]], "contentZh": {"标签": ZH}},
            {"coordinates": [[1, 2], [3, 4]], "properties": {"content": {"label": EN}}},
        ],
    }
    result = read_vendor(data, PATH, "a.json")
    assert result.issues == ()
    (image,) = result.images
    assert image.fmt == "vendor-legacy"
    assert [(o.box_xyxy, o.label) for o in image.objects] == [
        ((10, 20, 50, 60), ZH),
        ((1, 2, 3, 4), EN),
    ]


def test_string_encoded_mark_result_and_missing_info():
    data = {"markResult": json.dumps({"features": [feature([RING])]}, ensure_ascii=False)}
    (image,) = read_vendor(data, PATH, "a.json").images
    assert (image.width, image.height) == (None, None)
    assert len(image.objects) == 1


def test_features_not_a_list_is_a_bad_record():
    result = read_vendor({"markResult": {"features": 3}}, PATH, "a.json")
    assert result.images == () and reasons(result) == ["bad_record"]
