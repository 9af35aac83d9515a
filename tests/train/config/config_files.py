"""Shared by the config tests: the shipped configs, a config file writer, a minimal valid config
and the problems `load_config` reports for a file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bbucli.train.config.loading import InvalidConfigError, load_config

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def write(tmp_path: Path, body: dict | str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    text = body if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def minimal(**sections) -> dict:
    """A valid CPU config with data/bbu*.jsonl next to the YAML, updated per section."""
    cfg = {
        "model": {"path": "tiny", "dtype": "fp32", "attn": "sdpa"},
        "data": {
            "train": "data/bbu.jsonl",
            "val": "data/bbu.val.jsonl",
            "teachers": "data/bbu.teachers.jsonl",
        },
        "train": {"output_dir": "out"},
    }
    for name, values in sections.items():
        cfg[name] = values if not isinstance(cfg.get(name), dict) else {**cfg[name], **values}
    return cfg


def problems_of(path: Path, overrides=(), **kwargs) -> dict[str, str]:
    with pytest.raises(InvalidConfigError) as info:
        load_config(path, overrides, **kwargs)
    return {p.where: p.message for p in info.value.problems}
