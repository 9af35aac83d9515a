"""The loop a user runs: `bbu eval CKPT` on the checkpoint `bbu train configs/tiny.yaml` wrote,
scored against the val split named in that checkpoint's config."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from bbucli.cli.app import app


def test_eval_runs_on_the_trained_tiny_checkpoint(plain_run, tmp_path):
    _, result = plain_run
    val_jsonl = yaml.safe_load((result.final_checkpoint / "config.yaml").read_text())["data"]["val"]
    val_images = sum(1 for line in Path(val_jsonl).read_text(encoding="utf-8").splitlines() if line.strip())
    out = tmp_path / "eval"
    run = CliRunner().invoke(
        app,
        [
            "eval",
            str(result.final_checkpoint),
            "--source",
            "both",
            "--max-new-tokens",
            "16",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert run.exit_code == 0, run.output
    for source in ("head", "lm"):
        metrics = json.loads((out / source / "metrics.json").read_text(encoding="utf-8"))
        # Every val image is scored, and AP is a number (0 for a two-step model is fine).
        assert metrics["counts"]["images"] == val_images >= 1
        ap50 = metrics["coco"]["AP50"]
        assert ap50 is not None and 0.0 <= ap50 <= 1.0
        assert (out / source / "pr_curve.png").is_file()
        assert (out / source / "predictions.jsonl").is_file()
        lines = (out / source / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) >= 1 and all(json.loads(line)["source"] == source for line in lines)
