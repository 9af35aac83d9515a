"""The eval/ folder: every file written, PR PNG and overlays drawn, missing images skipped, and the
COCO files it writes score the same again."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bbucli.evaluation import evaluate_files, write_eval_dir
from bbucli.evaluation.evaluate import evaluate
from bbucli.evaluation.ground_truth import read_ground_truth
from bbucli.evaluation.predictions import read_predictions

A, B = "screw/bbu_install_screw/correct", "wind_shield/not_installed"


@pytest.fixture
def split(tmp_path: Path) -> tuple[Path, Path]:
    """Three stored images (the third's file missing) and predictions with errors on each."""
    (tmp_path / "images").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (224, 168), (90, 90, 90)).save(tmp_path / "images" / f"{name}.jpeg")
    def episode(image, objects):
        return json.dumps({"teachers": [], "student": {"images": [image], "objects": [{"bbox_2d": b, "desc": d} for b, d in objects]}})
    gt = tmp_path / "val.jsonl"
    gt.write_text("\n".join([
        episode("images/a.jpeg", [([10, 10, 40, 40], A), ([60, 10, 90, 40], A), ([0, 100, 224, 130], B)]),
        episode("images/b.jpeg", [([10, 10, 40, 40], A)]),
        episode("images/c.jpeg", [([10, 10, 40, 40], A)]),
    ]) + "\n")
    preds = tmp_path / "run" / "preds.jsonl"
    preds.parent.mkdir()
    def line(image, objects):
        return json.dumps({"image": image, "objects": [{"bbox_2d": b, "desc": d, "score": s} for b, d, s in objects]})
    preds.write_text("\n".join([
        line("images/a.jpeg", [([10, 10, 40, 40], A, 0.9), ([150, 60, 200, 90], A, 0.7)]),
        line("images/b.jpeg", [([12, 11, 41, 40], A, 0.8)]),
        line("images/c.jpeg", [([100, 100, 130, 130], A, 0.6)]),
    ]) + "\n")
    return gt, preds


def test_eval_folder_holds_every_file(split):
    gt, preds = split
    run = evaluate_files(preds, gt, backend="pycocotools")
    folder = preds.parent / "eval"
    assert run.out_dir == folder
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["confusion.csv", "gt_coco.json", "metrics.json", "overlays", "per_class.csv", "pr_curve.png", "results_coco.json"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(run.result.to_dict()))
    assert metrics["coco"]["AP"] == pytest.approx(run.result.coco["AP"])
    rows = list(csv.reader((folder / "per_class.csv").open()))
    assert rows[0][:6] == ["category_id", "desc", "defect", "gt", "predictions", "AP"] and [r[1] for r in rows[1:]] == [A, B]
    confusion = list(csv.reader((folder / "confusion.csv").open()))
    assert confusion[0][1:] == [A, B, "background"]
    with Image.open(folder / "pr_curve.png") as png:
        assert png.format == "PNG" and png.size[0] > 1000
    assert not list(folder.glob(".*.tmp"))  # nothing half-written left behind


def test_overlays_drawn_for_worst_images_and_missing_files_skipped(split):
    gt, preds = split
    run = evaluate_files(preds, gt, backend="pycocotools")
    overlays = sorted((preds.parent / "eval" / "overlays").iterdir())
    # a (1 FP + 2 FN) and c (1 FP + 1 FN, file missing) have errors; b has none.
    assert [p.name for p in overlays] == ["01_a.png"]
    assert [w.image for w in run.result.worst_images] == ["images/a.jpeg", "images/c.jpeg"]
    with Image.open(overlays[0]) as png:
        assert png.size == (420, 168 + 40)
        assert np.asarray(png.convert("RGB")).std() > 0


def test_rerun_replaces_old_overlays(split, tmp_path):
    gt, preds = split
    out = tmp_path / "eval"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays" / "07_stale.png").write_bytes(b"old")
    (out / "overlays" / "notes.txt").write_text("mine")
    evaluate_files(preds, gt, out, backend="pycocotools")
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["01_a.png", "notes.txt"]


def test_written_coco_files_score_the_same(split, tmp_path):
    gt, preds = split
    first = evaluate_files(preds, gt, backend="pycocotools")
    folder = preds.parent / "eval"
    again = evaluate_files(folder / "results_coco.json", folder / "gt_coco.json", tmp_path / "again", backend="pycocotools")
    assert again.predictions_format == "coco" and again.ground_truth_format == "coco"
    np.testing.assert_allclose(again.result.stats, first.result.stats, atol=1e-12, rtol=0)
    assert again.result.operating_point == first.result.operating_point
    assert "gt_coco" not in again.written  # a COCO ground truth is not copied


def test_write_eval_dir_without_predictions(split, tmp_path):
    gt_path, _ = split
    gt = read_ground_truth(gt_path)
    result = evaluate([], gt, backend="pycocotools")
    written = write_eval_dir(tmp_path / "empty", result, gt)
    assert json.loads(written["results_coco"].read_text()) == []
    assert "overlay_1" in written  # a's missed objects are drawn


def test_predictions_frame_survives_the_pipeline(split, tmp_path):
    gt, _ = split
    # Same boxes as the stored ones, declared in a 2x original frame.
    preds = tmp_path / "orig.jsonl"
    preds.write_text(json.dumps({"image": "images/b.jpeg", "width": 448, "height": 336,
                                 "objects": [{"bbox_2d": [20, 20, 80, 80], "desc": A, "score": 1.0}]}) + "\n")
    result = evaluate(read_predictions(preds, read_ground_truth(gt)), read_ground_truth(gt), backend="pycocotools")
    assert result.per_class[0].tp == 1


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_every_file_follows_the_umask(split, umask, mode):
    """PNGs (pr_curve, overlays) went through mkstemp and stayed 0600 on a shared machine."""
    gt, preds = split
    old = os.umask(umask)
    try:
        run = evaluate_files(preds, gt, backend="pycocotools")
    finally:
        os.umask(old)
    files = [p for p in run.out_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" for p in files)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: mode for p in files}
