"""Fixtures of the config tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A folder with the three JSONL files `bbu convert` writes (contents are not read here)."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("bbu.jsonl", "bbu.val.jsonl", "bbu.teachers.jsonl"):
        (folder / name).write_text("", encoding="utf-8")
    return folder
