"""The `bbu train` config reference in docs/config.md, generated from the pydantic models of
`bbucli.train.config.schema`: per section a table of key, type, default and the field's
`description`, so the documentation follows the schema instead of being kept by hand.

    python -m tools.config_reference [docs/config.md]           rewrite the marked block
    python -m tools.config_reference --check [docs/config.md]   exit 1 when the block is stale

The block is the text between `<!-- config-reference:start -->` and `<!-- config-reference:end -->`.
Types are read from each field's annotation and constraints (`int >= 1`, `float in [0, 1)`,
`path or null`); an annotation this module cannot name raises, so a new kind of field is noticed.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from bbucli.errors import BbuError
from bbucli.train.config.passthrough import OWNED_ELSEWHERE
from bbucli.train.config.schema import BbuConfig, TrainSection

__all__ = ["START", "END", "DOC", "render_reference", "with_reference", "write_reference"]

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
DOC = Path("docs/config.md")  # the file holding the block, relative to the repository root
HEADING = "###"  # one level below docs/config.md's "## Reference"
_NAMES = {bool: "bool", int: "int", float: "float", str: "str", Path: "path"}


def render_reference() -> str:
    """The reference as Markdown (ends with a newline): one heading and table per section, in
    the order of `BbuConfig`, a nested section (`optim.lrs`) as its own table after its parent."""
    parts: list[str] = []
    top: list[str] = []
    for name, field in BbuConfig.model_fields.items():
        if _section_model(field.annotation) is None:
            top.append(name)
            continue
        intro = _sentence(field.description or "")
        if field.is_required():
            intro += " Required."
        parts += _tables(name, field.annotation, intro)
    for name in top:
        parts.append(f"{HEADING} `{name}`\n\n{_table(BbuConfig, [name], prefix='')}")
    return "\n".join(parts)


def with_reference(text: str, source: str = str(DOC)) -> str:
    """`text` with the block between START and END replaced by `render_reference()`.

    Raises BbuError naming `source` when the markers are missing, repeated or out of order.
    """
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise BbuError(
            f"{source}: no config reference block (one {START} line, then one {END} line)",
            hint="put the two markers on their own lines where the reference goes",
        )
    head, rest = text.split(START)
    tail = rest.split(END)[1]
    return f"{head}{START}\n\n{render_reference()}\n{END}{tail}"


def write_reference(doc: Path) -> bool:
    """Regenerate the reference block of `doc` in place; whether its text changed."""
    doc = Path(doc)
    text = doc.read_text(encoding="utf-8")
    new = with_reference(text, source=str(doc))
    if new == text:
        return False
    doc.write_text(new, encoding="utf-8")
    return True


def _tables(prefix: str, model: type[BaseModel], intro: str) -> list[str]:
    keys = list(model.model_fields)
    out = [f"{HEADING} `{prefix}`\n\n{intro}\n\n{_table(model, keys, prefix)}"]
    if model is TrainSection:
        out[-1] += f"\n{_passthrough_note()}"
    for name, field in model.model_fields.items():
        nested = _section_model(field.annotation)
        if nested is not None:
            out += _tables(f"{prefix}.{name}", nested, _sentence(field.description or ""))
    return out


def _table(model: type[BaseModel], keys: list[str], prefix: str) -> str:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key in keys:
        field = model.model_fields[key]
        cells = [
            f"`{key}`",
            _type_of(field),
            _default_of(field, f"{prefix}.{key}"),
            field.description or "",
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _passthrough_note() -> str:
    owned = "; ".join(f"`{key}`: {why}" for key, why in OWNED_ELSEWHERE.items())
    return (
        "Any other field of transformers `TrainingArguments` is accepted and passed through "
        "(`max_steps`, `num_train_epochs`, `bf16`, `gradient_accumulation_steps`, `report_to`, ...), "
        "checked by name and type against the installed transformers. Refused here because bbu "
        f"sets them: {owned}.\n"
    )


def _type_of(field: FieldInfo) -> str:
    return _type_name(field.annotation, list(field.metadata))


def _type_name(annotation: Any, metadata: list[Any]) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        return _type_name(base, [*extra, *metadata])
    if origin in (Union, types.UnionType):
        args = get_args(annotation)
        names = [_type_name(a, metadata) for a in args if a is not type(None)]
        return _join_or(names + (["null"] if type(None) in args else []))
    if origin is Literal:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in get_args(annotation))
    if origin is tuple:
        return "[" + ", ".join(_type_name(a, []) for a in get_args(annotation)) + "]"
    if origin is dict or _section_model(annotation) is not None:
        return "mapping"
    if annotation in _NAMES:
        return _NAMES[annotation] + _bounds(metadata)
    raise TypeError(f"no readable name for the annotation {annotation!r}: extend config_reference")


def _bounds(metadata: list[Any]) -> str:
    """` >= 1`, ` > 0`, ` in [0, 1)`, or "" from annotated_types constraints."""
    low = high = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = ("[", ">=", item.ge)
        elif isinstance(item, annotated_types.Gt):
            low = ("(", ">", item.gt)
        elif isinstance(item, annotated_types.Le):
            high = ("]", "<=", item.le)
        elif isinstance(item, annotated_types.Lt):
            high = (")", "<", item.lt)
    if low and high:
        return f" in {low[0]}{low[2]:g}, {high[2]:g}{high[0]}"
    if low or high:
        _, op, value = low or high
        return f" {op} {value:g}"
    return ""


def _default_of(field: FieldInfo, key: str) -> str:
    if field.is_required():
        return "required"
    if isinstance(field.default, BaseModel):
        return f"see `{key}`"
    return f"`{_yaml_value(field.default)}`"


def _yaml_value(value: Any) -> str:
    """A default as it would be written in a config YAML (bbu's dialect reads it back)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:  # 1e-05 -> 1e-5
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{int(exponent)}"
        return text
    if isinstance(value, (str, Path)):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    raise TypeError(f"no YAML form for the default {value!r}: extend config_reference")


def _section_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _join_or(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}." if text else ""


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m tools.config_reference",
        description=f"Regenerate the bbu train config reference block in {DOC}.",
    )
    parser.add_argument("doc", nargs="?", type=Path, default=DOC)
    parser.add_argument("--check", action="store_true", help="exit 1 when the block is stale")
    args = parser.parse_args(argv)
    try:
        text = args.doc.read_text(encoding="utf-8")
        current = with_reference(text, source=str(args.doc)) == text
        if args.check:
            if not current:
                print(
                    f"{args.doc}: the config reference is stale; run "
                    f"python -m tools.config_reference {args.doc}",
                    file=sys.stderr,
                )
            return 0 if current else 1
        write_reference(args.doc)
    except (BbuError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.doc}: config reference {'up to date' if current else 'rewritten'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
