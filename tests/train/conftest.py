"""Fixtures of the training tests: `configs/tiny.yaml` with overrides that keep each run short.

`tiny_data`: synthetic vendor photos (448x616) through `convert_dataset` at max_pixels 64*28*28,
each image cut to its first object, so one sample is about 650 tokens and a training step of the
tiny model takes about a second on two CPU cores (the LM head over the real 152k vocabulary is
most of it): 2 train episodes, 1 val, 2 in the teacher pool.
`tiny_overrides(out_dir, *more)`: the `key=value` list pointing tiny.yaml at that data and
`out_dir`, with a small detection head, two steps, a checkpoint and an eval at step 2, every step
logged, no warmup, and a packed row holding both train samples. `plain_run`: tiny.yaml with those
overrides trained in this process once, the reference the DeepSpeed runs compare with.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bbucli.convert.pipeline import ConvertOptions, convert_dataset
from bbucli.demo.synthetic import generate_raw_set

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
MAX_PIXELS = 64 * 28 * 28
SHORT = (
    f"model.max_pixels={MAX_PIXELS}",
    "data.max_tokens=1024",
    "data.max_tokens_per_batch=4096",
    "detection.width=32",
    "detection.layers=1",
    "detection.heads=2",
    "detection.ffn=64",
    "detection.max_queries=64",
    "detection.caption_max_len=16",
    "train.max_steps=2",
    "train.logging_steps=1",
    "train.save_steps=2",
    "train.eval_steps=2",
    "train.warmup_steps=0",
    "train.lr_scheduler_type=linear",
)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The folder holding bbu.jsonl, bbu.val.jsonl, bbu.teachers.jsonl and images/."""
    root = tmp_path_factory.mktemp("train_data")
    generate_raw_set(root / "raw", 5, size=(448, 616), exif_rotated_every=0)
    options = ConvertOptions(val_ratio=0.34, pool=2, max_pixels=MAX_PIXELS)
    convert_dataset(root / "raw", root / "data" / "bbu.jsonl", options)
    for name in ("bbu.jsonl", "bbu.val.jsonl", "bbu.teachers.jsonl"):
        path = root / "data" / name
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        for record in records:
            for sample in (record["student"], *record["teachers"]):
                sample["objects"] = sample["objects"][:1]
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return root / "data"


@pytest.fixture(scope="session")
def tiny_overrides(tiny_data):
    """make(out_dir, *more) -> overrides of configs/tiny.yaml (`more` last, so they win)."""

    def make(out_dir: Path, *more: str) -> list[str]:
        data = [
            f"data.{key}={tiny_data / name}"
            for key, name in (
                ("train", "bbu.jsonl"),
                ("val", "bbu.val.jsonl"),
                ("teachers", "bbu.teachers.jsonl"),
            )
        ]
        return [*data, f"train.output_dir={out_dir}", *SHORT, *more]

    return make


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory, tiny_overrides):
    """(overrides, TrainResult) of tiny.yaml trained in this process (no DeepSpeed)."""
    from bbucli.train.config.loading import load_config
    from bbucli.train.run import run_training

    overrides = tiny_overrides(tmp_path_factory.mktemp("plain") / "run")
    return overrides, run_training(load_config(TINY, overrides))
