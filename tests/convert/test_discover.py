"""Discovery: recursive walk, format detection, image pairing, and every folder-level problem
(corrupt JSON, unknown format, missing image, duplicate stems, empty folder, mixed formats)."""

from __future__ import annotations

import pytest

from bbucli.convert.discover import discover
from bbucli.errors import DataError

ZH = "连接点（螺丝）/BBU安装螺丝/连接正确"


def by_reason(found, reason):
    return [i for i in found.issues if i.reason == reason]


def test_pairs_each_format_with_its_image(rawset):
    rawset.vendor("site1/QC-1_1")
    rawset.jpeg("site1/QC-1_2.jpg")
    rawset.vendor("site1/QC-1_2", image=False)  # pairs with the .jpg
    rawset.labelme("lm/a", image_rel="pics/a_photo.jpg")
    rawset.coco(
        "coco/instances.json",
        [("c1.jpg", (200, 100))],
        [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 30, 40]}],
        [{"id": 1, "name": ZH}],
    )
    rawset.jpeg("coco/images/c2.jpg")
    rawset.json(
        "coco/more.json",
        {
            "images": [{"id": 5, "file_name": "c2.jpg", "width": 280, "height": 210}],
            "annotations": [],
            "categories": [],
        },
    )
    found = discover(rawset.root)
    assert found.annotation_files == 5
    assert found.formats == {"coco": 2, "labelme": 1, "vendor": 2}
    pairs = {im.image_path.relative_to(rawset.root).as_posix(): im.fmt for im in found.images}
    assert pairs == {
        "coco/c1.jpg": "coco",
        "coco/images/c2.jpg": "coco",
        "lm/pics/a_photo.jpg": "labelme",
        "site1/QC-1_1.jpeg": "vendor",
        "site1/QC-1_2.jpg": "vendor",
    }
    assert [i.reason for i in found.issues] == ["mixed_formats"]
    assert "coco 2, labelme 1, vendor 2" in found.issues[0].detail


def test_labelme_windows_image_path_and_stem_fallback(rawset):
    rawset.labelme("x", image_rel="x.jpg")
    rawset.json(
        "x.json",
        {
            **__import__("json").loads((rawset.root / "x.json").read_text()),
            "imagePath": "C:\\export\\x.jpg",
        },
    )
    found = discover(rawset.root)
    assert [im.image_path.name for im in found.images] == ["x.jpg"]


def test_corrupt_unknown_missing_duplicate_and_unannotated(rawset):
    rawset.vendor("a/dup")
    rawset.vendor("b/dup")  # same stem in another folder
    rawset.vendor("lonely", image=False)
    rawset.jpeg("orphan.jpeg")
    good = (rawset.root / "a/dup.json").read_text(encoding="utf-8")
    rawset.path("cut.json").write_text(good[: len(good) // 2], encoding="utf-8")
    rawset.path("binary.json").write_bytes(b"\xff\xfe\x00garbage")
    rawset.json("other.json", {"hello": 1})
    rawset.json(".hidden/x.json", {"broken": True})  # hidden folders are skipped
    found = discover(rawset.root)
    assert [im.annotation_path.relative_to(rawset.root).as_posix() for im in found.images] == [
        "a/dup.json",
        "b/dup.json",
    ]
    assert [(i.reason, i.file) for i in found.issues] == [
        ("corrupt_json", "binary.json"),
        ("corrupt_json", "cut.json"),
        ("missing_image", "lonely.json"),
        ("unknown_format", "other.json"),
        ("unannotated_image", "orphan.jpeg"),
    ]
    assert found.images_found == 3


def test_empty_folder_and_not_a_folder(rawset, tmp_path):
    rawset.root.mkdir(parents=True)
    found = discover(rawset.root)
    assert found.images == () and [i.reason for i in found.issues] == ["no_annotations"]
    with pytest.raises(DataError, match="not a folder"):
        discover(tmp_path / "nowhere")


def test_excluded_paths_and_progress(rawset):
    rawset.vendor("a")
    rawset.json("out/d.report.json", {"not": "an annotation"})
    calls = []
    found = discover(
        rawset.root, exclude=[rawset.root / "out"], progress=lambda *a: calls.append(a)
    )
    assert found.issues == () and calls == [("read", 1, 1)]
