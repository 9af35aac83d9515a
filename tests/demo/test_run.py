"""`run_demo` end to end on CPU, shortened: a generated set of 6 small images, a tiny head, a few
steps; every artefact is written, the metrics are numbers and the training loss falls. The CLI
runs the same loop through Typer's runner."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from bbucli.cli.app import app
from bbucli.demo.run import run_demo, steps_for_budget
from bbucli.errors import UsageError

MAX_PIXELS = 64 * 28 * 28
STEPS = 6
SHORT = (
    "data.max_tokens=2048", "data.max_tokens_per_batch=4096",
    "detection.width=32", "detection.layers=1", "detection.heads=2", "detection.ffn=64",
    "detection.max_queries=64", "detection.caption_max_len=16",
    "train.logging_steps=1", f"train.save_steps={STEPS}", f"train.eval_steps={STEPS}",
    "train.warmup_steps=0", "train.lr_scheduler_type=constant",
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo") / "out"
    return run_demo(
        out, max_steps=STEPS, use_examples=False, n_images=6, seed=0, image_size=(448, 616),
        max_pixels=MAX_PIXELS, val_ratio=0.34, overrides=SHORT, lm_images=1, lm_max_new_tokens=24,
    )


def test_demo_writes_every_artefact(demo):
    assert demo.generated and demo.raw_dir == demo.out_dir / "raw"
    for path in (demo.data, demo.data.with_name("bbu.val.jsonl"), demo.data.with_name("bbu.report.json"),
                 demo.run_dir / "config.yaml", demo.checkpoint, demo.eval_dir / "metrics.json",
                 demo.eval_dir / "pr_curve.png", demo.out_dir / "demo.json"):
        assert path.exists(), path
    assert any((demo.data.parent / "images").iterdir())
    assert all(path.exists() for _, path in demo.look_next)
    assert {p for _, p in demo.look_next} >= {demo.data, demo.checkpoint, demo.eval_dir / "metrics.json"}
    assert demo.summary.episodes > 0 and demo.train.global_step == STEPS
    saved = json.loads((demo.out_dir / "demo.json").read_text(encoding="utf-8"))
    assert saved["max_steps"] == STEPS and saved["checkpoint"] == str(demo.checkpoint)
    # The demo's own settings reached the run, and the generated answers were scored.
    resolved = (demo.run_dir / "config.yaml").read_text(encoding="utf-8")
    assert "token_boxes: true" in resolved and "num_teachers: 0" in resolved
    assert demo.lm_images == 1 and 0 <= demo.lm_parsed <= 1 and saved["lm_images"] == 1
    lines = (demo.eval_dir / "lm" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and "raw" in json.loads(lines[0])
    assert demo.eval_dir / "lm" / "predictions.jsonl" in {p for _, p in demo.look_next}


@pytest.fixture(scope="module")
def few_shot(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo") / "k1"
    return run_demo(
        out, max_steps=2, teachers=1, n_images=6, seed=0, image_size=(448, 616),
        max_pixels=MAX_PIXELS, val_ratio=0.34, overrides=SHORT, lm_images=0,
    )


def test_demo_with_one_teacher_converts_trains_and_evaluates_with_it(few_shot):
    episodes = [
        json.loads(line)
        for split in (few_shot.data, few_shot.data.with_name("bbu.val.jsonl"))
        for line in split.read_text(encoding="utf-8").splitlines()
    ]
    assert episodes and all(len(episode["teachers"]) == 1 for episode in episodes)
    resolved = (few_shot.run_dir / "config.yaml").read_text(encoding="utf-8")
    assert "num_teachers: 1" in resolved and "teacher_resample: true" in resolved
    # Every student was trained behind its teacher: the teacher's answer tokens have a loss.
    assert few_shot.train.train.teachers_dropped == 0
    assert few_shot.train.last_logs["teacher_lm"] > 0
    # The evaluation prompted every val image with one teacher too.
    run = json.loads((few_shot.eval_dir / "inference.json").read_text(encoding="utf-8"))
    assert run["teachers"] == 1 and run["teachers_mean"] == 1
    assert few_shot.teachers == 1 and json.loads((few_shot.out_dir / "demo.json").read_text())["teachers"] == 1


def test_demo_metrics_are_numbers_and_loss_falls(demo):
    for value in (demo.ap50, demo.ap):
        assert isinstance(value, float) and math.isfinite(value) and 0 <= value <= 1
    assert demo.first_loss is not None and demo.last_loss is not None
    assert demo.last_loss < demo.first_loss


def test_demo_refuses_a_used_folder_and_two_lengths(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "file").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        run_demo(tmp_path / "old", max_steps=1)
    with pytest.raises(UsageError, match="not both"):
        run_demo(tmp_path / "new", max_steps=1, minutes=1)
    with pytest.raises(UsageError, match="--teachers must be >= 0"):
        run_demo(tmp_path / "new", max_steps=1, teachers=-1)


def test_steps_for_budget():
    assert steps_for_budget(10, 0.4, share=0.6) == 900
    assert steps_for_budget(0.001, 100) == 1


def test_cli_demo_help_and_error_line(tmp_path):
    runner = CliRunner()
    shown = runner.invoke(app, ["demo", "--help"])
    assert shown.exit_code == 0 and "--minutes" in shown.output and "--teachers" in shown.output
    used = tmp_path / "used"
    used.mkdir()
    (used / "file").write_text("x")
    failed = runner.invoke(app, ["demo", "--out", str(used), "--steps", "1"])
    assert failed.exit_code == 2
    assert "error:" in failed.output and "not empty" in failed.output
