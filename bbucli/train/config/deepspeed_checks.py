"""The `deepspeed` entry's checks: the JSON file itself, the ZeRO stage, no optimizer of its own,
and its bf16/fp16 switches against `train.bf16`/`train.fp16` and the weights' dtype.

`deepspeed` is a path to a DeepSpeed JSON or an inline mapping. Each check returns `Problem`s with
the YAML path they concern (`deepspeed.zero_optimization.stage`, `model.dtype`, ...).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bbucli.schema import Problem


def effective_dtype(model: Any, gpu: bool) -> str:
    """What `load_model` gives: an explicit dtype, else fp32 for tiny / on CPU, bf16 for a folder on GPU."""
    if model.dtype != "auto":
        return model.dtype
    return "bf16" if gpu and model.path != "tiny" else "fp32"


def deepspeed_problems(
    deepspeed: Path | dict[str, Any], model: Any, train: Any, args: Mapping[str, Any], gpu: bool
) -> list[Problem]:
    if importlib.util.find_spec("deepspeed") is None:
        return [
            Problem("deepspeed", "the deepspeed package is not installed (pip install deepspeed)")
        ]
    if isinstance(deepspeed, Path):
        if not deepspeed.is_file():
            return [
                Problem(
                    "deepspeed",
                    f"{deepspeed} does not exist (shipped: configs/deepspeed/zero2.json, zero3.json)",
                )
            ]
        try:
            ds = json.loads(deepspeed.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            return [
                Problem(
                    "deepspeed", f"{deepspeed}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"
                )
            ]
        except (OSError, UnicodeDecodeError) as exc:
            return [Problem("deepspeed", f"cannot read {deepspeed}: {exc}")]
        if not isinstance(ds, dict):
            return [Problem("deepspeed", f"{deepspeed} must hold a JSON object")]
    else:
        ds = deepspeed
    problems = []
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        problems.append(Problem("deepspeed.zero_optimization", "must be a mapping"))
    else:
        stage = zero.get("stage", 0)
        if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
            problems.append(
                Problem("deepspeed.zero_optimization.stage", f"must be 0, 1, 2 or 3, got {stage!r}")
            )
    if "optimizer" in ds:
        problems.append(
            Problem(
                "deepspeed.optimizer",
                "remove it: bbu builds the optimizer (per-group learning rates from optim.lrs)",
            )
        )
    enabled = {"bf16": False, "fp16": False}
    for flag in ("bf16", "fp16"):
        section = ds.get(flag, {})
        if not isinstance(section, dict):
            problems.append(
                Problem(
                    f"deepspeed.{flag}",
                    f'must be a mapping like {{"enabled": "auto"}}, got {section!r}',
                )
            )
            continue
        value = section.get("enabled", False)
        if not (isinstance(value, bool) or value == "auto"):
            problems.append(
                Problem(
                    f"deepspeed.{flag}.enabled", f'must be true, false or "auto", got {value!r}'
                )
            )
            value = False
        given = "enabled" in section
        if (
            given
            and train is not None
            and isinstance(value, bool)
            and args.get(flag, False) is not value
        ):
            problems.append(
                Problem(
                    f"deepspeed.{flag}.enabled",
                    f"{str(value).lower()} disagrees with train.{flag} {str(args.get(flag, False)).lower()} "
                    '(the Trainer refuses the mismatch; "auto" follows train)',
                )
            )
        enabled[flag] = value is True or (value == "auto" and args.get(flag) is True)
        if value is True and not gpu:
            problems.append(
                Problem(
                    f"deepspeed.{flag}.enabled", f"{flag} on a CPU-only run: train in fp32 on CPU"
                )
            )
    if enabled["bf16"] and enabled["fp16"]:
        problems.append(Problem("deepspeed", "bf16 and fp16 both enabled: choose one"))
    if model is not None:
        dtype = effective_dtype(model, gpu)
        if enabled["bf16"] and dtype == "fp16":
            problems.append(
                Problem("model.dtype", "fp16 weights with DeepSpeed bf16 enabled: use bf16 or fp32")
            )
        if enabled["fp16"] and dtype == "bf16":
            problems.append(
                Problem("model.dtype", "bf16 weights with DeepSpeed fp16 enabled: use fp16 or fp32")
            )
    return problems
