"""The training config: loading, overrides, validation and printing. The schema (one pydantic model
per YAML section, `BbuConfig` for the whole run) lives in `bbucli.train.config.schema` and is
re-exported here.

`load_config(path, overrides)` reads the YAML, applies `key=value` overrides, validates everything
(`bbucli.train.config.validation`) and raises one `InvalidConfigError` listing every problem with its
YAML path, before any weight loads. Relative paths resolve against the YAML file's folder (paths
given in overrides against the working directory); the loaded config holds absolute paths.
`to_yaml()` / `describe_config()` write the resolved config back (deterministic key order);
loading that text again gives an equal config.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bbucli.schema import Problem
from bbucli.train.config.objective import GROUPS, LearningRates, LossSection, OptimSection
from bbucli.train.config.overrides import apply_overrides, read_yaml
from bbucli.train.config.passthrough import train_argument_problems
from bbucli.train.config.problems import (
    InvalidConfigError,
    mark_overrides,
    schema_problems,
    short_repr,
    unknown_key,
)
from bbucli.train.config.schema import (
    MAX_PIXELS,
    MIN_PIXELS,
    PATH_KEYS,
    SECTIONS,
    BbuConfig,
    DataSection,
    DetectionSection,
    ModelSection,
    TrainSection,
)
from bbucli.train.config.validation import Target, semantic_problems

__all__ = [
    "BbuConfig",
    "ModelSection",
    "DataSection",
    "DetectionSection",
    "LossSection",
    "LearningRates",
    "OptimSection",
    "TrainSection",
    "InvalidConfigError",
    "Problem",
    "Target",
    "load_config",
    "build_config",
    "validate_config",
    "describe_config",
    "GROUPS",
    "MIN_PIXELS",
    "MAX_PIXELS",
    "SECTIONS",
    "PATH_KEYS",
]


def load_config(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    target: Target = "auto",
    check_paths: bool = True,
) -> BbuConfig:
    """Read, override and validate a config YAML; raise one InvalidConfigError listing every problem.

    target: validate for "cpu", "gpu" or "auto" (GPU when torch.cuda.is_available() and not
    train.use_cpu); "gpu" lets a CPU machine check a config meant for a GPU node.
    check_paths: False skips the existence checks of the model folder, the data files and
    train.resume (inputs that live outside the repo: CI and laptops preparing a GPU run lack
    them); the DeepSpeed JSON, part of the config, is always read and checked.
    """
    path = Path(path).expanduser().absolute()
    raw, problems = read_yaml(path)
    return build_config(
        raw,
        base_dir=path.parent,
        overrides=overrides,
        target=target,
        check_paths=check_paths,
        source=str(path),
        problems=problems,
    )


def build_config(
    raw: dict[str, Any],
    *,
    base_dir: Path,
    overrides: Sequence[str] = (),
    target: Target = "auto",
    check_paths: bool = True,
    source: str = "config",
    problems: Sequence[Problem] = (),
) -> BbuConfig:
    """`load_config` for a dict already read: relative paths resolve against `base_dir`."""
    all_problems = list(problems)
    data = _resolve_paths(raw, base_dir)
    data, applied, override_problems = apply_overrides(data, overrides)
    all_problems += override_problems
    data = _resolve_paths(data, Path.cwd(), only=set(applied))

    sections: dict[str, Any] = {}
    for key in data:
        if key not in SECTIONS and key != "deepspeed":
            all_problems.append(Problem(key, unknown_key(key, [*SECTIONS, "deepspeed"])))
    for name, model in SECTIONS.items():
        given = data.get(name)
        if given is None and name in ("data", "train"):
            all_problems.append(Problem(name, "required section is missing"))
            continue
        given = {} if given is None else given
        if name == "train" and isinstance(given, dict):
            # Bad pass-through keys are reported and left out, so the checks that read the
            # remaining train keys (bf16 on CPU, batch size with packing, ...) still run.
            found = train_argument_problems(given, path="train")
            all_problems += found
            bad = {p.where.removeprefix("train.") for p in found}
            given = {k: v for k, v in given.items() if k not in bad}
        try:
            sections[name] = model.model_validate(given)
        except ValidationError as exc:
            all_problems += schema_problems(exc, name, model)
    deepspeed = data.get("deepspeed")
    if isinstance(deepspeed, str):
        sections["deepspeed"] = deepspeed = Path(deepspeed)
    elif deepspeed is None or isinstance(deepspeed, dict):
        sections["deepspeed"] = deepspeed
    else:
        all_problems.append(
            Problem(
                "deepspeed",
                f"must be null, a path to a DeepSpeed JSON or a mapping, got {short_repr(deepspeed)}",
            )
        )
    # Every check whose sections validated runs, so one pass reports every problem.
    all_problems += semantic_problems(sections, target=target, check_paths=check_paths)
    if all_problems:
        raise InvalidConfigError(mark_overrides(all_problems, applied), source=source)
    return BbuConfig(**sections)


def validate_config(
    cfg: BbuConfig, *, target: Target = "auto", check_paths: bool = True
) -> list[Problem]:
    """Semantic, cross-section, environment and file problems of a structurally valid config
    (what `load_config` adds to the schema; see there for `target` and `check_paths`)."""
    sections = {name: getattr(cfg, name) for name in (*SECTIONS, "deepspeed")}
    return semantic_problems(sections, target=target, check_paths=check_paths)


def describe_config(cfg: BbuConfig) -> str:
    """The resolved config as YAML text for `--print-config`, with a header naming the version."""
    from bbucli import __version__

    return f"# bbu {__version__}: resolved config (absolute paths)\n" + cfg.to_yaml()


def _resolve_paths(
    data: dict[str, Any], base: Path, only: set[tuple[str, ...]] | None = None
) -> dict[str, Any]:
    """Copy of `data` with relative path values (str, not "tiny" for model.path) made absolute."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for keys in PATH_KEYS:
        if only is not None and not any(keys[: len(done)] == done for done in only):
            continue
        parent = out
        for key in keys[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        value = parent.get(keys[-1]) if isinstance(parent, dict) else None
        if not isinstance(value, str) or (keys == ("model", "path") and value == "tiny"):
            continue
        parent[keys[-1]] = os.path.normpath(base / Path(value).expanduser())
    return out
