"""`ChatProcessor.measure`'s shortcuts (header cache, answer lengths summed per object) give the
real tokenizer's counts: what `bbu inspect` reports must be what training tokenises."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bbucli.chat.answer import render_answer
from bbucli.chat.processor import ChatProcessor
from bbucli.errors import DataError
from bbucli.inspection.source import vl_processor
from bbucli.schema import DetObject, Episode, Sample

DESCS = [
    "连接点（螺丝）/BBU安装螺丝/连接正确",
    "screw/bbu_install_screw/correct",
    "标签/不匹配",
    "label 2",  # ends in a digit
    "odd/desc)",  # ends in punctuation, which joins the closing quote
    'quote"and\\backslash',
    "tab\tand\nnewline",
    " leading and trailing ",
    "é composed vs e\u0301 decomposed",
    "<|im_end|> inside",
]


@pytest.fixture(scope="module")
def chat():
    return ChatProcessor(vl_processor("tiny"), system_prompt="Find objects.", instruction="Detect.")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img")
    Image.new("RGB", (56, 84), "gray").save(folder / "a.png")
    return folder


boxes = st.tuples(*[st.integers(0, 20000)] * 4)
objects = st.lists(st.builds(DetObject, boxes, st.sampled_from(DESCS)), max_size=12)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(objs=objects)
def test_answer_tokens_equal_the_tokenizer(chat, root, objs):
    budget = chat.measure(Episode(student=Sample(("a.png",), tuple(objs))), root)
    answer = chat.tokenizer(render_answer(objs), add_special_tokens=False)["input_ids"]
    assert budget.answer_tokens == len(answer) + 1  # + its <|im_end|>


def test_measure_equals_process_sample_with_teachers_and_budget(chat, root):
    objs = tuple(
        DetObject((i, 2 * i, 10 * i + 5, 300 + i), DESCS[i % len(DESCS)]) for i in range(9)
    )
    episode = Episode(
        student=Sample(("a.png",), objs[:4]),
        teachers=(Sample(("a.png",), objs), Sample(("a.png",), objs[2:])),
    )
    full = chat.process_sample(episode, root).length
    assert chat.measure(episode, root).tokens == full
    for budget in (full, full - 1, 200):
        bounded = ChatProcessor(
            chat.processor, system_prompt="Find objects.", instruction="Detect.", max_tokens=budget
        )
        counted, out = bounded.measure(episode, root), bounded.process_sample(episode, root)
        assert counted.tokens == out.length and counted.teachers_dropped == out.teachers_dropped


def test_image_pad_in_a_desc_is_still_refused(chat, root):
    episode = Episode(student=Sample(("a.png",), (DetObject((1, 1, 5, 5), "a<|image_pad|>b"),)))
    with pytest.raises(DataError, match="image_pad"):
        chat.measure(episode, root)


def test_header_cache_follows_a_rewritten_file(chat, tmp_path):
    path = tmp_path / "b.png"
    Image.new("RGB", (56, 56), "gray").save(path)
    assert chat.image_info(path).vision_tokens == 4
    Image.new("RGB", (112, 56), "gray").save(path)
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    assert chat.image_info(path).vision_tokens == 8
    path.unlink()
    with pytest.raises(DataError, match="image not found"):
        chat.image_info(path)
