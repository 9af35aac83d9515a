"""The JSONL under inspection: options, the ChatProcessor that counts, records by index, problems.

Every view reads the file through here, so that a line that is not an episode, a missing or
unreadable image, a box reaching past its image and an episode over the token budget become the
same `RecordProblem`
(`file:line: message`, plus its kind) wherever they are met. Image paths are relative to the
JSONL's folder.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any, Literal

from bbucli.chat.image_info import load_model_pixels
from bbucli.chat.loading import VLProcessor, load_processor
from bbucli.chat.processor import ChatProcessor, SampleBudget
from bbucli.chat.prompts import build_prompts, trained_classes
from bbucli.errors import DataError, UsageError
from bbucli.inspection.jsonable import to_jsonable
from bbucli.schema import (
    Episode,
    Problem,
    RecordError,
    iter_episodes,
    objects_outside,
    outside_image,
)
from bbucli.taxonomy import Taxonomy

ProblemKind = Literal[
    "invalid_record", "missing_image", "unreadable_image", "box_outside_image", "over_budget"
]


@dataclass(frozen=True)
class InspectOptions:
    """How to count. model: "tiny" or a local Qwen2.5-VL folder (its tokenizer, chat template and
    pixel limits); lang: language of the system prompt and instruction; max_tokens: per-sample
    budget as in training (`data.max_tokens`, None: no budget); batch_tokens: capacity of a packed
    bin (`data.max_tokens_per_batch`); batch_size: B of the padded batches compared with it;
    taxonomy: the YAML whose classes the system prompt lists (None: the built-in one);
    prompt_classes: list them (`data.prompt_classes`); verify_images: decode every image fully
    (slow: headers alone miss a truncated file, which training then skips)."""

    model: str = "tiny"
    lang: Literal["zh", "en"] = "zh"
    max_tokens: int | None = 4096
    batch_tokens: int = 8192
    batch_size: int = 4
    taxonomy: Path | None = None
    prompt_classes: bool = True
    verify_images: bool = False

    def check(self) -> None:
        """UsageError listing every invalid option."""
        problems = [
            message
            for ok, message in (
                (self.lang in ("zh", "en"), f"--lang must be zh or en, got {self.lang!r}"),
                (self.max_tokens is None or self.max_tokens >= 1, "--max-tokens must be >= 1"),
                (self.batch_tokens >= 1, "--batch-tokens must be >= 1"),
                (self.batch_size >= 1, "--batch-size must be >= 1"),
            )
            if not ok
        ]
        if problems:
            raise UsageError("; ".join(problems), hint="see bbu inspect --help")


@dataclass(frozen=True)
class RecordProblem:
    """One record that could not be inspected as it is: the `bbucli.schema.Problem` of a JSONL
    line (`where` = "path:line") plus its kind, which `bbu inspect` counts and prints (its JSON
    output keeps the fields path, line, kind, message). line: 1-based line in `path`."""

    path: Path
    line: int
    kind: ProblemKind
    message: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def problem(self) -> Problem:
        """The kind-less `bbucli.schema.Problem` every stage reports."""
        return Problem(self.where, self.message)

    def __str__(self) -> str:
        return str(self.problem())

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@functools.lru_cache(maxsize=4)
def vl_processor(model: str) -> VLProcessor:
    """`load_processor(model)`, once per process (the CLI and its tests load it once)."""
    return load_processor(model)


def chat_processor(
    options: InspectOptions, *, budget: bool = True, source: Path | None = None
) -> ChatProcessor:
    """The ChatProcessor training would use for these options; budget=False: no `max_tokens`.
    source: the JSONL being inspected; its dataset's classes (`dataset_classes`) are what the
    system prompt lists, as in training (without it, or when it holds no object: the taxonomy's)."""
    options.check()
    descs: Sequence[str] = ()
    if source is not None and options.prompt_classes:
        descs = dataset_classes(source)
    if not descs:
        descs = Taxonomy.load(options.taxonomy).descs(options.lang)
    prompts = build_prompts(descs, options.lang, list_classes=options.prompt_classes)
    return ChatProcessor(
        vl_processor(str(options.model)),
        system_prompt=prompts.system,
        instruction=prompts.instruction,
        max_tokens=options.max_tokens if budget else None,
    )


def dataset_classes(path: Path) -> tuple[str, ...]:
    """The class list `bbu train` builds for the dataset `path` belongs to: `trained_classes` of its
    train JSONL and teacher pool, found by `bbu convert`'s names (X.jsonl and X.teachers.jsonl
    beside X.val.jsonl or X.teachers.jsonl); `path` alone when neither is there. Lines that are
    not episodes are skipped (the summary reports them)."""
    name = path.name
    base = next((name[: -len(s)] for s in _DATASET_SUFFIXES if name.endswith(s)), None)
    files = [path]
    if base is not None:
        siblings = [path.with_name(base + ".jsonl"), path.with_name(base + ".teachers.jsonl")]
        files = [f for f in siblings if f.is_file()] or files
    samples = [
        sample
        for file in files
        for _, item in iter_episodes(file)
        if not isinstance(item, RecordError)
        for sample in item.samples
    ]
    return trained_classes(samples)


_DATASET_SUFFIXES = (".val.jsonl", ".teachers.jsonl", ".jsonl")


def image_problem(path: Path, line: int, exc: DataError) -> RecordProblem:
    """A DataError raised while reading an episode's images, as a RecordProblem of that line."""
    missing = isinstance(exc.__cause__, FileNotFoundError)
    return RecordProblem(path, line, "missing_image" if missing else "unreadable_image", exc.message)


def verify_pixels(chat: ChatProcessor, path: Path, seen: dict[Path, DataError | None]) -> None:
    """Decode the image at `path` as training does (`load_model_pixels`); DataError naming it when
    its pixels do not decode. `seen` remembers each file's outcome, so each is decoded once."""
    if path not in seen:
        try:
            load_model_pixels(chat.image_info(path))
            seen[path] = None
        except DataError as exc:
            seen[path] = exc
    if seen[path] is not None:
        raise seen[path]


def outside_problem(
    path: Path, line: int, episode: Episode, chat: ChatProcessor
) -> RecordProblem | None:
    """A box_outside_image RecordProblem when a box of the episode reaches past its stored image
    (training refuses such boxes), else None. Reads image headers (cached; DataError when one is
    unreadable)."""
    parts = []
    for sample in episode.samples:
        width, height = chat.image_info(path.parent / sample.image).stored_wh
        outside = objects_outside(sample.objects, width, height)
        if outside:
            parts.append(outside_image(sample.image, width, height, outside))
    if not parts:
        return None
    message = "; ".join(parts) + " (training refuses boxes past the image)"
    return RecordProblem(path, line, "box_outside_image", message)


def path_problem(path: Path, line: int, episode: Episode) -> RecordProblem | None:
    """An image_outside_folder RecordProblem when an image path of the episode is absolute or
    climbs out of the JSONL's folder with `..` (the dataset then breaks when the folder is copied
    or moved; `bbu convert` writes paths inside it), else None."""
    leaving = [
        image
        for sample in episode.samples
        for image in sample.images
        if PurePath(image).is_absolute()
        or PureWindowsPath(image).is_absolute()
        or not _stays_inside(PurePath(image.replace("\\", "/")))
    ]
    if not leaving:
        return None
    names = ", ".join(dict.fromkeys(leaving))
    message = f"image path(s) leave the JSONL's folder: {names} (copying the dataset breaks them)"
    return RecordProblem(path, line, "image_outside_folder", message)


def _stays_inside(relative: PurePath) -> bool:
    depth = 0
    for part in relative.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return False
    return True


def budget_problem(path: Path, line: int, budget: SampleBudget, max_tokens: int) -> RecordProblem | None:
    """An over_budget RecordProblem when the budget dropped teachers or skips the episode, else None."""
    if not budget.fits:
        message = (
            f"over max_tokens {max_tokens} even without teachers (the student alone is "
            f"{budget.tokens} tokens): skipped in training"
        )
    elif budget.teachers_dropped:
        teachers = budget.teachers_kept + budget.teachers_dropped
        message = (
            f"over max_tokens {max_tokens}: {budget.teachers_dropped} of {teachers} teacher(s) "
            f"dropped, {budget.tokens} tokens left"
        )
    else:
        return None
    return RecordProblem(path, line, "over_budget", message)


def count_records(path: Path) -> int:
    """Non-blank lines of `path` (the total for progress), read as bytes."""
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError as exc:
        raise DataError(f"cannot open {path}: {exc.strerror}", hint="check the path") from exc


def read_record(path: Path, index: int) -> tuple[int, Episode]:
    """The `index`-th record (0-based, blank lines skipped) as (line, episode).

    DataError naming the line when that record is not an episode, or when there is no such index.
    """
    if index < 0:
        raise UsageError(f"--index must be >= 0, got {index}")
    seen = 0
    for position, (line, item) in enumerate(iter_episodes(path)):
        seen = position + 1
        if position < index:
            continue
        if isinstance(item, RecordError):
            raise DataError(str(item), hint="fix the line, or inspect another --index")
        return line, item
    raise DataError(
        f"{path} has {seen} record(s); there is no index {index}",
        hint=f"--index counts records from 0 (0..{max(seen - 1, 0)})",
    )
