"""Resume: a run killed with SIGKILL after its checkpoint at step 3 continues from it, and steps 4
and 5 have the losses of an uninterrupted run (same seed, CPU, fp32), and end with its weights.

One sample per row (max_tokens_per_batch 1024) gives two rows per epoch, so checkpoint-3 lies in
the middle of the second epoch: resuming restores the weights, optimizer, scheduler and RNG,
skips the row already trained in that epoch, then starts the third epoch with its own order and
its own teachers (re-drawn from the pool every epoch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from bbucli.model.checkpoint import load_checkpoint
from bbucli.train.config.loading import load_config
from bbucli.train.run import run_training

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
LONGER = (
    "data.max_tokens_per_batch=1024",
    "data.teacher_resample=true",
    "train.max_steps=5",
    "train.save_steps=3",
    "train.eval_strategy=no",
)


def test_a_killed_run_resumes_with_the_uninterrupted_losses(tiny_overrides, tmp_path, monkeypatch):
    # Bitwise equality needs the same CPU reduction order in every run: one intra-op thread here
    # and in the killed child (other tests may have changed this process's thread count).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        _killed_run_resumes(tiny_overrides, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _killed_run_resumes(tiny_overrides, tmp_path):
    reference = run_training(load_config(TINY, tiny_overrides(tmp_path / "reference", *LONGER)))
    assert [s for s, _ in reference.losses] == [1, 2, 3, 4, 5]

    out = tmp_path / "killed"
    overrides = tiny_overrides(out, *LONGER)
    log = (tmp_path / "killed.log").open("w")
    child = subprocess.Popen(
        [sys.executable, "-m", "bbucli", "train", str(TINY), *overrides],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    marker = out / "checkpoint-3" / "trainer_state.json"  # the Trainer writes it last
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert child.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint-3 within 5 minutes"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert not (out / "final").exists(), "the run ended before it was killed"

    resumed = run_training(load_config(TINY, [*overrides, "train.resume=true"]))
    assert resumed.resumed_from == out / "checkpoint-3" and resumed.global_step == 5
    expected = dict(reference.losses)
    assert [s for s, _ in resumed.losses] == [4, 5]
    for step, loss in resumed.losses:
        assert loss == expected[step], (step, loss, expected[step])

    ours = load_checkpoint(resumed.final_checkpoint).model.state_dict()
    theirs = load_checkpoint(reference.final_checkpoint).model.state_dict()
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name
