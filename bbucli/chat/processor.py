"""Episode -> model tensors: the teacher/student conversation through the real Qwen2.5-VL chat template.

Conversation: system prompt; per teacher a user turn (image + instruction) and an
assistant turn (its grounding JSON, `bbucli.chat.answer`); then the student's user turn and answer.
The template renders each image as `<|vision_start|><|image_pad|><|vision_end|>`; the single pad is
expanded to the image's `(h / 28) * (w / 28)` merged vision tokens at the id level, which is what
the Qwen processor does to the text (`<|image_pad|>` is an atomic added token, so both give the
same ids) without building a string of thousands of pads.

Answer spans come from the template itself: it renders the conversation with a marker per answer
(checked against the conversation rendered up to that answer with `add_generation_prompt=True`);
the text around the markers is tokenised once per number of turns and each answer on its own, and
the template's `<|im_end|>` right after an answer joins its span (the model must learn to stop).

Images are measured from their headers (size + EXIF orientation, no pixel decode) so that the token
budget, `measure` and `bbu inspect` cost no decoding; header info is cached per path (checked
against the file's mtime and size) and answer lengths are counted without tokenising every answer
(`bbucli.chat.answer_length`), so `measure` runs at thousands of episodes per second. An image not
at the smart_resize fixed point of this processor's pixel limits (a raw-size JSONL) is resized here and
its boxes rescaled, so the model's image processor never resizes again; the grid it reports is
checked against ours.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bbucli.chat.answer import render_answer
from bbucli.chat.answer_length import AnswerLengths
from bbucli.chat.image_info import (
    ImageInfo,
    check_image_grid,
    load_model_pixels,
    model_objects,
    read_image_info,
)
from bbucli.chat.rope import image_token_runs, mrope_position_ids
from bbucli.errors import DataError, ModelError
from bbucli.geometry import normalize_xyxy
from bbucli.schema import DetObject, Episode

SEGMENT_PROMPT, SEGMENT_TEACHER, SEGMENT_STUDENT = 0, 1, 2
#: The label of every position the LM loss skips (torch's cross_entropy default).
IGNORE_INDEX = -100


@dataclass(frozen=True, eq=False)
class ChatProcessorOutput:
    """One episode as model tensors; S tokens, T images (kept teachers then the student).

    input_ids (S,) long; labels (S,) long, the token where segment > 0 else -100;
    segment (S,) int8: 0 prompt, 1 teacher answer, 2 student answer (each with its `<|im_end|>`);
    mm_token_type_ids (S,) int32: 1 on `<|image_pad|>`, else 0; position_ids (3, S) long mRoPE ids
    and rope_delta (`bbucli.chat.rope`); pixel_values (patches, 1176) float32 and
    image_grid_thw (T, 3) long from the model's image processor; gt_boxes (N, 4) float32 normalised
    cxcywh of the student image as the model sees it, gt_descs their N descs; prompt_end: index of
    the student answer's first token (input_ids[:prompt_end] is the generation prompt);
    student_turn_start: index of the `<|im_start|>` opening the student's user turn;
    student_image_span: [start, end) of the student image's `<|image_pad|>` run, the last image
    (`image_grid_thw[-1]`): student_turn_start < start < end < prompt_end (a hand-built sample
    without images has an empty span, start == end);
    student_wh: (width, height) of the student image as the model sees it; teachers_dropped: how
    many teachers the token budget removed (the last ones).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    segment: torch.Tensor
    mm_token_type_ids: torch.Tensor
    position_ids: torch.Tensor
    rope_delta: int
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    gt_boxes: torch.Tensor
    gt_descs: tuple[str, ...]
    prompt_end: int
    student_turn_start: int
    student_image_span: tuple[int, int]
    student_wh: tuple[int, int]
    teachers_dropped: int = 0

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class SampleBudget:
    """Token accounting of one episode under the budget, from headers and text only.

    tokens: length of the processed sample (after dropping teachers); vision_tokens: its image
    pads; answer_tokens: teacher + student answer tokens (with their `<|im_end|>`);
    teachers_kept / teachers_dropped; fits: False when even the student alone exceeds `max_tokens`
    (then the counts are those of the student-only conversation).
    """

    tokens: int
    vision_tokens: int
    answer_tokens: int
    teachers_kept: int
    teachers_dropped: int
    fits: bool


