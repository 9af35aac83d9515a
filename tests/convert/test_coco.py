"""COCO reader: one file, many images; xywh -> xyxy; categories by id; problems as issues."""

from __future__ import annotations

from pathlib import Path

from bbucli.convert.coco import is_coco, read_coco

PATH = Path("/data/instances.json")
CATEGORIES = [{"id": 3, "name": "标签/匹配"}, {"id": 7, "name": "bbu_brand/alixin"}]


def test_images_boxes_and_categories():
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
            {"id": 2, "file_name": "sub/b.jpg", "width": 100, "height": 50},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30.5, 40], "iscrowd": 0},
            {"id": 11, "image_id": 2, "category_id": 7, "bbox": [1, 2, 3, 4]},
            {"id": 12, "image_id": 1, "category_id": 7, "segmentation": [[5, 5, 25, 5, 25, 15]]},
        ],
        "categories": CATEGORIES,
    }
    assert is_coco(data)
    result = read_coco(data, PATH, "instances.json")
    assert result.issues == ()
    a, b = result.images
    assert (a.image_ref, a.width, a.height, a.fmt, b.stem) == ("a.jpg", 640, 480, "coco", "b")
    assert [(o.box_xyxy, o.label) for o in a.objects] == [
        ((10, 20, 40.5, 60), "标签/匹配"),
        ((5, 5, 25, 15), "bbu_brand/alixin"),
    ]
    assert a.objects[0].attrs == {"id": 10, "iscrowd": 0}
    assert [o.box_xyxy for o in b.objects] == [(1, 2, 4, 6)]


def test_bad_records_are_issues():
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 10, "height": 10},
            {"id": 1, "file_name": "dup.jpg"},
            {"file_name": "noid.jpg"},
        ],
        "annotations": [
            {"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1]},
            {"image_id": 1, "category_id": 42, "bbox": [0, 0, 1, 1]},
            {"image_id": 1, "category_id": 3, "bbox": [0, 0, 0, 5]},
            {"image_id": 1, "category_id": 3, "bbox": "x"},
        ],
        "categories": CATEGORIES,
    }
    result = read_coco(data, PATH, "instances.json")
    assert [i.reason for i in result.issues] == [
        "bad_record",
        "bad_record",
        "bad_record",
        "missing_label",
        "zero_area",
        "bad_polygon",
    ]
    assert len(result.images) == 1 and result.images[0].objects == ()
    assert (
        read_coco({"images": {}, "annotations": []}, PATH, "x.json").issues[0].reason
        == "bad_record"
    )
