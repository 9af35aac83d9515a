"""`convert_dataset` end to end on small real folders: every bad-input case counted by reason with
its file, boxes after resize, EXIF, fixed-point images, byte-identical reruns, atomic writes,
strict/dry-run, and the teacher/train/val partition."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bbucli.convert.pipeline import ConvertOptions, IssuesFound, convert_dataset
from bbucli.errors import DataError, UsageError
from bbucli.geometry import is_fixed_point, resized_wh
from bbucli.schema import read_episodes, write_jsonl_atomic

ZH = "连接点（螺丝）/BBU安装螺丝/连接正确"
BRAND = "BBU品牌/华为"
SHIELD = "挡风板/未安装"


def run(rawset, tmp_path: Path, **options):
    out = tmp_path / "out" / "d.jsonl"
    return convert_dataset(rawset.root, out, ConvertOptions(**options)), out


def issues(report, reason):
    return [(i.file, i.detail) for i in report.issues if i.reason == reason]


def all_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def samples(out: Path):
    """Every written sample by split: {"train": [...], "val": [...], "teachers": [...]}."""
    names = {"train": out, "val": out.with_name("d.val.jsonl"), "teachers": out.with_name("d.teachers.jsonl")}
    return {k: read_episodes(p) for k, p in names.items()}


def check_invariants(report):
    assert report.objects_found == report.objects_kept + sum(report.dropped_objects.values())
    assert report.images_found == report.images_kept + sum(report.dropped_images.values())


def test_clean_set_writes_all_outputs_with_meta_and_fixed_point_images(rawset, tmp_path):
    for i in range(6):
        rawset.vendor(f"site/QC-{i}", wh=(300 + 40 * i, 400), objects=[((10, 20, 60, 90), ZH), ((100, 200, 150, 260), BRAND)])
    report, out = run(rawset, tmp_path, val_ratio=0.2)
    assert report.issues == () and report.images_kept == 6 and report.objects_kept == 12
    assert report.label_counts == {ZH: 6, BRAND: 6}
    check_invariants(report)
    files = sorted(p.name for p in out.parent.iterdir())
    assert files == ["d.jsonl", "d.report.json", "d.teachers.jsonl", "d.val.jsonl", "images"]
    written = samples(out)
    episode = written["train"][0]
    stem = episode.meta["id"]
    assert episode.student.images == (f"images/{stem}.jpeg",)
    src = episode.meta["source"][f"{stem}.jpeg"]
    assert src["path"] == f"site/{stem}.jpeg" and src["height"] == 400
    for image in (out.parent / "images").iterdir():
        with Image.open(image) as im:
            assert is_fixed_point(im.size) and im.format == "JPEG"
    assert json.loads((out.parent / "d.report.json").read_text(encoding="utf-8"))["images_kept"] == 6


def test_boxes_after_resize_are_within_a_pixel_and_inside_the_image(rawset, tmp_path):
    rng = np.random.default_rng(0)
    expected = {}
    for i, wh in enumerate([(1000, 750), (333, 777), (1440, 1920), (90, 1500), (2000, 120)]):
        boxes = []
        for _ in range(5):
            x1, y1 = rng.uniform(0, wh[0] - 3), rng.uniform(0, wh[1] - 3)
            boxes.append((x1, y1, rng.uniform(x1 + 1, wh[0]), rng.uniform(y1 + 1, wh[1])))
        rawset.vendor(f"img{i}", wh=wh, objects=[(tuple(float(v) for v in b), ZH) for b in boxes])
        expected[f"img{i}"] = (wh, boxes)
    report, out = run(rawset, tmp_path, teachers=0, val_ratio=0.0)
    assert report.issues == () and report.objects_kept == 25
    for episode in samples(out)["train"]:
        wh, boxes = expected[episode.meta["id"]]
        dst = resized_wh(wh)
        with Image.open(out.parent / episode.student.image) as im:
            assert im.size == dst
        sx, sy = dst[0] / wh[0], dst[1] / wh[1]
        exact = sorted(([b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes), key=lambda b: (round(b[1]), round(b[0])))
        got = [o.bbox_2d for o in episode.student.objects]
        assert [o.bbox_2d[1] for o in episode.student.objects] == sorted(o.bbox_2d[1] for o in episode.student.objects)
        for box in got:
            assert 0 <= box[0] < box[2] <= dst[0] and 0 <= box[1] < box[3] <= dst[1]
        matched = [min(exact, key=lambda e, b=box: max(abs(x - y) for x, y in zip(b, e, strict=True))) for box in got]
        for box, e in zip(got, matched, strict=True):
            assert max(abs(x - y) for x, y in zip(box, e, strict=True)) <= 1.0


def red_at(image_path: Path, box) -> float:
    with Image.open(image_path) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=float)[box[1] + 1 : box[3] - 1, box[0] + 1 : box[2] - 1]
    return float((pixels[..., 0] - pixels[..., 1]).mean())


def test_exif_orientation_6_boxes_land_on_the_object(rawset, tmp_path):
    red = (200, 300, 320, 420)  # upright frame of a 400x600 photo stored rotated (orientation 6)
    rawset.vendor("upright", wh=(400, 600), orientation=6, red_box=red, objects=[(red, ZH)])
    # same photo, but annotated in the stored (pre-EXIF) 600x400 frame: rotated upright by convert
    rawset.jpeg("stored.jpeg", (400, 600), orientation=6, red_box=red)
    x1, y1, x2, y2 = red
    stored_box = (y1, 400 - x2, y2, 400 - x1)  # inverse of orientation 6 on a 400x600 upright image
    rawset.vendor("stored", wh=(600, 400), objects=[(stored_box, ZH)], image=False)
    report, out = run(rawset, tmp_path, teachers=0, val_ratio=0.0)
    assert issues(report, "exif_frame") == [("stored.json", "declared 600x400, image 400x600 upright (EXIF orientation 6)")]
    assert report.images_kept == 2
    for episode in samples(out)["train"]:
        (obj,) = episode.student.objects
        assert red_at(out.parent / episode.student.image, obj.bbox_2d) > 150  # red inside the box
        assert episode.meta["source"][f"{episode.meta['id']}.jpeg"]["width"] == 400


def test_size_disagreeing_with_the_image(rawset, tmp_path):
    rawset.vendor("half", wh=(280, 210), info_wh=(140, 105), objects=[((10, 10, 50, 50), ZH)])
    rawset.vendor("swapped", wh=(280, 210), info_wh=(210, 280))  # no EXIF to say which way it turned
    rawset.vendor("wrong", wh=(280, 210), info_wh=(500, 100))
    report, out = run(rawset, tmp_path, teachers=0, val_ratio=0.0)
    assert [f for f, _ in issues(report, "size_mismatch")] == ["swapped.json", "wrong.json"]
    assert [f for f, _ in issues(report, "size_rescaled")] == ["half.json"]
    assert report.dropped_images == {"size_mismatch": 2}
    (episode,) = samples(out)["train"]
    dst = resized_wh((280, 210))
    assert episode.student.objects[0].bbox_2d == (round(20 * dst[0] / 280), round(20 * dst[1] / 210), round(100 * dst[0] / 280), round(100 * dst[1] / 210))


def test_polygons_zero_area_and_out_of_frame(rawset, tmp_path):
    path = rawset.vendor("a", wh=(280, 210), objects=[
        ((10, 10, 50, 50), ZH),
        ((10, 10, 10, 50), ZH),  # zero width
        ((250, 180, 320, 260), BRAND),  # partly outside: clipped
        ((300, 10, 350, 50), SHIELD),  # fully outside: dropped
        ((279.5, 60, 330, 90), SHIELD),  # a sliver under a pixel inside: dropped
        ((-0.5, 0, 40, 210.6), ZH),  # sub-pixel overshoot: clamped silently
    ])
    data = json.loads(path.read_text(encoding="utf-8"))
    features = data["markResult"]["features"]
    features[0]["geometry"]["coordinates"] = [features[0]["geometry"]["coordinates"]]  # nested deeper
    features.append({**features[0], "geometry": {"type": "ExtentPolygon", "coordinates": [[[5, 5], [20, 5], [20, 30], [5, 30]]]}})
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    report, out = run(rawset, tmp_path, teachers=0, val_ratio=0.0)
    assert {r: [f for f, _ in issues(report, r)] for r in report.issue_counts} == {
        "nested_polygon": ["a.json"], "unclosed_ring": ["a.json"], "zero_area": ["a.json"],
        "clipped": ["a.json"], "out_of_frame": ["a.json", "a.json"],
    }
    assert report.dropped_objects == {"out_of_frame": 2, "zero_area": 1}
    assert report.objects_kept == 4 and report.label_counts == {ZH: 3, BRAND: 1}
    check_invariants(report)
    dst = resized_wh((280, 210))
    brand = next(o for o in samples(out)["train"][0].student.objects if o.desc == BRAND)
    assert brand.bbox_2d[2:] == dst  # clipped to the image edge


@pytest.mark.parametrize("policy", ["keep", "drop", "error"])
def test_unknown_labels(rawset, tmp_path, policy):
    rawset.vendor("a", objects=[((10, 10, 50, 50), ZH), ((60, 60, 90, 90), "神秘/东西"), ((60, 10, 90, 40), "神秘/东西")])
    rawset.vendor("b", objects=[((10, 10, 50, 50), "mystery/thing")])
    if policy == "error":
        with pytest.raises(DataError, match="a.json: unknown label '神秘/东西'"):
            run(rawset, tmp_path, unknown="error")
        assert not (tmp_path / "out").exists()
        return
    report, _ = run(rawset, tmp_path, unknown=policy, teachers=0, val_ratio=0.0)
    assert report.unknown_labels == {"神秘/东西": 2, "mystery/thing": 1}
    assert [f for f, _ in issues(report, "unknown_label")] == ["a.json", "a.json", "b.json"]
    if policy == "keep":
        assert report.label_counts == {"神秘/东西": 2, ZH: 1, "mystery/thing": 1}
        assert report.dropped_objects == {}
    else:
        assert report.label_counts == {ZH: 1} and report.dropped_objects == {"unknown_label": 3}
        assert issues(report, "no_objects") == [("b.json", "all 1 objects dropped")]
    check_invariants(report)


def test_broken_files_are_counted_by_reason_with_their_file(rawset, tmp_path):
    rawset.vendor("good")
    rawset.vendor("a/dup")
    rawset.vendor("b/dup")
    rawset.vendor("noimage", image=False)
    rawset.vendor("garbage", image=False)
    rawset.path("garbage.jpeg").write_bytes(b"this is no jpeg")
    cut = rawset.vendor("cutjpeg", wh=(600, 500))
    jpeg = cut.with_suffix(".jpeg")
    jpeg.write_bytes(jpeg.read_bytes()[:900])  # header intact, scan data cut
    text = (rawset.root / "good.json").read_text(encoding="utf-8")
    rawset.path("truncated.json").write_text(text[:40], encoding="utf-8")
    rawset.jpeg("truncated.jpeg")
    rawset.vendor("thin", wh=(1000, 4), objects=[((1, 0, 10, 4), ZH)])  # aspect ratio 250
    rawset.vendor("empty", objects=[])
    rawset.labelme("lm")
    report, out = run(rawset, tmp_path, teachers=0, val_ratio=0.0)
    found = {r: [f for f, _ in issues(report, r)] for r in report.issue_counts}
    assert found == {
        "bad_aspect_ratio": ["thin.jpeg"],
        "corrupt_json": ["truncated.json"],
        "missing_image": ["noimage.json"],
        "mixed_formats": ["."],
        "no_objects": ["empty.json"],
        "unannotated_image": ["truncated.jpeg"],
        "unreadable_image": ["garbage.jpeg", "cutjpeg.jpeg"],
    }
    assert report.images_kept == 4 and report.images_found == 9
    assert report.dropped_images == {
        "bad_aspect_ratio": 1, "missing_image": 1, "no_objects": 1, "unreadable_image": 2,
    }
    check_invariants(report)
    text = (out.parent / "d.report.json").read_text(encoding="utf-8")
    assert str(tmp_path) not in text  # no absolute paths
    ids = {e.meta["id"] for e in samples(out)["train"]}
    assert len(ids) == 4 and {"good", "lm"} < ids  # both dup.jpeg kept, under distinct names


def test_empty_folder(rawset, tmp_path):
    rawset.root.mkdir(parents=True)
    with pytest.raises(DataError, match="no usable image.*no_annotations"):
        run(rawset, tmp_path)
    report, _ = run(rawset, tmp_path, dry_run=True)
    assert [i.reason for i in report.issues] == ["no_annotations"] and report.images_kept == 0
    assert not (tmp_path / "out").exists()


def make_set(rawset, n=12):
    classes = [ZH, BRAND, SHIELD, "标签/不匹配"]
    for i in range(n):
        objects = [((10, 10, 50, 50), ZH), ((60, 60, 100 + i, 100), classes[i % 3])]
        if i == 7:
            objects.append(((120, 120, 160, 160), classes[3]))  # a rare class, in one image only
        rawset.vendor(f"QC-{i:02d}", objects=objects, orientation=6 if i % 5 == 0 else 1,
                      wh=(210, 280) if i % 5 == 0 else (280, 210))


def test_rerun_is_byte_identical_and_workers_do_not_change_output(rawset, tmp_path):
    make_set(rawset)
    out = tmp_path / "out" / "d.jsonl"
    convert_dataset(rawset.root, out, ConvertOptions(teachers=2, val_ratio=0.25))
    first = all_files(out.parent)
    convert_dataset(rawset.root, out, ConvertOptions(teachers=2, val_ratio=0.25))
    assert all_files(out.parent) == first
    other = tmp_path / "other" / "d.jsonl"
    convert_dataset(rawset.root, other, ConvertOptions(teachers=2, val_ratio=0.25, workers=2))
    assert all_files(other.parent) == first


def test_teachers_are_never_students_and_no_image_is_in_two_splits(rawset, tmp_path):
    make_set(rawset)
    report, out = run(rawset, tmp_path, teachers=2, pool=4, val_ratio=0.25)
    written = samples(out)
    ids = {k: [e.meta["id"] for e in eps] for k, eps in written.items()}
    assert sorted(ids["teachers"]) == sorted(report.teacher_pool) and len(ids["teachers"]) == 4
    assert "QC-07" in ids["teachers"]  # the only image with the rare class: covered first
    every = ids["train"] + ids["val"] + ids["teachers"]
    assert sorted(every) == [f"QC-{i:02d}" for i in range(12)]  # each image exactly once
    assert report.split_sizes == {"train": len(ids["train"]), "val": len(ids["val"]), "teachers": 4}
    assert len(ids["val"]) == 2
    pool_images = {f"images/{i}.jpeg" for i in ids["teachers"]}
    for episode in written["train"] + written["val"]:
        assert len(episode.teachers) == 2
        assert {t.image for t in episode.teachers} <= pool_images
        assert episode.student.image not in pool_images
    assert all(e.teachers == () for e in written["teachers"])


def test_dry_run_writes_nothing_and_strict_fails_before_writing(rawset, tmp_path):
    make_set(rawset, n=4)
    report, _ = run(rawset, tmp_path, dry_run=True)
    assert report.dry_run and report.images_kept == 4 and not (tmp_path / "out").exists()
    run(rawset, tmp_path, strict=True)  # a clean set passes strict
    before = all_files(tmp_path / "out")
    rawset.vendor("bad", objects=[((10, 10, 50, 50), "???")])
    with pytest.raises(IssuesFound) as info:
        run(rawset, tmp_path, strict=True)
    assert "unknown_label" in info.value.message and info.value.report.issue_counts == {"no_objects": 1, "unknown_label": 1}
    assert all_files(tmp_path / "out") == before


def test_a_failed_run_keeps_the_previous_outputs(rawset, tmp_path):
    make_set(rawset, n=4)
    run(rawset, tmp_path)
    before = all_files(tmp_path / "out")
    rawset.vendor("bad", objects=[((10, 10, 50, 50), "???")])
    with pytest.raises(DataError):
        run(rawset, tmp_path, unknown="error")
    assert all_files(tmp_path / "out") == before


def test_interrupted_jsonl_write_leaves_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"old": 1}\n', encoding="utf-8")

    def records():
        yield {"student": {"images": ["images/a.jpeg"], "objects": []}}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl_atomic(path, records())
    assert path.read_text(encoding="utf-8") == '{"old": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]


def test_options_are_validated(rawset, tmp_path):
    rawset.vendor("a")
    with pytest.raises(UsageError) as info:
        run(rawset, tmp_path, val_ratio=1.5, levels=0, min_pixels=10**9)
    assert "--val-ratio" in info.value.message and "--levels" in info.value.message and "--min-pixels" in info.value.message
    with pytest.raises(UsageError, match="must end in .jsonl"):
        convert_dataset(rawset.root, tmp_path / "d.json")


def test_english_descs_and_levels(rawset, tmp_path):
    rawset.vendor("a", objects=[((10, 10, 50, 50), ZH), ((60, 60, 90, 90), "螺丝连接点/BBU安装螺丝/连接错误")])
    report, _ = run(rawset, tmp_path, lang="en", levels=2, teachers=0, val_ratio=0.0)
    assert report.label_counts == {"screw/bbu_install_screw": 2}


def test_strict_fails_when_a_jpeg_is_cut_in_its_scan_data(rawset, tmp_path):
    make_set(rawset, n=3)
    cut = rawset.vendor("cut", wh=(600, 500)).with_suffix(".jpeg")
    cut.write_bytes(cut.read_bytes()[:900])  # only a full decode notices
    with pytest.raises(IssuesFound) as info:
        run(rawset, tmp_path, strict=True)
    assert [(i.reason, i.file) for i in info.value.report.issues] == [("unreadable_image", "cut.jpeg")]
    assert not list((tmp_path / "out").glob("*.json*"))  # no JSONL, no report
