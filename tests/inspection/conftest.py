"""Fixtures: `converted`, examples/raw through `bbu convert`'s library call (real JPEGs, real
JSONL), once per session; `records`, its lines as dicts; `make_bad`, a builder of a file with
broken lines beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bbucli.convert.pipeline import ConvertOptions, convert_dataset

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "raw"


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> Path:
    """The train JSONL of the converted examples (9 episodes, one teacher each)."""
    out = tmp_path_factory.mktemp("converted") / "data.jsonl"
    convert_dataset(EXAMPLES, out, ConvertOptions(val_ratio=0.25))
    return out


def episode_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="session")
def records(converted) -> list[dict]:
    return episode_lines(converted)


@pytest.fixture(scope="session")
def make_bad(converted):
    return lambda name="bad.jsonl": bad_file(converted, name)


def bad_file(converted: Path, name: str = "bad.jsonl") -> tuple[Path, dict[int, str]]:
    """A JSONL beside `converted` (same images) holding good episodes and, at known lines, a line
    that is not JSON, one that is not an episode, a missing image, a student over 4096 tokens and
    an episode that must drop its teacher. Returns (path, {line: expected problem kind})."""
    good = episode_lines(converted)
    missing = json.loads(json.dumps(good[1]))
    missing["student"]["images"] = ["images/nowhere.jpeg"]
    huge = json.loads(json.dumps(good[2]))
    huge["student"]["objects"] = huge["student"]["objects"] * 12
    heavy_teacher = json.loads(json.dumps(good[3]))
    heavy_teacher["teachers"][0]["objects"] = heavy_teacher["teachers"][0]["objects"] * 20
    lines = [
        json.dumps(good[0], ensure_ascii=False),  # 1
        "{not json",  # 2
        json.dumps({"teachers": []}),  # 3: no student
        json.dumps(missing, ensure_ascii=False),  # 4
        "",  # 5: blank, skipped
        json.dumps(huge, ensure_ascii=False),  # 6
        json.dumps(heavy_teacher, ensure_ascii=False),  # 7
        json.dumps(good[4], ensure_ascii=False),  # 8
    ]
    path = converted.parent / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    kinds = {
        2: "invalid_record",
        3: "invalid_record",
        4: "missing_image",
        6: "over_budget",
        7: "over_budget",
    }
    return path, kinds
