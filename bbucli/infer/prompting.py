"""Inference prompts: an image (and optional teacher episodes) -> the prompt tensors training builds.

Nothing is assembled by hand: `ChatProcessor.process_sample` renders an episode whose student is
the image with no objects, teachers first with their answers, through the checkpoint's chat
template, and the sample is cut at `prompt_end`, right after the student turn's generation header
`<|im_start|>assistant\\n`. So the student image and each teacher image take the training
smart_resize (the processor's pixel limits; teacher boxes rescaled with their image), and the
teacher turns are token for token those of training. With a token budget (`max_tokens`, the
training config's `data.max_tokens`) teachers are dropped, the last first, as training drops them;
the budget counts the prompt and the student's empty answer (training counts its real answer). A
student too long on its own, which training skips, is still predicted, without teachers.

An image is a path, a PIL image or an `Episode` (its student's image, with its teachers). A PIL
image stays in memory: made upright (EXIF orientation applied) and RGB, it takes the route of a
file from there on (same smart_resize, same decode), under the name `<in-memory>/image_<i>`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from bbucli.chat.image_info import ImageInfo, memory_image_info
from bbucli.chat.loading import VLProcessor
from bbucli.chat.processor import ChatProcessor, ChatProcessorOutput
from bbucli.chat.prompts import Prompts
from bbucli.errors import ModelError, UsageError
from bbucli.schema import Episode, Sample

ImageInput = str | Path | Image.Image | Episode
#: Where in-memory images are said to be (a name only: nothing is written there).
IN_MEMORY = Path(os.sep, "<in-memory>")
#: Teachers of one image: an Episode (its teachers), Samples, or None.
TeachersInput = Episode | Sequence[Sample] | None


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """An image ready for the model. sample: the prompt tensors (`ChatProcessorOutput` cut at
    `prompt_end`); key: its name in `Detections.image`; image_wh: the upright original size
    (the frame predictions are returned in); teachers: how many were prepended (after the budget)."""

    sample: ChatProcessorOutput
    key: str
    image_wh: tuple[int, int]
    teachers: int

    @property
    def model_wh(self) -> tuple[int, int]:
        """The size the model sees (the smart_resize fixed point)."""
        return self.sample.student_wh


class PromptBuilder:
    """Builds `PreparedImage`s with one `ChatProcessor` per (system prompt, instruction, budget).

    max_tokens: the token budget of a whole episode (None: every teacher is kept)."""

    def __init__(
        self, processor: VLProcessor, prompts: Prompts, max_tokens: int | None = None
    ) -> None:
        self.processor = processor
        self.prompts = prompts
        self.max_tokens = max_tokens
        self._chats: dict[tuple[str, str, int | None], _Chat] = {}

    def chat(self, prompt: str | Prompts | None = None, *, budget: bool = True) -> _Chat:
        """The ChatProcessor of `prompt`: a str replaces the instruction, `Prompts` both texts,
        None keeps the training prompts; budget=False: without `max_tokens`."""
        if isinstance(prompt, Prompts):
            prompts = prompt
        elif isinstance(prompt, str):
            prompts = replace(self.prompts, instruction=prompt)
        else:
            prompts = self.prompts
        max_tokens = self.max_tokens if budget else None
        key = (prompts.system, prompts.instruction, max_tokens)
        if key not in self._chats:
            self._chats[key] = _Chat(
                self.processor,
                system_prompt=prompts.system,
                instruction=prompts.instruction,
                max_tokens=max_tokens,
            )
        return self._chats[key]

    def prepare(
        self,
        image: ImageInput,
        teachers: tuple[Sample, ...] = (),
        *,
        prompt: str | Prompts | None = None,
        key: str | None = None,
        index: int = 0,
    ) -> PreparedImage:
        """One image's prompt. teachers: Samples with absolute image paths (`teacher_samples`);
        an `Episode` image brings its own teachers (then `teachers` must be empty). key default:
        the path as given (an Episode: its student's), `image_<index>` for a PIL image."""
        chat = self.chat(prompt)
        memory: ImageInfo | None = None
        if isinstance(image, Episode):
            if teachers:
                raise UsageError("an Episode brings its own teachers: pass no other teachers")
            teachers = teacher_samples(image)
            image = image.student.image
        if isinstance(image, Image.Image):
            default_key = f"image_{index}"
            memory = memory_image_info(
                image, IN_MEMORY / default_key, chat.min_pixels, chat.max_pixels
            )
            file = memory.path
        else:
            file = Path(image).absolute()
            default_key = str(image)
        episode = Episode(student=Sample((str(file),)), teachers=teachers)
        with chat.in_memory(memory), self.chat(prompt, budget=False).in_memory(memory) as alone:
            image_wh = chat.image_info(file).stored_wh
            out = chat.process_sample(episode, Path.cwd())
            if out is None:  # the student alone is over the budget: predicted anyway, alone
                episode = Episode(student=episode.student)
                out = alone.process_sample(episode, Path.cwd())
        if out is None:
            raise ModelError(f"{file}: no prompt could be built")
        kept = len(episode.teachers) - out.teachers_dropped
        return PreparedImage(prompt_only(out), key or default_key, image_wh, kept)


class _Chat(ChatProcessor):
    """A `ChatProcessor` that also reads images given in memory (`memory_image_info`), by their
    name, while `in_memory` holds them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._memory: dict[str, ImageInfo] = {}

    def image_info(self, path: str | Path) -> ImageInfo:
        found = self._memory.get(os.fspath(path))
        return found if found is not None else super().image_info(path)

    @contextmanager
    def in_memory(self, info: ImageInfo | None) -> Iterator[_Chat]:
        """Within the block, `info.path` names `info` (nothing when None)."""
        if info is not None:
            self._memory[os.fspath(info.path)] = info
        try:
            yield self
        finally:
            if info is not None:
                self._memory.pop(os.fspath(info.path), None)


def prompt_only(out: ChatProcessorOutput) -> ChatProcessorOutput:
    """The sample cut at `prompt_end`: the generation prompt, without the (empty) answer."""
    end = out.prompt_end
    return replace(
        out,
        input_ids=out.input_ids[:end],
        labels=out.labels[:end],
        segment=out.segment[:end],
        mm_token_type_ids=out.mm_token_type_ids[:end],
        position_ids=out.position_ids[:, :end],
    )


def teacher_samples(teachers: TeachersInput) -> tuple[Sample, ...]:
    """An Episode's teachers, or Samples, with image paths made absolute (working directory)."""
    if teachers is None:
        return ()
    samples = teachers.teachers if isinstance(teachers, Episode) else tuple(teachers)
    if not all(isinstance(s, Sample) for s in samples):
        raise UsageError("teachers must be an Episode or a list of Samples")
    return tuple(
        replace(s, images=tuple(str(Path(p).absolute()) for p in s.images)) for s in samples
    )


def teachers_per_image(
    teachers: TeachersInput | Sequence[TeachersInput], n: int
) -> list[tuple[Sample, ...]]:
    """One teacher tuple per image: a single entry (an Episode, or a list of Samples) is shared by
    all images; a list with one entry per image (Episodes, lists of Samples or None) is per image."""
    if teachers is None or isinstance(teachers, Episode):
        return [teacher_samples(teachers)] * n
    entries = list(teachers)
    if all(isinstance(t, Sample) for t in entries):
        return [teacher_samples(entries)] * n
    if len(entries) != n:
        raise UsageError(
            f"{len(entries)} teacher entries for {n} images",
            hint="give one entry per image, or one list of Samples shared by all",
        )
    return [teacher_samples(t) for t in entries]
