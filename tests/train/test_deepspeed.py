"""DeepSpeed ZeRO-2 through the Trainer: one process (the launcher's environment set by hand) and
two ranks (gloo on the CPU, started by `bbu train --gpus 2`) give the plain run's first-step loss,
and their checkpoints load back. Plus the launcher command lines and the `--local_rank` argument.

The data of these runs packs into one row per step (max_tokens_per_batch 4096 holds both train
samples), so both ranks of the two-rank run train on the same row, as the plain run does: with
different rows per rank, the first step's loss would be another number by construction (it is
the mean over ranks, and the detection terms divide by the box count averaged over ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bbucli.errors import UsageError
from bbucli.model.checkpoint import load_checkpoint
from bbucli.train.launch import (
    free_port,
    is_launched,
    launch_command,
    single_process_env,
    strip_local_rank,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY, ZERO2 = CONFIGS / "tiny.yaml", CONFIGS / "deepspeed" / "zero2.json"


def bbu(
    *args: str, env: dict[str, str] | None = None, timeout: int = 400
) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bbucli", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
    )


def step_losses(out: Path) -> dict[int, float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def check_run(proc: subprocess.CompletedProcess, out: Path, plain_first: float) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (
        "step 1/2  loss" in proc.stderr and "final checkpoint" in proc.stdout
    )  # progress, summary
    losses = step_losses(out)
    assert sorted(losses) == [1, 2]
    assert losses[1] == pytest.approx(plain_first, rel=1e-6, abs=0.0)
    ckpt = out / "checkpoint-2"
    assert any(ckpt.glob("global_step*")) and (ckpt / "trainer_state.json").is_file()
    loaded = load_checkpoint(ckpt)
    assert loaded.meta["extra"]["step"] == 2
    load_checkpoint(out / "final")


def test_zero2_in_one_process_gives_the_plain_first_loss(plain_run, tiny_overrides, tmp_path):
    _, plain = plain_run
    out = tmp_path / "zero2"
    overrides = tiny_overrides(out, f"deepspeed={ZERO2}", "train.eval_strategy=no")
    env = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    check_run(bbu("train", str(TINY), *overrides, env=env), out, plain.losses[0][1])
    assert json.loads((out / "run.json").read_text())["world_size"] == 1


def test_zero2_on_two_ranks_gives_the_plain_first_loss(plain_run, tiny_overrides, tmp_path):
    _, plain = plain_run
    out = tmp_path / "zero2x2"
    overrides = tiny_overrides(out, f"deepspeed={ZERO2}", "train.eval_strategy=no")
    proc = bbu("train", str(TINY), *overrides, "--gpus", "2")
    check_run(proc, out, plain.losses[0][1])
    assert "deepspeed" in proc.stderr  # the launcher line
    ckpt = out / "checkpoint-2"
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()


def test_local_rank_before_the_subcommand_is_accepted(tiny_overrides, tmp_path):
    # What `deepspeed --module bbucli train ...` runs: python -m bbucli --local_rank=0 train ...
    proc = bbu(
        "--local_rank=0", "train", str(TINY), *tiny_overrides(tmp_path / "lr"), "--print-config"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# bbu ")


def test_launch_commands(tmp_path):
    plan = launch_command(
        "c.yaml", ["train.max_steps=5"], gpus=4, use_deepspeed=True, master_port=1234
    )
    assert plan.launcher == "deepspeed" and plan.argv[0] == sys.executable
    assert plan.argv[3:] == (
        "deepspeed.launcher.runner",
        "--num_gpus",
        "4",
        "--master_port",
        "1234",
        "--no_local_rank",
        "--module",
        "bbucli",
        "train",
        "c.yaml",
        "train.max_steps=5",
    )
    assert plan.env == {"OMP_NUM_THREADS": "1"}
    plan = launch_command("c.yaml", [], gpus=2, master_port=1234, environ={"OMP_NUM_THREADS": "4"})
    assert plan.launcher == "torchrun" and plan.env == {}
    assert plan.argv[3:] == (
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--nnodes",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        "1234",
        "-m",
        "bbucli",
        "train",
        "c.yaml",
    )
    hosts = tmp_path / "hostfile"
    hosts.write_text("node1 slots=8\nnode2 slots=8\n")
    plan = launch_command("c.yaml", [], gpus=8, nnodes=2, hostfile=hosts)
    assert plan.launcher == "deepspeed" and ("--hostfile", str(hosts)) == plan.argv[6:8]
    plan = launch_command(
        "c.yaml", [], gpus=8, nnodes=2, environ={"MASTER_ADDR": "n0", "NODE_RANK": "1"}
    )
    assert "--rdzv_endpoint" in plan.argv and "n0:29500" in plan.argv
    with pytest.raises(UsageError, match="MASTER_ADDR"):
        launch_command("c.yaml", [], gpus=8, nnodes=2)
    with pytest.raises(UsageError, match="hostfile"):
        launch_command(
            "c.yaml",
            [],
            gpus=8,
            nnodes=2,
            use_deepspeed=True,
            environ={"MASTER_ADDR": "n0", "NODE_RANK": "0"},
        )
    with pytest.raises(UsageError, match="does not exist"):
        launch_command("c.yaml", [], gpus=2, hostfile=tmp_path / "missing")


def test_local_rank_and_process_group_environment():
    assert strip_local_rank(["bbu", "--local_rank=3", "train", "c.yaml"]) == (
        ["bbu", "train", "c.yaml"],
        3,
    )
    assert strip_local_rank(["bbu", "train", "--local-rank", "1", "c.yaml"]) == (
        ["bbu", "train", "c.yaml"],
        1,
    )
    assert strip_local_rank(["bbu", "train", "c.yaml"]) == (["bbu", "train", "c.yaml"], None)
    launched = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}
    assert is_launched(launched) and single_process_env(launched) == {}
    assert single_process_env({"MASTER_PORT": "2999"}) == {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
    }
    assert single_process_env({})["MASTER_PORT"].isdigit()
