"""Readers and alignment: bad input is reported by file:line and the rest is scored; frames, keys,
COCO ids/area/iscrowd as given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bbucli.errors import DataError
from bbucli.evaluation import (
    Detections,
    GroundTruth,
    GroundTruthImage,
    evaluate,
    ground_truth_from_coco,
    parse_predictions_jsonl,
    read_ground_truth,
    read_predictions,
    read_split,
    write_predictions_jsonl,
)

EN = "screw/bbu_install_screw/correct"
ZH = "连接点（螺丝）/BBU安装螺丝/连接正确"


def episode(image: str, objects: list[tuple[list[int], str]]) -> str:
    student = {"images": [image], "objects": [{"bbox_2d": b, "desc": d} for b, d in objects]}
    return json.dumps({"teachers": [], "student": student}, ensure_ascii=False)


@pytest.fixture
def split(tmp_path: Path) -> Path:
    """Two 200x100 stored images, one screw each, and a third image file-less."""
    (tmp_path / "images").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (200, 100), (80, 80, 80)).save(tmp_path / "images" / f"{name}.jpeg")
    lines = [
        episode("images/a.jpeg", [([10, 10, 50, 50], EN)]),
        episode("images/b.jpeg", [([100, 20, 150, 80], EN)]),
        episode("images/c.jpeg", []),
    ]
    path = tmp_path / "val.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def line(image: str, objects: list[dict] | None = None, **extra) -> str:
    return json.dumps({"image": image, "objects": objects or [], **extra})


def obj(box, desc=EN, score=0.9) -> dict:
    return {"bbox_2d": box, "desc": desc, "score": score}


def test_bbu_jsonl_ground_truth(split):
    gt = read_ground_truth(split)
    assert gt.format == "bbu-jsonl"
    assert [i.key for i in gt.images] == ["images/a.jpeg", "images/b.jpeg", "images/c.jpeg"]
    assert [i.image_id for i in gt.images] == [1, 2, 3]
    assert gt.images[0].image_wh == (200, 100) and gt.images[2].image_wh is None
    assert [c.desc for c in gt.categories] == [EN]
    assert any("1 image(s) not found" in str(p) for p in gt.problems)


def test_malformed_lines_outside_boxes_and_unknown_images_reported_by_line(split, tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n".join([
        line("images/a.jpeg", [obj([10, 10, 50, 50])]),                       # 1 good
        "{not json",                                                          # 2 malformed
        line("images/zzz.jpeg", [obj([0, 0, 5, 5])]),                         # 3 unknown image
        line("images/b.jpeg", [obj([100, 20, 150, 80]), obj([190, 90, 260, 140]), obj([300, 300, 310, 310]), obj([5, 5, 1, 1])]),  # 4
        json.dumps([1, 2]),                                                   # 5 not an object
        line("images/c.jpeg", [{"bbox_2d": [0, 0, 1], "desc": EN, "score": 1}]),  # 6 bad object
    ]) + "\n", encoding="utf-8")
    gt = read_ground_truth(split)
    result = evaluate(read_predictions(preds, gt), gt, backend="pycocotools")
    text = [str(p) for p in result.problems]
    assert any(t.startswith(f"{preds}:2: invalid JSON") for t in text)
    assert any(t.startswith(f"{preds}:3: image 'images/zzz.jpeg' is not in the ground truth") for t in text)
    assert any(t.startswith(f"{preds}:4: objects[3]: bbox_2d must be xyxy") for t in text)
    outside = next(t for t in text if t.startswith(f"{preds}:4: 2 box(es) reach outside the 200x100 image"))
    assert "1 of them wholly outside; scored as given" in outside and "[190, 90, 260, 140]" in outside
    assert any(t.startswith(f"{preds}:5: a line must be a JSON object") for t in text)
    assert any(t.startswith(f"{preds}:6: objects[0]: bbox_2d must be 4 finite numbers") for t in text)
    # The rest is scored as given: both screws found, the two outside boxes false positives below them.
    assert result.coco["AP"] == pytest.approx(1.0, abs=1e-12)
    assert result.counts["predictions_scored"] == 4 and result.counts["prediction_records"] == 4
    assert result.counts["out_of_image_predictions"] == 2
    assert result.operating_point.tp == 2


def test_prediction_frame_is_scaled_into_the_stored_frame(split):
    gt = read_ground_truth(split)
    # The model saw the 1000x500 original: boxes 5x the stored ones.
    preds = [Detections("images/a.jpeg", [[50, 50, 250, 250]], (EN,), [0.9], image_wh=(1000, 500)),
             Detections("b.jpeg", [[500, 100, 750, 400]], (EN,), [0.8], image_wh=(1000, 500))]  # bare file name
    result = evaluate(preds, gt, backend="pycocotools")
    assert result.coco["AP"] == pytest.approx(1.0, abs=1e-12)
    assert not [p for p in result.problems if "clipped" in str(p)]


def test_descs_are_mapped_through_the_taxonomy(split):
    gt = read_ground_truth(split)
    preds = [Detections("images/a.jpeg", [[10, 10, 50, 50]], (ZH,), [0.9]),
             Detections("images/b.jpeg", [[100, 20, 150, 80]], ("connection_point/install_screw/install_screw_true",), [0.9])]
    result = evaluate(preds, gt, backend="pycocotools")
    assert result.coco["AP"] == pytest.approx(1.0, abs=1e-12) and result.counts["unknown_category_predictions"] == 0


def test_duplicate_image_and_unparseable_and_missing_score(split, tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text("\n".join([
        line("images/a.jpeg", [{"bbox_2d": [10, 10, 50, 50], "desc": EN}], source="lm"),
        line("images/a.jpeg", [obj([0, 0, 9, 9])]),
        line("images/b.jpeg", [], source="lm", unparseable=True, raw="<garbled>"),
        line("images/c.jpeg", [], source="sideways", extra=1),
    ]) + "\n", encoding="utf-8")
    gt = read_ground_truth(split)
    result = evaluate(read_predictions(preds, gt), gt, backend="pycocotools")
    text = [str(p) for p in result.problems]
    assert f"{preds}:1: 1 object(s) without a score rank as 1.0" in text
    assert any(t.startswith(f"{preds}:2: image 'images/a.jpeg' already has predictions at {preds}:1") for t in text)
    assert any(t.startswith(f"{preds}:4: unknown keys ['extra']") for t in text)
    assert any(t.startswith(f"{preds}:4: source must be one of") for t in text)
    assert result.unparseable == 1 and result.counts["lm"] == 2


def test_predictions_jsonl_round_trip(tmp_path):
    dets = [Detections("images/a.jpeg", [[1.5, 2, 30.25, 40]], (EN,), [0.123456789], image_wh=(1440, 1920), source="lm")]
    path = tmp_path / "preds.jsonl"
    write_predictions_jsonl(path, dets)
    back = parse_predictions_jsonl(path.read_text().splitlines(), source=path)
    assert back.problems == ()
    (d,) = back.detections
    assert d.image == "images/a.jpeg" and d.image_wh == (1440.0, 1920.0) and d.source == "lm"
    np.testing.assert_allclose(d.boxes_px, [[1.5, 2, 30.25, 40]])
    assert d.scores[0] == pytest.approx(0.123457)


def test_read_split_keeps_each_scored_images_first_episode(split):
    teacher = {"images": ["images/b.jpeg"], "objects": [{"bbox_2d": [1, 2, 30, 40], "desc": ZH}]}
    first = json.loads(episode("images/a.jpeg", [([10, 10, 50, 50], EN)]))
    again = {**first, "teachers": [teacher]}  # the same student again: reported, not scored
    text = split.read_text(encoding="utf-8")
    split.write_text(text + json.dumps(again, ensure_ascii=False) + "\n", encoding="utf-8")
    read = read_split(split)
    assert [i.key for i in read.ground_truth.images] == list(read.episodes)
    assert list(read.episodes) == ["images/a.jpeg", "images/b.jpeg", "images/c.jpeg"]
    assert read.episodes["images/a.jpeg"].teachers == ()  # the first episode, not the repeat
    assert read.episodes["images/b.jpeg"].student.objects[0].bbox_2d == (100, 20, 150, 80)
    assert any("already scored at line 1" in str(p) for p in read.ground_truth.problems)


def test_coco_ground_truth_keeps_ids_area_and_iscrowd(tmp_path):
    data = {
        "images": [{"id": 7, "file_name": "x.jpg", "width": 100, "height": 100}, {"id": 9, "file_name": "y.jpg", "width": 100, "height": 100}],
        "annotations": [
            {"id": 0, "image_id": 7, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 10000.0, "iscrowd": 0},
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [50, 50, 40, 40], "iscrowd": 1},
            {"id": 2, "image_id": 8, "category_id": 3, "bbox": [0, 0, 10, 10]},
            {"id": 3, "image_id": 9, "category_id": 4, "bbox": [0, 0, 10, 10]},
            {"id": 4, "image_id": 9, "category_id": 3, "bbox": [0, 0, 0, 10]},
        ],
        "categories": [{"id": 3, "name": "a/b"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    gt = read_ground_truth(path)
    assert gt.format == "coco" and [c.id for c in gt.categories] == [3]
    assert read_split(path).episodes == {}  # COCO lists no episodes
    image = gt.images[0]
    assert image.image_id == 7 and image.key == "x.jpg"
    assert image.areas.tolist() == [10000.0, 1600.0] and image.iscrowd.tolist() == [False, True]
    assert len(gt.images[1]) == 0
    text = [str(p) for p in gt.problems]
    assert f"{path}: annotations[2]: image_id 8 is not in `images`; skipped" in text
    assert f"{path}: annotations[3]: category_id 4 is not in `categories`; skipped" in text
    assert any(t.startswith(f"{path}: annotations[4]: bbox must be") for t in text)
    # The given area puts the 10x10 box in "large"; a prediction on the crowd region is ignored.
    preds = [Detections("x.jpg", [[0, 0, 10, 10], [50, 50, 90, 90]], ("a/b", "a/b"), [0.5, 0.9])]
    result = evaluate(preds, gt, backend="pycocotools")
    assert result.coco["AP"] == pytest.approx(1.0, abs=1e-12)
    assert result.coco["AP_large"] == pytest.approx(1.0, abs=1e-12) and result.coco["AP_small"] is None
    assert result.operating_point.fp == 0


def test_coco_results_predictions(tmp_path):
    gt = ground_truth_from_coco({
        "images": [{"id": 5, "file_name": "x.jpg", "width": 100, "height": 100}],
        "annotations": [{"image_id": 5, "category_id": 1, "bbox": [0, 0, 10, 10]}],
        "categories": [{"id": 1, "name": "a/b"}],
    })
    path = tmp_path / "results.json"
    path.write_text(json.dumps([
        {"image_id": 5, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 6, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 5, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.8},
        {"image_id": 5, "category_id": 1, "bbox": [0, 0, 10], "score": 0.9},
    ]))
    preds = read_predictions(path, gt)
    assert preds.format == "coco"
    text = [str(p) for p in preds.problems]
    assert f"{path}: [1]: image_id 6 is not in the ground truth; skipped" in text
    assert any(t.startswith(f"{path}: [3]: bbox must be") for t in text)
    result = evaluate(preds, gt, backend="pycocotools")
    assert result.coco["AP"] == pytest.approx(1.0, abs=1e-12)
    assert any("'category_id=2' is not in the ground truth" in str(p) for p in result.problems)


def test_unreadable_inputs_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_ground_truth(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    gt = GroundTruth.from_images([GroundTruthImage.simple("a", 1, [], [])])
    with pytest.raises(DataError, match="not valid JSON"):
        read_predictions(bad, gt)
