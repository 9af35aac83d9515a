"""`bbu train` through Typer's runner: --print-config with overrides, --dry-run, config errors as
one error block with exit code 2, the launcher options' checks. Training itself runs in
tests/train (in this process and under DeepSpeed, through `python -m bbucli train`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bbucli.cli.app import app
from bbucli.convert.pipeline import ConvertOptions, convert_dataset
from bbucli.demo.synthetic import generate_raw_set

runner = CliRunner()
TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
MAX_PIXELS = 64 * 28 * 28


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    """`bbu train configs/tiny.yaml` arguments (the config and its overrides) pointing at converted
    synthetic data (one object per image) with a tiny detection head and a fresh output folder."""
    root = tmp_path_factory.mktemp("train_cli")
    generate_raw_set(root / "raw", 4, size=(448, 616), exif_rotated_every=0)
    convert_dataset(
        root / "raw",
        root / "data" / "bbu.jsonl",
        ConvertOptions(val_ratio=0.5, pool=1, max_pixels=MAX_PIXELS),
    )
    for name in ("bbu.jsonl", "bbu.val.jsonl", "bbu.teachers.jsonl"):
        path = root / "data" / name
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        for record in records:
            for sample in (record["student"], *record["teachers"]):
                sample["objects"] = sample["objects"][:1]
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    data = root / "data"
    return [
        str(TINY),
        f"data.train={data / 'bbu.jsonl'}",
        f"data.val={data / 'bbu.val.jsonl'}",
        f"data.teachers={data / 'bbu.teachers.jsonl'}",
        f"train.output_dir={root / 'out'}",
        f"model.max_pixels={MAX_PIXELS}",
        "data.max_tokens=1024",
        "data.max_tokens_per_batch=2048",
        "detection.width=32",
        "detection.layers=1",
        "detection.heads=2",
        "detection.ffn=64",
        "detection.max_queries=64",
        "detection.caption_max_len=16",
    ]


def test_print_config_applies_overrides_and_writes_nothing(tiny):
    result = runner.invoke(
        app,
        [
            "train",
            *tiny,
            "train.max_steps=7",
            "optim.lrs.llm=2e-5",
            "data.packing=false",
            "--print-config",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# bbu ")
    printed = yaml.safe_load(result.output)
    assert printed["train"]["max_steps"] == 7 and printed["optim"]["lrs"]["llm"] == 2e-5
    assert printed["data"]["packing"] is False and printed["detection"]["width"] == 32
    assert printed["train"]["num_train_epochs"] == 20  # from tiny.yaml
    out = Path(printed["train"]["output_dir"])
    assert printed["data"]["train"] == str(out.parent / "data" / "bbu.jsonl") and not out.exists()


def test_config_errors_exit_2_with_every_problem(tiny):
    result = runner.invoke(
        app,
        [
            "train",
            *tiny,
            "train.max_stepz=3",
            "optim.lrs.llm=fast",
            "data.val=nowhere.jsonl",
            "train.bf16=true",
        ],
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0] == f"error: invalid config {TINY} (4 problems):"
    text = result.output
    assert "train.max_stepz: unknown key, did you mean 'max_steps'?" in text
    assert "optim.lrs.llm: input should be a valid number" in text
    assert "data.val:" in text and "does not exist" in text
    assert "train.bf16:" in text and "CPU" in text
    assert lines[-1].startswith("hint:") and "Traceback" not in text


def test_bad_command_lines_exit_2(tiny, tmp_path):
    missing = runner.invoke(app, ["train", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    resume = runner.invoke(app, ["train", *tiny, "--resume", str(tmp_path / "ckpt")])
    assert resume.exit_code == 2 and "train.resume" in resume.output
    assert runner.invoke(app, ["train", *tiny, "--gpus", "0"]).exit_code == 2
    bad = runner.invoke(app, ["train", *tiny, "--launcher", "mpi", "--gpus", "2"])
    assert bad.exit_code == 2 and "--launcher" in bad.output
    syntax = runner.invoke(app, ["train", *tiny, "train.max_steps"])
    assert syntax.exit_code == 2 and "expected key=value" in syntax.output


def test_local_rank_option_is_accepted(tiny):
    # Launchers may pass it after the sub-command too; the rank comes from LOCAL_RANK.
    result = runner.invoke(app, ["train", *tiny, "--local_rank", "1", "--print-config"])
    assert result.exit_code == 0, result.output


def test_dry_run_prints_shapes_groups_and_memory(tiny):
    result = runner.invoke(app, ["train", *tiny, "optim.lrs.vision=0", "--dry-run"])
    assert result.exit_code == 0, result.output
    text = result.output
    for expected in (
        "batch.input_ids",
        "batch.pixel_values",
        "output.head.logits",
        "parameter groups",
        "frozen",
        "peak rss",
        "nothing written",
        "student_lm",
    ):
        assert expected in text, expected
    assert not Path(tiny[4].removeprefix("train.output_dir=")).exists()


def test_tensorboard_without_the_package_is_a_config_error(tiny, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a),
    )
    result = runner.invoke(app, ["train", *tiny, "train.report_to=[tensorboard]"])
    assert result.exit_code == 2
    assert "tensorboard" in result.output and "pip install tensorboard" in result.output
