"""The `train` section's pass-through of transformers `TrainingArguments` fields.

Every key must be a field of the installed `TrainingArguments` (read from `dataclasses.fields`, so
the list follows the transformers version) with a value of roughly the annotated type
(bool/int/float/str/list/dict/None, and the enum's values for `Enum | str` fields such as
`lr_scheduler_type`). Keys another section owns (learning_rate -> optim.lrs, seed -> model.seed,
...) are refused with a pointer. TrainingArguments itself is not constructed here: that can need
accelerate/distributed state.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from bbucli.schema import Problem
from bbucli.train.config.problems import short_repr

# TrainingArguments fields that a bbu section sets (BbuConfig.training_arguments fills them in).
OWNED_ELSEWHERE: dict[str, str] = {
    "learning_rate": "per-group learning rates are set in optim.lrs",
    "weight_decay": "set it in optim.weight_decay",
    "adam_beta1": "set it in optim.betas",
    "adam_beta2": "set it in optim.betas",
    "adam_epsilon": "set it in optim.eps",
    "seed": "set it in model.seed",
    "dataloader_num_workers": "set it in data.num_workers",
    "deepspeed": "use the top-level deepspeed section",
    "resume_from_checkpoint": "use train.resume (true, or a checkpoint folder)",
    "local_rank": "the launcher sets it",
}
OWN_TRAIN_KEYS = ("output_dir", "resume")  # declared by TrainSection, typed by pydantic


@functools.cache
def training_argument_fields() -> dict[str, Any]:
    """Name -> type annotation of every settable field of the installed TrainingArguments."""
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {
        f.name: hints.get(f.name, Any)
        for f in dataclasses.fields(TrainingArguments)
        if f.init and not f.name.startswith("_")
    }


def train_argument_problems(train: Mapping[str, Any], path: str = "train") -> list[Problem]:
    """Problems of the `train` section's pass-through keys (names, rough types, enum values)."""
    fields = training_argument_fields()
    problems = []
    for key, value in train.items():
        where = f"{path}.{key}" if path else str(key)
        if key in OWN_TRAIN_KEYS:
            continue
        if key in OWNED_ELSEWHERE:
            problems.append(Problem(where, f"not set here: {OWNED_ELSEWHERE[key]}"))
        elif key not in fields:
            close = difflib.get_close_matches(str(key), [*fields, *OWN_TRAIN_KEYS], n=1, cutoff=0.6)
            message = "unknown key (not a TrainingArguments field)"
            if close:
                message = f"unknown key, did you mean {close[0]!r}?"
                if close[0] in OWNED_ELSEWHERE:
                    message += f" ({OWNED_ELSEWHERE[close[0]]})"
            problems.append(Problem(where, message))
        else:
            message = _type_problem(value, fields[key])
            if message:
                problems.append(Problem(where, message))
    return problems


def _type_problem(value: Any, annotation: Any) -> str | None:
    """None when `value` fits `annotation` roughly, else a message naming the expected type."""
    if _fits(value, annotation):
        enum_cls = _enum_arm(annotation)
        if enum_cls is not None and isinstance(value, str):
            choices = [str(m.value) for m in enum_cls]
            if value not in choices:
                close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
                tail = (
                    f", did you mean {close[0]!r}?" if close else f" (one of: {', '.join(choices)})"
                )
                return f"{value!r} is not a valid value{tail}"
        return None
    return f"expected {_describe(annotation)}, got {type(value).__name__} {short_repr(value)}"


def _fits(value: Any, tp: Any) -> bool:
    if tp is Any or tp is object:
        return True
    if tp is None or tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in {m.value for m in tp} or isinstance(value, tp)
    if tp is list or origin is list:
        item = (typing.get_args(tp) or (Any,))[0]
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if tp is dict or origin is dict:
        return isinstance(value, dict)
    return True  # a class YAML cannot build (e.g. ParallelismConfig): not checked here


def _enum_arm(tp: Any) -> type[enum.Enum] | None:
    """The Enum of `Enum | str` annotations, whose strings TrainingArguments converts to the enum."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            if isinstance(arm, type) and issubclass(arm, enum.Enum):
                return arm
    return None


def _describe(tp: Any) -> str:
    if tp is None or tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arm) for arm in typing.get_args(tp)))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if tp is list or origin is list:
        args = typing.get_args(tp)
        return f"list of {_describe(args[0])}" if args else "list"
    if tp is dict or origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))
