"""What a checkpoint remembers of its training run, typed: `TrainedWith`.

The trainer builds one from the validated training config and `save_checkpoint` writes it into
bbu.json (`trained_with`), so readers get typed values instead of looking keys up in config.yaml.
A checkpoint written before bbu.json had it gives the one read from its config.yaml `data`
section (same key names). A value a config did not state stays None, and the reader then uses its
own default (`build_prompts`'s language, `Taxonomy.descs`'s, no token budget, every teacher):
no default of the training config is restated here.

`classes` is not a config value but what the data held: the descs of the training episodes and
the teacher pool (`bbucli.chat.prompts.trained_classes`), the list the training system prompt
named and the classes the head may label a box with. A checkpoint without it (written before it
existed) falls back to its taxonomy's descs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbucli.chat.prompts import LANGS, Lang


@dataclass(frozen=True)
class TrainedWith:
    """The training config's facts that inference needs (all from its `data` section).

    lang: prompt and desc language; prompt_classes: whether the system prompt listed the classes;
    max_tokens: token budget per episode (> 0); num_teachers: teachers per student, K;
    taxonomy: the configured taxonomy YAML (None: the built-in one); val: the validation JSONL;
    classes: the descs of the training data, sorted (module doc; None: not recorded).
    """

    lang: Lang | None = None
    prompt_classes: bool | None = None
    max_tokens: int | None = None
    num_teachers: int | None = None
    taxonomy: Path | None = None
    val: Path | None = None
    classes: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings."""
        return {
            "lang": self.lang,
            "prompt_classes": self.prompt_classes,
            "max_tokens": self.max_tokens,
            "num_teachers": self.num_teachers,
            "taxonomy": None if self.taxonomy is None else str(self.taxonomy),
            "val": None if self.val is None else str(self.val),
            "classes": None if self.classes is None else list(self.classes),
        }

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> TrainedWith:
        """Read bbu.json's `trained_with` or a config's `data` section; a missing or ill-typed
        value is None."""
        raw = raw if isinstance(raw, Mapping) else {}
        lang = raw.get("lang")
        classes = raw.get("prompt_classes")
        return cls(
            lang=lang if lang in LANGS else None,
            prompt_classes=classes if isinstance(classes, bool) else None,
            max_tokens=_count(raw.get("max_tokens"), minimum=1),
            num_teachers=_count(raw.get("num_teachers"), minimum=0),
            taxonomy=_path(raw.get("taxonomy")),
            val=_path(raw.get("val")),
            classes=_descs(raw.get("classes")),
        )


def _count(value: Any, minimum: int) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    return value if ok else None


def _path(value: Any) -> Path | None:
    return Path(value) if isinstance(value, str) and value else None


def _descs(value: Any) -> tuple[str, ...] | None:
    ok = isinstance(value, list | tuple) and all(isinstance(d, str) and d for d in value)
    return tuple(value) if ok and value else None