@dataclass(frozen=True)
class _Rendered:
    """The conversation tokenised with one `<|image_pad|>` per image (before expansion)."""

    ids: list[int]
    segment: list[int]
    images: tuple[ImageInfo, ...]

    @property
    def expanded_length(self) -> int:
        return len(self.ids) + sum(im.vision_tokens - 1 for im in self.images)


@dataclass(frozen=True)
class _Plan:
    """What the token budget keeps of an episode (kept teachers then the student), counted only."""

    images: tuple[ImageInfo, ...]
    objects: tuple[tuple[DetObject, ...], ...]
    tokens: int
    answer_tokens: int
    dropped: int
    fits: bool


class ChatProcessor:
    """Turns `Episode`s into `ChatProcessorOutput`s with an image-only Qwen2.5-VL processor.

    processor: `bbucli.chat.loading.load_processor(...)` (tokenizer, Qwen2.5-VL chat template,
    `process_images`, `image_token_id`, `merge_size`, `min_pixels`, `max_pixels`).
    system_prompt / instruction: `bbucli.chat.prompts`. max_tokens: budget per sample, None for none.
    min_pixels / max_pixels: default to the processor's; images are brought to their fixed point.
    `stats` counts `samples`, `skipped_too_long`, `teachers_dropped` and `images_resized`; it is
    per process, so each DataLoader worker keeps its own.
    """

    def __init__(
        self,
        processor: Any,
        *,
        system_prompt: str,
        instruction: str,
        max_tokens: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.processor = processor
        self.system_prompt = system_prompt
        self.instruction = instruction
        self.max_tokens = max_tokens
        self.min_pixels = int(min_pixels or processor.min_pixels)
        self.max_pixels = int(max_pixels or processor.max_pixels)
        self.stats: Counter[str] = Counter()
        self._skeletons: dict[int, list[list[int]]] = {}
        self._skeleton_lengths: dict[int, int] = {}
        self._image_infos: dict[str, tuple[tuple[int, int], ImageInfo]] = {}
        self.tokenizer = processor.tokenizer
        self.image_token_id = int(processor.image_token_id)
        self.merge_size = int(processor.merge_size)
        self.vision_start_id = int(self.tokenizer.convert_tokens_to_ids("<|vision_start|>"))
        self.im_start_id = int(self.tokenizer.convert_tokens_to_ids("<|im_start|>"))
        self.im_end_id = int(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self._answer_lengths = AnswerLengths(self.tokenizer)
        if self.merge_size * 14 != 28:
            raise ModelError(
                f"expected a 2x2 patch merger (28-pixel tokens), got merge_size {self.merge_size}"
            )

    # ---- images ------------------------------------------------------------------------------

    def image_info(self, path: str | Path) -> ImageInfo:
        """Read an image header (no pixel decode); DataError naming the file when unreadable.

        Cached per path; a file whose mtime or size changed is read again."""
        path = os.fspath(path)
        try:
            stat = os.stat(path)
        except FileNotFoundError as exc:
            raise DataError(
                f"image not found: {path}", hint="check the JSONL's image paths"
            ) from exc
        except OSError as exc:
            raise DataError(
                f"cannot read image {path}: {exc}", hint="re-export or remove it"
            ) from exc
        signature = (stat.st_mtime_ns, stat.st_size)
        cached = self._image_infos.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        info = read_image_info(Path(path), self.min_pixels, self.max_pixels)
        self._image_infos[path] = (signature, info)
        return info

    # ---- text ------------------------------------------------------------------------------

    def _messages(self, answers: list[str]) -> list[dict[str, Any]]:
        """One answer per image, in turn order -> chat messages (images as placeholders)."""
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}
        ]
        for answer in answers:
            user = [{"type": "image"}, {"type": "text", "text": self.instruction}]
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def _template(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _skeleton(self, turns: int) -> list[list[int]]:
        """Token ids of the template text around the answers of a `turns`-image conversation.

        The template renders with a marker per answer; the text between markers (prompt, image
        placeholder, instruction, the `<|im_end|>` closing each answer, ...) depends only on the
        number of turns, so it is tokenised once. Tokenising the pieces apart gives the ids of the
        whole text: each answer starts after "assistant\n" and ends before `<|im_end|>`, and
        Qwen2's pre-tokenizer splits at both places anyway (tests compare with the whole text).
        """
        if turns in self._skeletons:
            return self._skeletons[turns]
        markers = [f"<<bbu-answer-{k}>>" for k in range(turns)]
        messages = self._messages(markers)
        text = self._template(messages, add_generation_prompt=False)
        chunks: list[str] = []
        rest = text
        for k, marker in enumerate(markers):
            head, found, rest = rest.partition(marker)
            before = text[: len(text) - len(rest) - len(marker)] if found else ""
            prefix = self._template(messages[: 2 + 2 * k], add_generation_prompt=True)
            if not found or before != prefix:
                raise ModelError(
                    "the chat template does not render answers verbatim after the prompt"
                )
            chunks.append(head)
        chunks.append(rest)
        ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in chunks]
        if any(not c or c[0] != self.im_end_id for c in ids[1:]):
            raise ModelError("the chat template does not close each answer with <|im_end|>")
        if sum(c.count(self.image_token_id) for c in ids) != turns:
            raise ModelError("the prompts must not contain '<|image_pad|>'")
        self._skeletons[turns] = ids
        self._skeleton_lengths[turns] = sum(len(c) for c in ids)
        return ids

    def _skeleton_length(self, turns: int) -> int:
        if turns not in self._skeleton_lengths:
            self._skeleton(turns)
        return self._skeleton_lengths[turns]

    def _render(self, images: list[ImageInfo], answers: list[str]) -> _Rendered:
        """Tokenise the conversation; segment 1 on teacher answers, 2 on the student's (last) one,
        each with the `<|im_end|>` that closes it."""
        skeleton = self._skeleton(len(answers))
        answer_ids = self.tokenizer(answers, add_special_tokens=False)["input_ids"]
        ids: list[int] = list(skeleton[0])
        segment: list[int] = [SEGMENT_PROMPT] * len(ids)
        for k, (answer, chunk) in enumerate(zip(answer_ids, skeleton[1:], strict=True)):
            if self.image_token_id in answer:
                raise DataError("an answer contains '<|image_pad|>'")
            value = SEGMENT_STUDENT if k == len(answers) - 1 else SEGMENT_TEACHER
            ids += answer
            ids += chunk
            segment += [value] * (len(answer) + 1) + [SEGMENT_PROMPT] * (len(chunk) - 1)
        return _Rendered(ids, segment, tuple(images))

    # ---- budget ------------------------------------------------------------------------------

    def _plan(self, episode: Episode, image_root: Path) -> _Plan:
        """Count the conversation with as many teachers as fit (the last dropped first).

        Counts only: skeleton lengths, answer lengths and header vision tokens; `process_sample`
        renders the plan and checks that its length is the one counted here."""
        samples = episode.samples
        infos = [self.image_info(os.path.join(image_root, s.image)) for s in samples]
        objects = [model_objects(s, info) for s, info in zip(samples, infos, strict=True)]
        answers = [self._answer_lengths(objs) for objs in objects]
        teachers = len(episode.teachers)
        while True:
            keep = [*range(teachers), len(samples) - 1]
            # The skeleton holds one pad per image and the <|im_end|> closing each answer.
            tokens = self._skeleton_length(len(keep)) + sum(
                answers[i] + infos[i].vision_tokens - 1 for i in keep
            )
            answer_tokens = sum(answers[i] + 1 for i in keep)
            fits = self.max_tokens is None or tokens <= self.max_tokens
            if fits or teachers == 0:
                return _Plan(
                    images=tuple(infos[i] for i in keep),
                    objects=tuple(objects[i] for i in keep),
                    tokens=tokens,
                    answer_tokens=answer_tokens,
                    dropped=len(episode.teachers) - teachers,
                    fits=fits,
                )
            teachers -= 1

    def measure(self, episode: Episode, image_root: str | Path) -> SampleBudget:
        """Token counts of `episode` as `process_sample` would produce it, without decoding pixels."""
        plan = self._plan(episode, Path(image_root))
        return SampleBudget(
            tokens=plan.tokens,
            vision_tokens=sum(im.vision_tokens for im in plan.images),
            answer_tokens=plan.answer_tokens,
            teachers_kept=len(plan.images) - 1,
            teachers_dropped=plan.dropped,
            fits=plan.fits,
        )

    # ---- the sample ------------------------------------------------------------------------------

    def process_sample(
        self, episode: Episode, image_root: str | Path
    ) -> ChatProcessorOutput | None:
        """The episode as tensors; None (counted in `stats["skipped_too_long"]`) when the student
        turn alone exceeds `max_tokens`. Image paths are relative to `image_root` (the JSONL folder)."""
        plan = self._plan(episode, Path(image_root))
        if not plan.fits:
            self.stats["skipped_too_long"] += 1
            return None
        images, objects, dropped = plan.images, plan.objects, plan.dropped
        rendered = self._render(list(images), [render_answer(objs) for objs in objects])
        if rendered.expanded_length != plan.tokens:
            raise ModelError(
                f"counted {plan.tokens} tokens for the episode but rendered "
                f"{rendered.expanded_length}; the tokenizer breaks the answer-length shortcut",
                hint="report this with the tokenizer used (BBU_DEBUG=1 for a traceback)",
            )
        pil_images = [load_model_pixels(info) for info in images]
        vision = self.processor.process_images(pil_images)
        grid = torch.as_tensor(vision["image_grid_thw"], dtype=torch.long).reshape(-1, 3)
        check_image_grid(images, grid)
        repeats = torch.tensor(self._pad_repeats(rendered), dtype=torch.long)
        input_ids = torch.repeat_interleave(torch.tensor(rendered.ids, dtype=torch.long), repeats)
        segment = torch.repeat_interleave(torch.tensor(rendered.segment, dtype=torch.int8), repeats)
        image_start, image_end = self._check_image_runs(input_ids, grid, images)[-1]
        turn_starts = torch.nonzero(input_ids[:image_start] == self.im_start_id).flatten()
        labels = torch.where(segment > 0, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        position_ids, rope_delta = mrope_position_ids(
            input_ids, grid, self.merge_size, self.image_token_id, self.vision_start_id
        )
        student_boxes = torch.tensor([o.bbox_2d for o in objects[-1]], dtype=torch.float32)
        student_wh = images[-1].model_wh

        self.stats["samples"] += 1
        self.stats["teachers_dropped"] += dropped
        self.stats["images_resized"] += sum(1 for info in images if info.needs_resize)
        return ChatProcessorOutput(
            input_ids=input_ids,
            labels=labels,
            segment=segment,
            mm_token_type_ids=(input_ids == self.image_token_id).to(torch.int32),
            position_ids=position_ids,
            rope_delta=rope_delta,
            pixel_values=torch.as_tensor(vision["pixel_values"], dtype=torch.float32),
            image_grid_thw=grid,
            gt_boxes=normalize_xyxy(student_boxes.reshape(-1, 4), student_wh),
            gt_descs=tuple(o.desc for o in objects[-1]),
            prompt_end=int(torch.nonzero(segment == SEGMENT_STUDENT)[0]),
            student_turn_start=int(turn_starts[-1]),
            student_image_span=(image_start, image_end),
            student_wh=student_wh,
            teachers_dropped=dropped,
        )

    def _pad_repeats(self, rendered: _Rendered) -> list[int]:
        """How many tokens each rendered token becomes: an image's vision-token count for its pad."""
        counts = iter(im.vision_tokens for im in rendered.images)
        return [next(counts) if t == self.image_token_id else 1 for t in rendered.ids]

    def _check_image_runs(
        self, input_ids: torch.Tensor, grid: torch.Tensor, images: tuple[ImageInfo, ...]
    ) -> list[tuple[int, int]]:
        """Each image is one contiguous pad run of grid.prod() / merge**2 tokens after
        <|vision_start|>, in a user turn; returns the runs ([start, end) per image)."""
        runs = image_token_runs(input_ids, self.image_token_id)
        if len(runs) != len(images):
            raise DataError(
                f"{len(runs)} image-token runs for {len(images)} images ({images[0].path} ...)"
            )
        for (start, end), thw, info in zip(runs, grid.tolist(), images, strict=True):
            need = thw[0] * thw[1] * thw[2] // self.merge_size**2
            if end - start != need or int(input_ids[start - 1]) != self.vision_start_id:
                raise DataError(
                    f"image {info.path}: {end - start} image tokens at {start}, its grid {thw} needs {need}"
                )
            if self.im_start_id not in input_ids[:start]:
                raise ModelError(f"image {info.path}: its tokens at {start} are in no chat turn")
        return runs
