"""The choices the `bbu` commands share, one Enum per option kind, so that `--lang`, `--dtype` and
`--source` accept the same values (and show the same choices in --help) in every command.

Typer turns each `str` Enum into a choice list; a command reads the chosen `.value`.
"""

from __future__ import annotations

import math
from enum import Enum

from bbucli.errors import UsageError

__all__ = ["Backend", "DType", "EvalSource", "Lang", "Source", "Unknown", "check_threshold"]


class Lang(str, Enum):
    """Language of the descs and prompts (`bbu convert --lang`, `bbu inspect --lang`)."""

    zh = "zh"
    en = "en"


class DType(str, Enum):
    """Qwen weights dtype; auto: bf16 on a GPU, else fp32 (`bbu eval`, `bbu predict`)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Source(str, Enum):
    """Where detections come from: the detection head or the generated answer (`bbu predict`)."""

    head = "head"
    lm = "lm"


class EvalSource(str, Enum):
    """`Source`, plus both: `bbu eval` scores the head and the answers side by side."""

    head = "head"
    lm = "lm"
    both = "both"


class Backend(str, Enum):
    """COCOeval implementation (`bbu eval --backend`); auto: faster-coco-eval when installed."""

    auto = "auto"
    pycocotools = "pycocotools"
    faster = "faster"


class Unknown(str, Enum):
    """Labels not in the taxonomy (`bbu convert --unknown`): keep as-is, drop, or stop."""

    keep = "keep"
    drop = "drop"
    error = "error"


def check_threshold(threshold: float | None, source: str) -> None:
    """UsageError unless a `--threshold` lies where the scores of `source` do: [0, 1] for the
    head (objectness x class probability), <= 0 for lm (a mean token log-probability)."""
    if threshold is None:
        return
    head = source == Source.head.value
    if math.isfinite(threshold) and (0.0 <= threshold <= 1.0 if head else threshold <= 0.0):
        return
    where = (
        "in [0, 1] (objectness x class probability)" if head else "<= 0 (a mean log-probability)"
    )
    raise UsageError(
        f"--threshold {threshold:g} is out of range: {source} scores lie {where}",
        hint="pass a threshold in that range, or leave it out",
    )
