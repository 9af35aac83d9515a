"""`bbu eval PREDICTIONS --data GT` on predictions that are wrong in ways the metrics must show:
classes the ground truth lacks count as false positives, boxes past the image are scored as given
(the numbers pycocotools gives on the same files)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from bbucli.cli.app import app

runner = CliRunner()
A = "screw/bbu_install_screw/correct"
NONSENSE = "nonsense/class"


def invoke(*args: object):
    return runner.invoke(app, ["eval", *map(str, args)], env={"COLUMNS": "160"})


def test_a_file_of_nonsense_classes_scores_precision_zero(tmp_path: Path):
    student = {"images": ["images/a.jpeg"], "objects": [{"bbox_2d": [10, 10, 40, 40], "desc": A}]}
    gt = tmp_path / "val.jsonl"
    gt.write_text(json.dumps({"teachers": [], "student": student}) + "\n")
    preds = tmp_path / "preds.jsonl"
    objects = [{"bbox_2d": [100, 100, 130, 130], "desc": NONSENSE, "score": 0.95},  # on nothing
               {"bbox_2d": [10, 10, 40, 40], "desc": NONSENSE, "score": 0.9}]  # on the screw, wrong class
    preds.write_text(json.dumps({"image": "images/a.jpeg", "objects": objects}) + "\n")
    out = tmp_path / "out"
    result = invoke(preds, "--data", gt, "--backend", "pycocotools", "--out", out)
    assert result.exit_code == 0, result.output
    assert NONSENSE in result.output  # its own per-class row
    metrics = json.loads((out / "metrics.json").read_text())
    op = metrics["operating_point"]
    assert (op["tp"], op["fp"], op["fn"], op["unknown_category_fp"]) == (0, 1, 1, 1)
    assert (op["precision"], op["recall"], op["f1"]) == (0.0, 0.0, 0.0)
    assert metrics["counts"]["unknown_category_predictions"] == 2
    row = next(r for r in metrics["per_class"] if r["desc"] == NONSENSE)
    assert (row["category_id"], row["gt"], row["predictions"], row["ap"], row["fp"]) == (None, 0, 2, None, 1)
    # Class-agnostic AP counts them as detections: the FP on nothing ranks above the TP.
    assert metrics["class_agnostic"]["coco"]["AP50"] == pytest.approx(0.5, abs=1e-12)
    # F1 is 0 at every threshold, so the highest wins: only the box on nothing is kept.
    assert list(csv.reader((out / "confusion.csv").open())) == [
        ["ground truth \\ prediction", A, NONSENSE, "background"],
        [A, "0", "0", "1"],
        [NONSENSE, "0", "0", "0"],
        ["background", "0", "1", "0"],
    ]
    rows = {r[1]: r for r in csv.reader((out / "per_class.csv").open())}
    assert rows[NONSENSE][0] == "" and rows[NONSENSE][5] == "" and rows[NONSENSE][9] == "1"  # no id, no AP, 1 fp

def _plain_pycocotools(gt: Path, results: Path) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt))
        coco_dt = coco_gt.loadRes(str(results))
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [float(v) for v in e.stats]


def test_a_box_half_outside_the_image_scores_as_pycocotools_does(tmp_path: Path):
    gt = tmp_path / "instances.json"
    gt.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [60, 20, 40, 40], "area": 1600, "iscrowd": 0}],
        "categories": [{"id": 1, "name": A}],
    }))
    results = tmp_path / "results.json"
    # x 70..130: IoU 0.43 as given, 0.75 when clipped to the 100 px wide image.
    results.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [70, 20, 60, 40], "score": 0.9}]))
    out = tmp_path / "out"
    result = invoke(results, "--data", gt, "--backend", "pycocotools", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    plain = _plain_pycocotools(gt, results)
    assert metrics["coco"]["AP"] == pytest.approx(plain[0], abs=1e-12) and metrics["coco"]["AP50"] == pytest.approx(plain[1], abs=1e-12)
    assert metrics["coco"]["AP50"] == 0.0
    assert metrics["counts"]["out_of_image_predictions"] == 1
    assert any("reach outside the 100x100 image" in p and "scored as given" in p for p in metrics["problems"])
    written = json.loads((out / "results_coco.json").read_text())
    assert written[0]["bbox"] == pytest.approx([70, 20, 60, 40])  # written as scored, not clipped
