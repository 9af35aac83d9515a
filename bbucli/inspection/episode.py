"""One episode in detail (`bbu inspect --index I`): per turn, its image, grid and token counts.

The episode goes through `ChatProcessor.process_sample` exactly as in training (pixels decoded,
the budget applied), and the turns are cut from the resulting ids at each `<|im_start|>`: the
system turn, then per image its user turn and the assistant's answer. An episode the budget
skips is shown without the budget, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbucli.chat.processor import ChatProcessor, ChatProcessorOutput, ImageInfo
from bbucli.errors import DataError
from bbucli.inspection.jsonable import to_jsonable
from bbucli.inspection.source import InspectOptions, chat_processor, read_record
from bbucli.schema import Episode


@dataclass(frozen=True)
class ProcessedRecord:
    """A record of the file through the ChatProcessor. skipped: the budget skips it in training
    (`output` is then the episode without a budget); infos: its images' header info, kept
    teachers then the student."""

    path: Path
    line: int
    index: int
    episode: Episode
    output: ChatProcessorOutput
    infos: tuple[ImageInfo, ...]
    skipped: bool
    chat: ChatProcessor
    max_tokens: int | None


def process_record(
    path: str | Path, index: int, options: InspectOptions | None = None
) -> ProcessedRecord:
    """Read the `index`-th record (0-based) of `path` and process it; DataError naming its line."""
    path = Path(path)
    options = options or InspectOptions()
    line, episode = read_record(path, index)
    chat = chat_processor(options, source=path)
    try:
        output = chat.process_sample(episode, path.parent)
        skipped = output is None
        if output is None:
            chat = chat_processor(options, budget=False, source=path)
            output = chat.process_sample(episode, path.parent)
        kept = len(episode.teachers) - output.teachers_dropped
        samples = [*episode.teachers[:kept], episode.student]
        infos = tuple(chat.image_info(path.parent / s.image) for s in samples)
    except DataError as exc:
        raise DataError(f"{path}:{line}: {exc.message}", hint=exc.hint) from exc
    return ProcessedRecord(
        path, line, index, episode, output, infos, skipped, chat, options.max_tokens
    )


@dataclass(frozen=True)
class TurnDetail:
    """One turn of the conversation. role: "system", "teacher K" or "student"; for an image turn
    (user turn + the assistant's answer): image as written in the JSONL, stored_wh its EXIF-upright
    size on disk, model_wh the size the model sees, grid_thw the image processor's (t, h/14, w/14)
    patch grid; tokens split into vision (image pads), text (template, instruction) and answer
    (the answer with its `<|im_end|>`, in segment 1 teacher / 2 student)."""

    role: str
    image: str | None
    stored_wh: tuple[int, int] | None
    model_wh: tuple[int, int] | None
    grid_thw: tuple[int, int, int] | None
    objects: int
    vision_tokens: int
    text_tokens: int
    answer_tokens: int
    answer_segment: int | None

    @property
    def tokens(self) -> int:
        return self.vision_tokens + self.text_tokens + self.answer_tokens


@dataclass(frozen=True)
class EpisodeDetail:
    """One episode as training sees it. teachers_dropped: teachers the budget removed (the last
    ones; not in `turns`); skipped: the budget skips the whole episode (turns shown without it);
    prompt_end: index of the student answer's first token."""

    path: Path
    line: int
    index: int
    episode_id: str | None
    max_tokens: int | None
    tokens: int
    vision_tokens: int
    text_tokens: int
    answer_tokens: int
    prompt_end: int
    teachers_dropped: int
    skipped: bool
    turns: tuple[TurnDetail, ...]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def describe(record: ProcessedRecord) -> EpisodeDetail:
    """The per-turn token accounting of a processed record."""
    out, chat = record.output, record.chat
    ids = out.input_ids.tolist()
    segment = out.segment.tolist()
    im_start = int(chat.tokenizer.convert_tokens_to_ids("<|im_start|>"))
    starts = [i for i, t in enumerate(ids) if t == im_start]
    # <|im_start|> opens the system turn, then a user and an assistant turn per image.
    bounds = [0, *starts[1::2], len(ids)]
    kept = len(record.infos) - 1
    samples = [*record.episode.teachers[:kept], record.episode.student]
    grids = [tuple(int(v) for v in thw) for thw in out.image_grid_thw.tolist()]
    turns = []
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k], bounds[k + 1]
        vision = sum(1 for t in ids[lo:hi] if t == chat.image_token_id)
        answer = sum(1 for s in segment[lo:hi] if s > 0)
        if k == 0:
            role, sample, info, grid = "system", None, None, None
        else:
            sample, info, grid = samples[k - 1], record.infos[k - 1], grids[k - 1]
            role = "student" if k == len(bounds) - 2 else f"teacher {k}"
        turns.append(
            TurnDetail(
                role=role,
                image=sample.image if sample else None,
                stored_wh=info.stored_wh if info else None,
                model_wh=info.model_wh if info else None,
                grid_thw=grid,
                objects=len(sample.objects) if sample else 0,
                vision_tokens=vision,
                text_tokens=hi - lo - vision - answer,
                answer_tokens=answer,
                answer_segment=max(segment[lo:hi]) if answer else None,
            )
        )
    meta_id = record.episode.meta.get("id")
    return EpisodeDetail(
        path=record.path,
        line=record.line,
        index=record.index,
        episode_id=str(meta_id) if meta_id is not None else None,
        max_tokens=record.max_tokens,
        tokens=out.length,
        vision_tokens=sum(t.vision_tokens for t in turns),
        text_tokens=sum(t.text_tokens for t in turns),
        answer_tokens=sum(t.answer_tokens for t in turns),
        prompt_end=out.prompt_end,
        teachers_dropped=len(record.episode.teachers) - kept,
        skipped=record.skipped,
        turns=tuple(turns),
    )


def episode_detail(
    path: str | Path, index: int, options: InspectOptions | None = None
) -> EpisodeDetail:
    """`describe(process_record(path, index, options))`."""
    return describe(process_record(path, index, options))
