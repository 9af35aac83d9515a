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


def train(data: Path, train_file: Path, out: Path, *extra: str, val: Path | None = None):
    args = [
        str(TINY),
        f"data.train={train_file}",
        f"data.val={val or data / 'bbu.jsonl'}",
        f"data.teachers={data / 'bbu.teachers.jsonl'}",
        f"train.output_dir={out}",
        f"model.max_pixels={MAX_PIXELS}",
        *extra,
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


def test_an_empty_val_file_is_named_not_blamed_on_max_tokens(data, tmp_path):
    assert (data / "bbu.val.jsonl").read_text() == ""  # --val-ratio 0 on three images
    result = train(data, data / "bbu.jsonl", tmp_path / "out", val=data / "bbu.val.jsonl")
    assert result.exit_code == 1, result.output
    error = one_error_line(result.output)
    assert error == f"error: data.val {data / 'bbu.val.jsonl'} holds no episodes"
    assert "--val-ratio" in result.output and "data.val=null" in result.output
    assert "max_tokens" not in result.output
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_dir_is_refused_before_anything_is_built(data, tmp_path):
    blocker = (
        tmp_path / "file.txt"
    )  # a folder under a regular file: no one, root included, writes it
    blocker.write_text("a file, not a folder\n")
    out = blocker / "run"
    # This model folder passes validation but fails when the processor is built (no tokenizer):
    # the output_dir is checked before.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    result = train(data, data / "bbu.jsonl", out, f"model.path={tmp_path / 'model'}")
    assert result.exit_code == 2, result.output
    error = one_error_line(result.output)
    assert error.startswith(f"error: cannot write the train.output_dir {out}:")
    assert blocker.read_text() == "a file, not a folder\n"


QUICK = [
    "data.packing=false",
    "data.batch_size=12",  # one step draws every episode
    "data.max_tokens=4096",
    "detection.width=32",
    "detection.layers=1",
    "detection.heads=2",
    "detection.ffn=64",
    "detection.max_queries=64",
    "detection.caption_max_len=16",
    "train.logging_steps=1",
    "train.eval_strategy=no",
    "train.save_strategy=no",
    "data.val=null",
]


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> Path:
    """Twelve train episodes (one teacher pool image), every student image but the first
    truncated to half its bytes: headers read, pixels do not decode."""
    root = tmp_path_factory.mktemp("train_unreadable")
    generate_raw_set(root / "raw", 13, size=(256, 352), exif_rotated_every=0)
    options = ConvertOptions(val_ratio=0.0, pool=1, max_pixels=MAX_PIXELS)
    convert_dataset(root / "raw", root / "data" / "bbu.jsonl", options)
    data = root / "data"
    students = [
        json.loads(line)["student"]["images"][0]
        for line in (data / "bbu.jsonl").read_text("utf-8").splitlines()
    ]
    assert len(students) == 12
    for image in students[1:]:
        truncate(data / image)
    return data


def truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def test_a_truncated_image_is_skipped_and_counted(data, tmp_path):
    records = (data / "bbu.jsonl").read_text("utf-8").splitlines()
    image = json.loads(records[0])["student"]["images"][0]
    copy = tmp_path / "data"  # a copy of the converted set, its first student image truncated
    (copy / "images").mkdir(parents=True)
    for name in ("bbu.jsonl", "bbu.teachers.jsonl"):
        (copy / name).write_bytes((data / name).read_bytes())
    for file in (data / "images").iterdir():
        (copy / "images" / file.name).write_bytes(file.read_bytes())
    truncate(copy / image)
    out = tmp_path / "out"
    result = train(copy, copy / "bbu.jsonl", out, *QUICK, "train.max_steps=1")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert (
        "unreadable (skipped)" in result.output
        and f"cannot decode image {copy / image}" in result.output
    )
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(log.get("unreadable_samples", 0) for log in logs) == 1
    assert (out / "final" / "head.safetensors").is_file()


def test_more_unreadable_samples_than_tolerated_stop_the_run(twelve, tmp_path):
    out = tmp_path / "out"
    # In a DataLoader worker: the counts reach the Trainer with the batch.
    result = train(
        twelve, twelve / "bbu.jsonl", out, *QUICK, "train.max_steps=2", "data.num_workers=1"
    )
    assert result.exit_code == 1, result.output
    error = one_error_line(result.output)
    assert error.startswith(
        "error: training stopped at step 1: 11 samples skipped because their images cannot be read, more than the 10 tolerated"
    )
    assert "cannot decode image" in error and "--verify-images" in result.output
    assert not (out / "final").exists()
