"""`bbu train` on hostile JSONL through Typer's runner: a line that is not UTF-8 and a box past its
image each stop the run with one `error:` line (exit 1) before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbucli.cli.app import app
from bbucli.convert.pipeline import ConvertOptions, convert_dataset
from bbucli.demo.synthetic import generate_raw_set

runner = CliRunner()
TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
MAX_PIXELS = 64 * 28 * 28


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_hostile")
    generate_raw_set(root / "raw", 3, size=(448, 616), exif_rotated_every=0)
    options = ConvertOptions(val_ratio=0.0, pool=1, max_pixels=MAX_PIXELS)
    convert_dataset(root / "raw", root / "data" / "bbu.jsonl", options)
    return root / "data"


def train(data: Path, train_file: Path, out: Path):
    args = [
        str(TINY),
        f"data.train={train_file}",
        f"data.val={data / 'bbu.jsonl'}",
        f"data.teachers={data / 'bbu.teachers.jsonl'}",
        f"train.output_dir={out}",
        f"model.max_pixels={MAX_PIXELS}",
    ]
    return runner.invoke(app, ["train", *args], env={"COLUMNS": "400"})


def one_error_line(output: str) -> str:
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


def test_a_line_that_is_not_utf8_is_a_schema_error_naming_file_and_line(data, tmp_path):
    lines = (data / "bbu.jsonl").read_bytes().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join([lines[0], b'{"student": "caf\xe9"}', *lines[1:]]) + b"\n")
    result = train(data, bad, tmp_path / "out")
    assert result.exit_code == 1, result.output
    error = one_error_line(result.output)
    assert "1 malformed record(s)" in error
    assert f"{bad}:2: not UTF-8 text: byte 0xe9 at byte 17" in error
    assert not (tmp_path / "out").exists()


def test_a_box_past_the_image_is_refused_with_a_count(data, tmp_path):
    records = [json.loads(line) for line in (data / "bbu.jsonl").read_text("utf-8").splitlines()]
    records[0]["student"]["objects"][0]["bbox_2d"] = [0, 0, 5000, 5000]
    bad = data / "past.jsonl"  # beside the images: their paths are relative to the JSONL
    bad.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    result = train(data, bad, tmp_path / "out")
    assert result.exit_code == 1, result.output
    error = one_error_line(result.output)
    assert "train: 1 box(es) outside their image, in 1 image(s)" in error
    assert "[0, 0, 5000, 5000]" in error
    assert not (tmp_path / "out").exists()
