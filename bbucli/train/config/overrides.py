"""YAML text to a raw config dict: the YAML dialect of bbu configs and `key=value` overrides.

The dialect is PyYAML's safe YAML 1.1 with three fixes toward YAML 1.2:
- `2e-5`, `1e4` and `1.5e5` are floats (PyYAML reads a float only with a dot and a signed
  exponent, so `lr: 2e-5` would silently be the string "2e-5");
- only true/false are booleans: `yes`, `no`, `on`, `off` stay strings (`eval_strategy: no`),
  and dates stay strings;
- a key given twice in one mapping is reported (PyYAML silently keeps the last one).

Overrides are `dotted.key=value` strings, the value typed by the same dialect
(`optim.lrs.llm=2e-5` float, `data.packing=false` bool, `train.report_to=[tensorboard]` list,
`data.val=null` None). Nothing here knows the schema: unknown keys are left for the validator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from bbucli.errors import ConfigError
from bbucli.schema import Problem

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# Exponent floats PyYAML's YAML 1.1 resolver misses: no dot (2e-5, 1E4) or an unsigned exponent
# (1.5e5). Checked after PyYAML's int and float resolvers, so plain ints stay ints.
_EXP_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader with exponent floats that records duplicate keys in `self.duplicates`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                self.duplicates.append((str(key), key_node.start_mark.line + 1))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789"))
# Booleans are YAML 1.2's true/false only: YAML 1.1 also reads yes/no/on/off as booleans, which
# turns `eval_strategy: no` (a TrainingArguments value) into False.
# Dates stay strings too (a run_name like 2024-06-01 is text, not a date).
_DROPPED = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))


class _Dumper(yaml.SafeDumper):
    """Quotes every string that YAML 1.1 or this dialect would read as something else."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789"))


def dump_yaml(data: Any) -> str:
    """Block-style YAML, keys in the given order, unicode kept, readable back by `parse_yaml`."""
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )


def parse_yaml(text: str, source: str = "<string>") -> tuple[Any, list[Problem]]:
    """Parse YAML text in the bbu dialect: (data, duplicate-key problems).

    Raises ConfigError naming `source`, line and column on a syntax error.
    """
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            f"{where}: YAML syntax error: {what}",
            hint="check the indentation and quoting around that line",
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML error: {exc}") from exc
    finally:
        loader.dispose()
    problems = [
        Problem(f"line {line}", f"duplicate key {key!r} (only the last one would count)")
        for key, line in loader.duplicates
    ]
    return data, problems


def read_yaml(path: Path) -> tuple[dict[str, Any], list[Problem]]:
    """Read a config file: (top-level mapping, duplicate-key problems). ConfigError when the file
    is missing, unreadable, not YAML or not a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist",
            hint="the shipped configs are in configs/, e.g. configs/tiny.yaml",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    data, problems = parse_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections, got {type(data).__name__}",
            hint="start with e.g. `model:` / `data:` / `train:`",
        )
    return data, problems


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """`"optim.lrs.llm=2e-5"` -> (("optim", "lrs", "llm"), 2e-05). ValueError on bad syntax."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep:
        raise ValueError("expected key=value (dotted key, YAML value), e.g. optim.lrs.llm=2e-5")
    if not _KEY.fullmatch(key):
        raise ValueError(f"bad key {key!r}: use dotted names like train.max_steps")
    try:
        value, duplicates = parse_yaml(value_text, "value")
    except ConfigError as exc:
        raise ValueError(f"value is not valid YAML ({exc.message})") from None
    if duplicates:
        raise ValueError(f"value has a {duplicates[0].message}")
    return tuple(key.split(".")), value


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str]
) -> tuple[dict[str, Any], list[tuple[str, ...]], list[Problem]]:
    """Apply `key=value` overrides to a copy of `data`.

    Returns (new data, the key paths set, problems). Missing intermediate mappings are created;
    setting a key below a value that is not a mapping is a problem. Every override is tried, so
    all bad ones are reported together.
    """
    data = _copy(data)
    applied: list[tuple[str, ...]] = []
    problems: list[Problem] = []
    for text in overrides:
        try:
            keys, value = parse_override(text)
        except ValueError as exc:
            problems.append(Problem("override", f"{text!r}: {exc}"))
            continue
        node = data
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                problems.append(
                    Problem(
                        "override",
                        f"{text!r}: {where} is {child!r}, not a mapping; override {where} as a whole",
                    )
                )
                break
            node = child
        else:
            node[keys[-1]] = value
            applied.append(keys)
    return data, applied, problems


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
