"""ChatProcessor: episode -> tokens, spans, pixels, GT boxes, through the real tokenizer and template."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bbucli.chat.answer import render_answer
from bbucli.chat.loading import load_processor
from bbucli.chat.processor import ChatProcessor
from bbucli.chat.prompts import build_prompts
from bbucli.chat.rope import image_token_runs, mrope_position_ids
from bbucli.errors import DataError
from bbucli.schema import DetObject, Episode, Sample

CLASSES = ["连接点（螺丝）/BBU安装螺丝/连接正确", "BBU品牌/华为"]
SIZES = {"t1.png": (56, 84), "t2.png": (112, 56), "s.png": (84, 56), "raw.png": (100, 90)}


@pytest.fixture(scope="module")
def processor():
    return load_processor("tiny")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (w, h) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def chat(processor, max_tokens: int | None = None, lang: str = "zh") -> ChatProcessor:
    prompts = build_prompts(CLASSES, lang)
    return ChatProcessor(
        processor,
        system_prompt=prompts.system,
        instruction=prompts.instruction,
        max_tokens=max_tokens,
    )


def sample(name: str, *boxes: tuple[int, int, int, int]) -> Sample:
    return Sample((name,), tuple(DetObject(b, CLASSES[i % 2]) for i, b in enumerate(boxes)))


EPISODE = Episode(
    student=sample("s.png", (1, 2, 30, 40), (40, 10, 80, 50)),
    teachers=(sample("t1.png", (5, 6, 20, 30)), sample("t2.png", (0, 0, 112, 56), (3, 4, 5, 6))),
)


def test_image_pads_are_contiguous_and_match_the_grid(processor, root) -> None:
    out = chat(processor).process_sample(EPISODE, root)
    grid = out.image_grid_thw
    assert grid.tolist() == [
        [1, 6, 4],
        [1, 4, 8],
        [1, 4, 6],
    ]  # (t, h/14, w/14) per image, in turn order
    runs = image_token_runs(out.input_ids, processor.image_token_id)
    assert [end - start for start, end in runs] == [6, 8, 6]  # (h/28) * (w/28)
    for start, end in runs:
        assert out.input_ids[start - 1] == processor.vision_start_id
        assert out.input_ids[end] == processor.vision_end_id
    assert out.pixel_values.shape == (int(grid.prod(-1).sum()), 1176)
    assert torch.equal(out.mm_token_type_ids, (out.input_ids == processor.image_token_id).int())
    expected, delta = mrope_position_ids(out.input_ids, grid, 2, processor.image_token_id)
    assert torch.equal(out.position_ids, expected) and out.rope_delta == delta


def test_ids_equal_the_stock_string_expansion(processor, root) -> None:
    cp = chat(processor)
    out = cp.process_sample(EPISODE, root)
    messages = [{"role": "system", "content": [{"type": "text", "text": cp.system_prompt}]}]
    for s in EPISODE.samples:
        messages.append(
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": cp.instruction}],
            }
        )
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": render_answer(s.objects)}]}
        )
    text = processor.apply_chat_template(messages)
    pieces = text.split("<|image_pad|>")
    counts = [6, 8, 6]
    text = "".join(p + "<|image_pad|>" * counts[i] for i, p in enumerate(pieces[:-1])) + pieces[-1]
    assert (
        out.input_ids.tolist() == processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    images = [Image.open(root / s.image).convert("RGB") for s in EPISODE.samples]
    reference = processor.process_images(images)
    assert torch.equal(out.pixel_values, reference["pixel_values"])


def test_segments_labels_and_answers_line_up(processor, root) -> None:
    out = chat(processor).process_sample(EPISODE, root)
    tok = processor.tokenizer
    assert out.segment.dtype == torch.int8 and set(out.segment.unique().tolist()) == {0, 1, 2}
    assert torch.equal(out.labels != -100, out.segment > 0)
    assert torch.equal(out.labels[out.segment > 0], out.input_ids[out.segment > 0])
    # Each answer is one run ending in <|im_end|>; teachers in order, the student last.
    seg = out.segment.tolist()
    runs, start = [], None
    for i, (a, b) in enumerate(zip([0, *seg], [*seg, 0], strict=True)):
        if b > 0 and a != b:
            start = i
        if a > 0 and a != b:
            runs.append((start, i, a))
    assert [r[2] for r in runs] == [1, 1, 2]
    for (start, end, _), s in zip(runs, EPISODE.samples, strict=True):
        assert tok.decode(out.input_ids[start:end]) == render_answer(s.objects) + "<|im_end|>"
    assert out.prompt_end == runs[-1][0]
    assert tok.decode(out.input_ids[: out.prompt_end]).endswith(
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (out.segment[: out.prompt_end] < 2).all() and (
        out.segment[out.prompt_end :] == 2
    ).sum() > 0


def test_gt_boxes_are_normalised_cxcywh_of_the_student(processor, root) -> None:
    out = chat(processor).process_sample(EPISODE, root)
    w, h = out.student_wh
    assert (w, h) == (84, 56)
    expected = torch.tensor([[15.5 / w, 21 / h, 29 / w, 38 / h], [60 / w, 30 / h, 40 / w, 40 / h]])
    assert torch.allclose(out.gt_boxes, expected)
    assert out.gt_descs == (CLASSES[0], CLASSES[1])


def test_budget_drops_the_last_teachers_first(processor, root) -> None:
    full = chat(processor).process_sample(EPISODE, root).length
    cp = chat(processor, max_tokens=full - 1)
    one = cp.process_sample(EPISODE, root)
    assert one.teachers_dropped == 1 and one.image_grid_thw.tolist() == [[1, 6, 4], [1, 4, 6]]
    assert processor.tokenizer.decode(one.input_ids[one.segment == 1]).startswith(
        render_answer(EPISODE.teachers[0].objects)
    )
    budget = cp.measure(EPISODE, root)
    assert (budget.tokens, budget.teachers_kept, budget.teachers_dropped, budget.fits) == (
        one.length,
        1,
        1,
        True,
    )

    alone = chat(processor, max_tokens=one.length - 1).process_sample(EPISODE, root)
    assert (
        alone.teachers_dropped == 2
        and (alone.segment == 1).sum() == 0
        and alone.length <= one.length - 1
    )
    assert alone.image_grid_thw.tolist() == [[1, 4, 6]]

    cp = chat(processor, max_tokens=alone.length - 1)
    assert cp.process_sample(EPISODE, root) is None
    assert cp.process_sample(EPISODE, root) is None
    assert cp.stats["skipped_too_long"] == 2 and cp.stats["samples"] == 0
    assert not cp.measure(EPISODE, root).fits
    assert (
        chat(processor, max_tokens=alone.length).process_sample(EPISODE, root).length
        == alone.length
    )


def test_raw_size_image_is_resized_with_its_boxes(processor, root) -> None:
    episode = Episode(student=sample("raw.png", (5, 6, 99, 89), (50, 45, 60, 50)))
    cp = chat(processor)
    out = cp.process_sample(episode, root)
    assert out.student_wh == (112, 84)  # smart_resize of 100x90, the processor's fixed point
    assert out.image_grid_thw.tolist() == [[1, 6, 8]] and cp.stats["images_resized"] == 1
    answer = processor.tokenizer.decode(out.input_ids[out.segment == 2])
    assert (
        answer.startswith('[{"bbox_2d": [6, 6, 111, 83], ')
        and '"bbox_2d": [56, 42, 67, 47]' in answer
    )
    assert torch.allclose(
        out.gt_boxes[0], torch.tensor([58.5 / 112, 44.5 / 84, 105 / 112, 77 / 84])
    )


def test_exif_rotation_is_read_from_the_header(processor, tmp_path) -> None:
    exif = Image.Exif()
    exif[274] = 6  # rotate 90: the stored 84x56 pixels show upright as 56x84
    Image.new("RGB", (84, 56), "gray").save(tmp_path / "rot.jpg", exif=exif)
    cp = chat(processor)
    info = cp.image_info(tmp_path / "rot.jpg")
    assert info.stored_wh == (56, 84) and not info.needs_resize and info.vision_tokens == 6
    out = cp.process_sample(Episode(student=sample("rot.jpg", (1, 1, 10, 10))), tmp_path)
    assert out.image_grid_thw.tolist() == [[1, 6, 4]] and out.student_wh == (56, 84)


def test_missing_image_names_the_file(processor, root) -> None:
    with pytest.raises(DataError, match="nope.png"):
        chat(processor).process_sample(Episode(student=sample("nope.png")), root)


def test_prompt_text_and_empty_answer(processor, root) -> None:
    out = chat(processor, lang="en").process_sample(Episode(student=sample("s.png")), root)
    text = processor.tokenizer.decode(out.input_ids)
    assert text.startswith("<|im_start|>system\nYou are an inspection assistant")
    assert all(c in text for c in CLASSES)
    assert processor.tokenizer.decode(out.input_ids[out.segment == 2]) == "[]<|im_end|>"
    assert out.gt_boxes.shape == (0, 4) and out.gt_descs == ()


def test_student_spans_point_at_the_student_turn_and_image(processor, root) -> None:
    out = chat(processor).process_sample(EPISODE, root)
    runs = image_token_runs(out.input_ids, processor.image_token_id)
    start, end = out.student_image_span
    assert (start, end) == runs[-1]  # exactly the last image's pad run: the student's
    assert end - start == int(out.image_grid_thw[-1].prod()) // 4
    turn = out.student_turn_start
    assert out.input_ids[turn] == processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    # The turn is the student's user turn: after the last teacher answer, holding only its image.
    assert turn > int(torch.nonzero(out.segment == 1)[-1]) and turn < start < end < out.prompt_end
    text = processor.tokenizer.decode(
        torch.cat((out.input_ids[turn:start], out.input_ids[end : out.prompt_end]))
    )
    assert text == (
        f"<|im_start|>user\n<|vision_start|><|vision_end|>{chat(processor).instruction}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
