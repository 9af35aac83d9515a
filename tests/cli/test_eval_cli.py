"""`bbu eval PREDICTIONS --data GT` through Typer's runner: exit codes 0/1/2, tables, --json,
problems by line, the checkpoint-folder message, --help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbucli.cli.app import app

runner = CliRunner()
A = "screw/bbu_install_screw/correct"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    student = {"images": ["images/a.jpeg"], "objects": [{"bbox_2d": [10, 10, 40, 40], "desc": A}]}
    gt = tmp_path / "val.jsonl"
    gt.write_text(json.dumps({"teachers": [], "student": student}) + "\n")
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n".join([
        json.dumps({"image": "images/a.jpeg", "objects": [{"bbox_2d": [10, 10, 40, 40], "desc": A, "score": 0.9}]}),
        "not json at all",
        json.dumps({"image": "images/ghost.jpeg", "objects": []}),
    ]) + "\n")
    return gt, preds


def invoke(*args: object):
    return runner.invoke(app, ["eval", *map(str, args)], env={"COLUMNS": "160"})


def test_scores_and_prints_tables(files, tmp_path):
    gt, preds = files
    result = invoke(preds, "--data", gt, "--backend", "pycocotools", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    for text in ("AP / AP50 / AP75", "1.000 / 1.000 / 1.000", "per class", A, "defect escape rate", "pycocotools",
                 "preds.jsonl:2", "invalid JSON", "preds.jsonl:3", "ghost.jpeg", "metrics.json"):
        assert text in result.output, text
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_json_prints_metrics_only(files, tmp_path):
    gt, preds = files
    result = invoke(preds, "--data", gt, "--backend", "pycocotools", "--json", "--threshold", "0.5", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["coco"]["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["operating_point"]["threshold"] == 0.5 and metrics["operating_point"]["chosen_by"] == "given"
    assert any(p.startswith(f"{preds}:2: invalid JSON") for p in metrics["problems"])


def test_default_out_is_eval_beside_predictions(files):
    gt, preds = files
    assert invoke(preds, "--data", gt, "--backend", "pycocotools").exit_code == 0
    assert (preds.parent / "eval" / "pr_curve.png").is_file()


def test_a_folder_is_a_checkpoint_not_yet_supported(files, tmp_path):
    gt, _ = files
    result = invoke(tmp_path, "--data", gt)
    assert result.exit_code == 2
    assert "scoring a checkpoint arrives with the training stage" in result.output
    assert "pass a predictions file" in result.output


def test_unusable_ground_truth_exits_1(files, tmp_path):
    _, preds = files
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{broken\n")
    result = invoke(preds, "--data", bad)
    assert result.exit_code == 1
    assert "error:" in result.output and "no usable episode" in result.output


def test_missing_files_and_bad_options_exit_2(files, tmp_path):
    gt, preds = files
    assert invoke(tmp_path / "nope.jsonl", "--data", gt).exit_code == 2
    assert invoke(preds).exit_code == 2  # --data is required
    assert invoke(preds, "--data", gt, "--backend", "tensorflow").exit_code == 2


def test_help_shows_examples():
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0
    assert "bbu eval runs/preds.jsonl --data" in result.output and "--threshold" in result.output
