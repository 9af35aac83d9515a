"""Labelme reader: rectangles (corners in any order) and polygons; other shapes reported."""

from __future__ import annotations

from pathlib import Path

from bbucli.convert.labelme import is_labelme, read_labelme

PATH = Path("/data/b.json")


def doc(*shapes, **extra):
    return {
        "version": "5.4.1",
        "shapes": list(shapes),
        "imagePath": "..\\imgs\\b.jpg",
        "imageWidth": 640,
        "imageHeight": 480,
        **extra,
    }


def test_rectangles_and_polygons():
    data = doc(
        {
            "label": "标签/匹配",
            "points": [[60, 80], [20.5, 30]],
            "shape_type": "rectangle",
            "group_id": 3,
        },
        {"label": "cable/fiber", "points": [[1, 2], [9, 3], [5, 12]], "shape_type": "polygon"},
        {"label": "other", "points": [[1, 2], [9, 3]]},  # no shape_type: polygon
    )
    assert is_labelme(data)
    result = read_labelme(data, PATH, "b.json")
    assert result.issues == ()
    (image,) = result.images
    assert (image.width, image.height, image.fmt, image.image_ref) == (
        640,
        480,
        "labelme",
        "..\\imgs\\b.jpg",
    )
    assert image.stem == "b"
    assert [o.box_xyxy for o in image.objects] == [(20.5, 30, 60, 80), (1, 2, 9, 12), (1, 2, 9, 3)]
    assert image.objects[0].attrs == {"group_id": 3}


def test_unsupported_shapes_bad_points_zero_area_and_empty_labels():
    result = read_labelme(
        doc(
            {"label": "x", "points": [[1, 2], [5, 5]], "shape_type": "circle"},
            {"label": "x", "points": [[1, 2]], "shape_type": "polygon"},
            {"label": "x", "points": "nope", "shape_type": "rectangle"},
            {"label": "x", "points": [[1, 2], [1, 9]], "shape_type": "rectangle"},
            {"label": " ", "points": [[1, 2], [5, 9]], "shape_type": "rectangle"},
        ),
        PATH,
        "b.json",
    )
    assert result.images[0].objects == ()
    assert [i.reason for i in result.issues] == [
        "unsupported_shape",
        "bad_polygon",
        "bad_polygon",
        "zero_area",
        "missing_label",
    ]


def test_shapes_not_a_list():
    result = read_labelme({"shapes": None, "imagePath": "b.jpg"}, PATH, "b.json")
    assert [i.reason for i in result.issues] == ["bad_record"]
