"""`bbu convert` through Typer's runner: exit codes 0/1/2, the error line, --strict, --dry-run, --help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bbucli.cli.app import app

runner = CliRunner()
ZH = "连接点（螺丝）/BBU安装螺丝/连接正确"


def vendor(folder: Path, stem: str, label: str = ZH) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (280, 210), (90, 90, 90)).save(folder / f"{stem}.jpeg", quality=90)
    ring = [[10, 10], [50, 10], [50, 50], [10, 50], [10, 10]]
    feature = {"geometry": {"type": "ExtentPolygon", "coordinates": [ring]}, "properties": {"contentZh": {"标签": label}}}
    data = {"info": {"width": 280, "height": 210}, "markResult": {"features": [feature]}}
    (folder / f"{stem}.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    for i in range(5):
        vendor(tmp_path / "raw", f"QC-{i}")
    return tmp_path / "raw"


def invoke(*args: str):
    return runner.invoke(app, ["convert", *map(str, args)])


def test_converts_and_prints_the_summary(raw, tmp_path):
    out = tmp_path / "out" / "d.jsonl"
    result = invoke(raw, out, "--teachers", "1", "--pool", "1", "--val-ratio", "0.25", "--lang", "en")
    assert result.exit_code == 0, result.output
    for text in ("images", "5 kept of 5", "screw/bbu_install_screw/correct", "teacher pool", "train 3, val 1, teachers 1", "d.report.json"):
        assert text in result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["d.jsonl", "d.report.json", "d.teachers.jsonl", "d.val.jsonl", "images"]


def test_dry_run_writes_nothing(raw, tmp_path):
    result = invoke(raw, tmp_path / "out" / "d.jsonl", "--dry-run")
    assert result.exit_code == 0 and "dry run" in result.output
    assert not (tmp_path / "out").exists()


def test_strict_fails_on_any_issue_and_shows_it(raw, tmp_path):
    vendor(raw, "odd", label="神秘/东西")
    out = tmp_path / "out" / "d.jsonl"
    assert invoke(raw, out).exit_code == 0  # not strict: dropped and counted
    out.parent.joinpath("d.jsonl").unlink()
    result = invoke(raw, out, "--strict")
    assert result.exit_code == 1
    assert "odd.json" in result.output and "unknown_label" in result.output
    assert "error: --strict:" in result.output
    assert not out.exists()


def test_unknown_error_is_one_error_line_exit_1(raw, tmp_path):
    vendor(raw, "odd", label="神秘/东西")
    result = invoke(raw, tmp_path / "d.jsonl", "--unknown", "error")
    assert result.exit_code == 1
    assert "error: odd.json: unknown label '神秘/东西'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--unknown", "maybe"],
        ["--levels", "4"],
        ["--lang", "fr"],
        ["--val-ratio", "1.5"],
    ],
)
def test_bad_options_exit_2(raw, tmp_path, args):
    result = invoke(raw, tmp_path / "d.jsonl", *args)
    assert result.exit_code == 2


def test_bad_paths_and_taxonomy_exit_2(raw, tmp_path):
    assert invoke(tmp_path / "nowhere", tmp_path / "d.jsonl").exit_code == 2
    result = invoke(raw, tmp_path / "d.json")
    assert result.exit_code == 2 and "error: output must end in .jsonl" in result.output
    bad = tmp_path / "tax.yaml"
    bad.write_text("version: 1\nclasses: []\n", encoding="utf-8")
    result = invoke(raw, tmp_path / "d.jsonl", "--taxonomy", bad)
    assert result.exit_code == 2 and "error: " in result.output and "tax.yaml" in result.output


def test_empty_folder_is_an_error_not_a_crash(tmp_path):
    (tmp_path / "raw").mkdir()
    result = invoke(tmp_path / "raw", tmp_path / "d.jsonl")
    assert result.exit_code == 1 and "error: no usable image" in result.output


def test_help_shows_an_example():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "bbu convert examples/raw" in result.output and "--dry-run" in result.output and "--teachers" in result.output
