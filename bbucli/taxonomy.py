"""The label taxonomy: every raw annotation label -> one canonical class.

The YAML file (default: the copy shipped in `bbucli/resources/taxonomy/bbu.yaml`, documented as
`configs/taxonomy/bbu.yaml`) lists canonical classes, each with a stable key, a Chinese and an
English desc (`type/property/state`, state where the raw label has one), a defect flag and the raw
spellings that mean it, plus segment aliases (`螺丝连接点` -> `连接点（螺丝）`).

Matching normalises labels (NFKC: full-width parentheses and slashes become half-width; case
folded; whitespace trimmed around `/` and collapsed), tries the whole label, then tries it again
with every `/` segment replaced through `segment_aliases`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bbucli.errors import ConfigError

Lang = Literal["zh", "en"]
MAX_LEVELS = 3
_EN_DESC = re.compile(r"^[a-z0-9_]+(/[a-z0-9_]+){0,2}$")
_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


def normalize_label(label: str) -> str:
    """The form labels are compared in: NFKC, case folded, whitespace trimmed around `/`."""
    text = unicodedata.normalize("NFKC", label).casefold()
    parts = [" ".join(part.split()) for part in text.split("/")]
    return "/".join(parts).strip()


def cut_desc(desc: str, levels: int) -> str:
    """The first `levels` (1..3) `/`-separated parts of a desc."""
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must be 1..{MAX_LEVELS}, got {levels}")
    return "/".join(desc.split("/")[:levels])


@dataclass(frozen=True)
class TaxonomyClass:
    """One canonical class. `zh`/`en` are full descs; `raw` the further spellings that mean it."""

    key: str
    zh: str
    en: str
    defect: bool
    raw: tuple[str, ...] = ()

    def desc(self, lang: Lang = "zh", levels: int = MAX_LEVELS) -> str:
        """This class's desc in `lang`, cut to `levels` parts."""
        if lang not in ("zh", "en"):
            raise ValueError(f"lang must be 'zh' or 'en', got {lang!r}")
        return cut_desc(self.zh if lang == "zh" else self.en, levels)


# ---- the file format, validated with pydantic --------------------------------------------------


class _ClassSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    zh: str = Field(min_length=1)
    en: str
    defect: bool
    raw: list[str] = Field(default_factory=list)

    @field_validator("key")
    @classmethod
    def _key_ok(cls, v: str) -> str:
        if not _KEY.match(v):
            raise ValueError("must be lower-case ascii letters, digits and _ (starting with a letter)")
        return v

    @field_validator("en")
    @classmethod
    def _en_ok(cls, v: str) -> str:
        if not _EN_DESC.match(v):
            raise ValueError("must be 1-3 lower-case ascii parts separated by '/' (e.g. screw/bbu_install_screw/correct)")
        return v

    @field_validator("zh")
    @classmethod
    def _zh_ok(cls, v: str) -> str:
        if not 1 <= len(v.split("/")) <= MAX_LEVELS or any(not p.strip() for p in v.split("/")):
            raise ValueError("must be 1-3 non-empty parts separated by '/'")
        return v


