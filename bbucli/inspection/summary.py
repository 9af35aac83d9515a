"""The whole-file view of `bbu inspect`: counts, classes, token lengths, budget, batching, problems.

Token counts are `ChatProcessor.measure`'s, which reads image headers only (no pixel decode) and
counts exactly what `process_sample` would produce, after the budget has dropped teachers. Every
record is inspected on its own: a bad line, a missing image, a box past its image or an episode
the budget skips becomes a `RecordProblem` and the rest of the file is still counted (an episode
with a box past its image is counted as it is, and listed).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbucli.errors import DataError
from bbucli.inspection.batching import BatchingStats, batching_stats
from bbucli.inspection.jsonable import to_jsonable
from bbucli.inspection.source import (
    InspectOptions,
    RecordProblem,
    budget_problem,
    chat_processor,
    count_records,
    image_problem,
    outside_problem,
    path_problem,
    verify_pixels,
)
from bbucli.schema import Progress, RecordError, iter_episodes

PROGRESS_EVERY = 256


@dataclass(frozen=True)
class Distribution:
    """min / median / p95 / max / mean of a list of counts (p95: nearest rank); zeros when empty."""

    count: int
    min: int
    median: float
    p95: int
    max: int
    mean: float

    @classmethod
    def of(cls, values: list[int]) -> Distribution:
        if not values:
            return cls(0, 0, 0.0, 0, 0, 0.0)
        ordered = sorted(values)
        p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
        return cls(
            count=len(ordered),
            min=ordered[0],
            median=float(statistics.median(ordered)),
            p95=p95,
            max=ordered[-1],
            mean=sum(ordered) / len(ordered),
        )


@dataclass(frozen=True)
class TokenShares:
    """Tokens of the episodes that fit, split three ways: vision (image pads), answer (teacher
    and student answers with their `<|im_end|>`, the trained tokens) and text (everything else:
    system prompt, instructions, template). The shares sum to 1."""

    total: int
    text: int
    vision: int
    answer: int

    @property
    def shares(self) -> dict[str, float]:
        if not self.total:
            return {"text": 0.0, "vision": 0.0, "answer": 0.0}
        return {k: getattr(self, k) / self.total for k in ("text", "vision", "answer")}


@dataclass(frozen=True)
class ClassCount:
    """Objects of one desc: in student answers (what is learned) and in teacher answers."""

    desc: str
    student: int
    teacher: int


@dataclass(frozen=True)
class DatasetSummary:
    """What one JSONL costs and holds; see `summarize`.

    records: non-blank lines; episodes: records inspected (their images readable), including
    those the budget skips; fitting: episodes within max_tokens (after dropping teachers);
    images: distinct image files, image_refs: images referenced by the inspected episodes
    (teachers repeat); images_resized: distinct images not at the processor's smart_resize fixed
    point (resized when training); tokens: tokens per fitting episode; vision_per_image: vision
    tokens per distinct image; teachers_dropped: episodes that lost teachers to the budget;
    skipped: episodes whose student alone exceeds it; batching: over the fitting episodes;
    images_decoded: distinct images decoded in full (`verify_images`; 0 without it);
    seconds: time spent reading and counting (loading the processor excluded).
    """

    path: Path
    model: str
    lang: str
    max_tokens: int | None
    records: int
    episodes: int
    fitting: int
    teachers: int
    images: int
    image_refs: int
    images_resized: int
    student_objects: int
    teacher_objects: int
    classes: tuple[ClassCount, ...]
    tokens: Distribution
    vision_per_image: Distribution
    token_split: TokenShares
    teachers_dropped: int
    skipped: int
    batching: BatchingStats
    problems: tuple[RecordProblem, ...]
    seconds: float
    images_decoded: int = 0

    @property
    def over_budget(self) -> int:
        """Episodes whose full conversation exceeds max_tokens (teachers dropped or skipped)."""
        return self.teachers_dropped + self.skipped

    def to_dict(self) -> dict[str, Any]:
        out = to_jsonable(self)
        out["token_split"]["shares"] = self.token_split.shares
        out["over_budget"] = self.over_budget
        return out


def summarize(
    path: str | Path, options: InspectOptions | None = None, progress: Progress | None = None
) -> DatasetSummary:
    """Inspect every record of the JSONL at `path` from image headers and text alone (and, with
    `options.verify_images`, every image decoded as training decodes it: a truncated file reads
    fine from its header and is found only so).

    progress: called as progress("inspect", done, total) every few hundred records and at the end.
    Raises DataError only when the file cannot be opened; bad records become `problems`.
    """
    path = Path(path)
    options = options or InspectOptions()
    chat = chat_processor(options, source=path)
    started = time.perf_counter()
    root = path.parent
    total = count_records(path)

    problems: list[RecordProblem] = []
    lengths: list[int] = []
    split = Counter[str]()
    image_tokens: dict[str, int] = {}  # by the path written in the JSONL
    resized: set[str] = set()
    student_classes, teacher_classes = Counter[str](), Counter[str]()
    counts = Counter[str]()
    verified: dict[Path, DataError | None] = {}

    done = 0
    for line, item in iter_episodes(path):
        done += 1
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress("inspect", done, total)
        if isinstance(item, RecordError):
            problems.append(RecordProblem(path, line, "invalid_record", item.message))
            continue
        try:
            budget = chat.measure(item, root)
            if options.verify_images:
                for sample in item.samples:
                    verify_pixels(chat, root / sample.image, verified)
        except DataError as exc:
            problems.append(image_problem(path, line, exc))
            continue
        counts["episodes"] += 1
        counts["teachers"] += len(item.teachers)
        for sample in item.samples:
            if sample.image not in image_tokens:  # measure has just read (and cached) it
                info = chat.image_info(root / sample.image)
                image_tokens[sample.image] = info.vision_tokens
                if info.needs_resize:
                    resized.add(sample.image)
        counts["image_refs"] += len(item.samples)
        for problem in (path_problem(path, line, item), outside_problem(path, line, item, chat)):
            if problem is not None:
                problems.append(problem)
        student_classes.update(o.desc for o in item.student.objects)
        teacher_classes.update(o.desc for t in item.teachers for o in t.objects)
        if options.max_tokens is not None:
            problem = budget_problem(path, line, budget, options.max_tokens)
            if problem is not None:
                problems.append(problem)
        counts["teachers_dropped"] += int(budget.fits and budget.teachers_dropped > 0)
        if not budget.fits:
            counts["skipped"] += 1
            continue
        lengths.append(budget.tokens)
        split["vision"] += budget.vision_tokens
        split["answer"] += budget.answer_tokens
        split["text"] += budget.tokens - budget.vision_tokens - budget.answer_tokens
    if progress is not None:
        progress("inspect", done, total)

    descs = sorted(
        set(student_classes) | set(teacher_classes),
        key=lambda d: (-student_classes[d], -teacher_classes[d], d),
    )
    return DatasetSummary(
        path=path,
        model=str(options.model),
        lang=options.lang,
        max_tokens=options.max_tokens,
        records=done,
        episodes=counts["episodes"],
        fitting=len(lengths),
        teachers=counts["teachers"],
        images=len(image_tokens),
        image_refs=counts["image_refs"],
        images_resized=len(resized),
        student_objects=sum(student_classes.values()),
        teacher_objects=sum(teacher_classes.values()),
        classes=tuple(ClassCount(d, student_classes[d], teacher_classes[d]) for d in descs),
        tokens=Distribution.of(lengths),
        vision_per_image=Distribution.of(list(image_tokens.values())),
        token_split=TokenShares(sum(lengths), split["text"], split["vision"], split["answer"]),
        teachers_dropped=counts["teachers_dropped"],
        skipped=counts["skipped"],
        batching=batching_stats(lengths, options.batch_size, options.batch_tokens),
        problems=tuple(problems),
        seconds=time.perf_counter() - started,
        images_decoded=len(verified),
    )
