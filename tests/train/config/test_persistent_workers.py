"""Persistent DataLoader workers keep the dataset copy of the first epoch, so with a per-epoch
teacher re-draw they would train on the first epoch's teachers forever: the config refuses it."""

from __future__ import annotations

from pathlib import Path

from bbucli.train.config.loading import load_config
from tests.train.config.config_files import minimal, problems_of, write

REDRAW = {"teacher_resample": True, "num_workers": 2}


def test_persistent_workers_with_a_teacher_redraw_are_refused(tmp_path: Path, data_dir: Path):
    body = minimal(data=REDRAW, train={"dataloader_persistent_workers": True})
    found = problems_of(write(tmp_path, body), target="cpu")
    message = found["train.dataloader_persistent_workers"]
    assert "data.teacher_resample" in message and "first epoch's teachers" in message


def test_either_one_alone_is_fine(tmp_path: Path, data_dir: Path):
    alone = [
        minimal(data=REDRAW),
        minimal(data={"num_workers": 2}, train={"dataloader_persistent_workers": True}),
        minimal(data={**REDRAW, "num_workers": 0}, train={"dataloader_persistent_workers": True}),
    ]
    for n, body in enumerate(alone):
        cfg = load_config(write(tmp_path, body, f"run{n}.yaml"), target="cpu")
        assert cfg.data.num_workers in (0, 2)
