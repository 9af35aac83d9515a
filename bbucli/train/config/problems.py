"""A config's problems: the one error that lists them, and message helpers.

A config problem is a `bbucli.schema.Problem` whose `where` is its YAML path (`optim.lrs.llm`,
`train.learning_rat`, `line 12`, `override`). `InvalidConfigError` (a `ConfigError`, exit code 2)
carries every problem found in one pass, sorted by section. `schema_problems` turns pydantic's
errors into problems with a "did you mean".
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from bbucli.errors import ConfigError
from bbucli.schema import Problem

SECTION_ORDER = ("model", "data", "detection", "loss", "optim", "train", "deepspeed")


class InvalidConfigError(ConfigError):
    """Every problem of one config, each on its own line with its YAML path (exit code 2)."""

    def __init__(self, problems: Sequence[Problem], source: str = "config") -> None:
        self.problems = tuple(sorted(problems, key=_section_order))
        count = f"{len(self.problems)} problem" + ("s" if len(self.problems) != 1 else "")
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"invalid config {source} ({count}):\n{lines}",
            hint="fix them in the YAML file or with key=value overrides",
        )


def schema_problems(exc: ValidationError, section: str, model: type[BaseModel]) -> list[Problem]:
    """pydantic's errors for one section as Problems: unknown keys get a "did you mean", literal
    values the closest choice."""
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        path = _join(section, loc)
        kind = error["type"]
        if kind == "extra_forbidden":
            problems.append(Problem(path, unknown_key(str(loc[-1]), _field_names(model, loc[:-1]))))
        elif kind == "missing":
            problems.append(Problem(path, "required"))
        elif kind == "value_error":
            problems.append(Problem(path, str(error["ctx"]["error"])))
        else:
            message = (
                f"{error['msg'][0].lower()}{error['msg'][1:]}, got {short_repr(error['input'])}"
            )
            if kind == "literal_error" and isinstance(error["input"], str):
                choices = re.findall(r"'([^']*)'", error["ctx"]["expected"])
                message += _suggestion(error["input"], choices)
            problems.append(Problem(path, message))
    return problems


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model found at `loc` below `model`."""
    for key in loc:
        field = model.model_fields.get(str(key))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return list(model.model_fields)


def unknown_key(key: str, candidates: Sequence[str]) -> str:
    """ "unknown key, did you mean 'x'?" (or the list of candidates when few and none is close)."""
    return "unknown key" + _suggestion(key, candidates)


def _suggestion(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if close:
        return f", did you mean {close[0]!r}?"
    if candidates and len(candidates) <= 12:
        return f" (expected one of: {', '.join(candidates)})"
    return ""


def _join(section: str, loc: tuple[Any, ...]) -> str:
    path = section
    for part in loc:
        if isinstance(part, int):
            path = f"{path}[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def mark_overrides(problems: list[Problem], applied: list[tuple[str, ...]]) -> list[Problem]:
    """Say which problems come from a command-line override."""
    paths = {".".join(keys) for keys in applied}
    return [
        Problem(p.where, f"{p.message} (from an override)") if p.where in paths else p
        for p in problems
    ]


def _section_order(problem: Problem) -> int:
    """Sort key: file and override problems, unknown sections, then sections in schema order."""
    head = problem.where.split(".")[0].split("[")[0]
    if head.startswith("line ") or head == "override":
        return 0
    return SECTION_ORDER.index(head) + 2 if head in SECTION_ORDER else 1