class _TaxonomyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    segment_aliases: dict[str, str] = Field(default_factory=dict)
    classes: list[_ClassSpec] = Field(min_length=1)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _loc(spec: object, loc: tuple) -> str:
    """`classes[3] (brand_zte).raw[1]` from a pydantic error location."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            if i == 1 and loc[0] == "classes" and isinstance(spec, dict):
                classes = spec.get("classes")
                if isinstance(classes, list) and part < len(classes) and isinstance(classes[part], dict):
                    out += f" ({classes[part].get('key', '?')})"
        else:
            out += f".{part}" if out else str(part)
    return out


# ---- the taxonomy ------------------------------------------------------------------------------


def default_path() -> Path:
    """The taxonomy shipped inside the package (found from a clone and from an installed wheel)."""
    return Path(str(resources.files("bbucli") / "resources" / "taxonomy" / "bbu.yaml"))


class Taxonomy:
    """Canonical classes and the raw-label lookup built from one validated taxonomy file."""

    def __init__(
        self,
        classes: Iterable[TaxonomyClass],
        segment_aliases: dict[str, str] | None = None,
        source: str = "<memory>",
        sha256: str = "",
    ) -> None:
        self.classes: tuple[TaxonomyClass, ...] = tuple(classes)
        self.source = source
        self.sha256 = sha256
        self._aliases = {normalize_label(k): normalize_label(v) for k, v in (segment_aliases or {}).items()}
        self._lookup: dict[str, TaxonomyClass] = {}
        self._by_desc: dict[str, TaxonomyClass] = {}
        problems: list[str] = []
        for cls in self.classes:
            if len(cls.zh.split("/")) != len(cls.en.split("/")):
                problems.append(f"class {cls.key}: zh {cls.zh!r} and en {cls.en!r} have different numbers of levels")
            for label in (cls.zh, cls.en, *cls.raw):
                norm = normalize_label(label)
                other = self._lookup.setdefault(norm, cls)
                if other is not cls:
                    problems.append(f"label {label!r} maps to both {other.key} and {cls.key}")
            for desc in (cls.zh, cls.en):
                self._by_desc.setdefault(desc, cls)
        keys = [c.key for c in self.classes]
        problems += [f"class key {k!r} is used twice" for k in sorted({k for k in keys if keys.count(k) > 1})]
        segments = {seg for norm in self._lookup for seg in norm.split("/")}
        for alias, target in self._aliases.items():
            if alias in segments:
                problems.append(f"segment alias {alias!r} is itself a known label segment")
            if target not in segments:
                problems.append(f"segment alias {alias!r} -> {target!r}: target is no label segment")
        if problems:
            raise ConfigError(
                f"{source}: " + "; ".join(problems),
                hint="each raw label and alias must mean exactly one class",
            )

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None) -> Taxonomy:
        """Load and validate a taxonomy YAML (default: the shipped one); ConfigError names the
        file and the offending key."""
        path = Path(path) if path is not None else default_path()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read taxonomy {path}: {exc.strerror}",
                hint="pass an existing YAML file to --taxonomy, or leave it out for the built-in one",
            ) from exc
        try:
            spec = yaml.load(data.decode("utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (safe loader subclass)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}", hint="fix the YAML syntax") from exc
        try:
            parsed = _TaxonomyFile.model_validate(spec)
        except ValidationError as exc:
            problems = "; ".join(f"{_loc(spec, e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigError(
                f"{path}: {problems}", hint="compare with configs/taxonomy/bbu.yaml"
            ) from None
        return cls(
            (TaxonomyClass(c.key, c.zh, c.en, c.defect, tuple(c.raw)) for c in parsed.classes),
            parsed.segment_aliases,
            source=path.name,
            sha256=hashlib.sha256(data).hexdigest(),
        )

    # -- lookups ----------------------------------------------------------------------------

    def resolve(self, raw_label: str) -> TaxonomyClass | None:
        """The class a raw label (Chinese path, English code, alias, desc) means; None if unknown."""
        norm = normalize_label(raw_label)
        found = self._lookup.get(norm)
        if found is None and self._aliases:
            aliased = "/".join(self._aliases.get(seg, seg) for seg in norm.split("/"))
            found = self._lookup.get(aliased)
        return found

    def desc(self, cls: TaxonomyClass, lang: Lang = "zh", levels: int = MAX_LEVELS) -> str:
        """The desc of `cls` in `lang`, cut to `levels` parts."""
        return cls.desc(lang, levels)

    def descs(self, lang: Lang = "zh", levels: int = MAX_LEVELS) -> list[str]:
        """All distinct descs in `lang` at `levels`, in file order."""
        return list(dict.fromkeys(c.desc(lang, levels) for c in self.classes))

    def class_for_desc(self, desc: str) -> TaxonomyClass | None:
        """The class whose full zh or en desc is exactly `desc` (cut descs are ambiguous: None)."""
        return self._by_desc.get(desc)

    def by_key(self, key: str) -> TaxonomyClass:
        """The class with stable key `key`; KeyError if there is none."""
        for c in self.classes:
            if c.key == key:
                return c
        raise KeyError(key)
