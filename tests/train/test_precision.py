"""What a run derives from its config for precision and DDP: half weights without DeepSpeed train
as fp32 master weights under autocast (torch AdamW on bf16 weights would drop most fine-tuning
updates), and the parameters the loss never reaches are frozen (DDP expects a gradient for every
trainable one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bbucli.train.build import build_run
from bbucli.train.config.loading import InvalidConfigError, load_config

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
ZERO2 = TINY.parent / "deepspeed" / "zero2.json"
FINE_TUNING = tuple(
    f"optim.lrs.{g}=1e-5" for g in ("vision", "merger", "llm", "detection", "adapter")
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_half_weights_without_deepspeed_mean_fp32_master_weights_under_autocast(
    tiny_overrides, tmp_path
):
    def config(*more: str):
        overrides = tiny_overrides(tmp_path / "run", *more)
        return load_config(TINY, overrides, target="gpu", check_paths=False)

    assert config("model.dtype=bf16").autocast(gpu=True) == "bf16"
    assert config("model.dtype=fp16").autocast(gpu=True) == "fp16"
    assert (
        config("model.dtype=bf16", f"deepspeed={ZERO2}", "train.bf16=true").autocast(gpu=True)
        is None
    )
    assert config("model.dtype=fp32").autocast(gpu=True) is None
    # "auto" is bf16 for a checkpoint folder on a GPU, fp32 for tiny or on a CPU.
    folder = config(f"model.path={tmp_path}", "model.dtype=auto")
    assert folder.autocast(gpu=True) == "bf16" and folder.autocast(gpu=False) is None
    # The resume hint for a checkpoint written without DeepSpeed: configs/3b.yaml deepspeed=null.
    gpu_config = load_config(
        TINY.parent / "3b.yaml", ["deepspeed=null"], target="gpu", check_paths=False
    )
    assert gpu_config.autocast(gpu=True) == "bf16"
    # train.bf16 false would silently make it fp32 training: refused, naming the fix.
    with pytest.raises(InvalidConfigError, match=r"train\.bf16.*model\.dtype=fp32"):
        config("model.dtype=bf16", "train.bf16=false")


def test_bf16_without_deepspeed_updates_nearly_every_weight_at_a_fine_tuning_rate(
    tiny_overrides, tmp_path
):
    """What `deepspeed=null` on configs/3b.yaml (bf16) gives: two AdamW steps at lr 1e-5 move
    nearly every trainable weight (fp32 master weights; bf16 weights updated in place: few)."""
    overrides = tiny_overrides(
        tmp_path / "run",
        "model.dtype=bf16",
        *FINE_TUNING,
        "train.eval_strategy=no",
        "train.save_strategy=no",
    )
    parts = build_run(load_config(TINY, overrides, target="gpu"), None)
    trainer = parts.trainer
    assert trainer.args.bf16 and not trainer.args.fp16
    params = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in params.values()} == {torch.float32}
    before = {n: p.detach().clone() for n, p in params.items()}
    trainer.train()
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in params.items())
    share = changed / sum(p.numel() for p in params.values())
    assert share > 0.95, share


def test_parameters_the_loss_never_reaches_are_frozen(tiny_overrides, tmp_path):
    """Plain DDP runs without find_unused_parameters (the caption loss runs head parameters
    outside forward, which DDP's search would mark ready twice), so a trainable parameter that
    gets no gradient fails the second step on several devices: a run freezes what the loss never
    reaches (`MultiTaskLoss.idle_parameters`, checked setting by setting against a backward in
    tests/loss/test_multitask.py), and only that."""
    for setting, frozen in (
        ((), set()),
        (("loss.objectness_weight=0",), {"obj_head", "token_score_head"}),
    ):
        overrides = tiny_overrides(tmp_path / "run", *setting)
        trainer = build_run(load_config(TINY, overrides), None).trainer
        assert trainer.args.ddp_find_unused_parameters is False
        off = {n.split(".")[-2] for n, p in trainer.model.named_parameters() if not p.requires_grad}
        assert off == frozen, setting


def test_two_ranks_of_plain_ddp_train_past_the_second_step_with_a_term_off(
    tiny_overrides, tmp_path
):
    """`bbu train --gpus 2` on the CPU (torchrun, gloo) with loss.objectness_weight=0: DDP checks
    at the second step that every trainable parameter got its gradient in the first."""
    out = tmp_path / "ddp"
    overrides = tiny_overrides(
        out, "loss.objectness_weight=0", "train.eval_strategy=no", "train.save_strategy=no"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run(
        [sys.executable, "-m", "bbucli", "train", str(TINY), *overrides, "--gpus", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "torchrun" in proc.stderr
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in logs if "loss" in r) == [1, 2]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
