"""The grounding-JSON answer: exact rendering, round trip, tolerant parsing of generated text."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bbucli.chat.answer import parse_answer, render_answer
from bbucli.schema import DetObject

OBJS = (
    DetObject((12, 40, 88, 131), "连接点（螺丝）/BBU安装螺丝/连接正确"),
    DetObject((0, 7, 1439, 1919), 'bbu_brand/huawei "quoted" \\ back/slash'),
)


def test_render_is_one_compact_line_in_the_native_format() -> None:
    text = render_answer(OBJS)
    assert text == (
        '[{"bbox_2d": [12, 40, 88, 131], "label": "连接点（螺丝）/BBU安装螺丝/连接正确"}, '
        '{"bbox_2d": [0, 7, 1439, 1919], "label": "bbu_brand/huawei \\"quoted\\" \\\\ back/slash"}]'
    )
    assert json.loads(text) == [{"bbox_2d": list(o.bbox_2d), "label": o.desc} for o in OBJS]
    assert render_answer([]) == "[]"


labels = st.text(
    alphabet=st.sampled_from(list("abcXYZ019 _-/\\\"'`{}[],:连接点螺丝（）正确错误\n\t")),
    min_size=1,
    max_size=30,
)
boxes = st.tuples(*[st.integers(min_value=0, max_value=5000)] * 4)
objects = st.lists(st.builds(DetObject, boxes, labels), max_size=8).map(tuple)


@settings(max_examples=200, deadline=None)
@given(objects)
def test_parse_inverts_render(objs: tuple[DetObject, ...]) -> None:
    result = parse_answer(render_answer(objs))
    assert result.ok and result.error is None and not result.truncated
    assert result.objects == objs


@settings(max_examples=60, deadline=None)
@given(objects.filter(bool), st.data())
def test_any_cut_gives_a_flagged_prefix(objs: tuple[DetObject, ...], data: st.DataObject) -> None:
    text = render_answer(objs)
    cut = data.draw(st.integers(min_value=1, max_value=len(text) - 1))
    result = parse_answer(text[:cut])
    assert result.truncated and not result.ok
    assert result.objects == objs[: len(result.objects)]


def test_fences_and_surrounding_text_are_skipped() -> None:
    text = f"Here you go:\n```json\n{render_answer(OBJS)}\n```\nAnything else?"
    result = parse_answer(text)
    assert result.ok and result.objects == OBJS
    assert parse_answer(f"{render_answer(OBJS)} trailing words [1]").objects == OBJS


def test_truncated_answer_keeps_complete_objects() -> None:
    text = render_answer(OBJS)
    result = parse_answer(text[: text.index("}, {") + 10])
    assert result.truncated and not result.ok
    assert result.objects == OBJS[:1]
    assert "truncated" in result.error


def test_model_variants_are_accepted() -> None:
    text = '[{"bbox_2d": [1.4, 2.6, 30, 40], "desc": "a/b"},\n  {"label": "c", "bbox_2d": [5, 6, 7, 8]}]'
    result = parse_answer(text)
    assert result.ok
    assert result.objects == (DetObject((1, 3, 30, 40), "a/b"), DetObject((5, 6, 7, 8), "c"))


def test_invalid_items_are_skipped_and_reported() -> None:
    text = '[{"bbox_2d": [1, 2, 3], "label": "a"}, {"bbox_2d": [1, 2, 3, 4], "label": "b"}, "x"]'
    result = parse_answer(text)
    assert not result.ok and not result.truncated
    assert result.objects == (DetObject((1, 2, 3, 4), "b"),)
    assert result.skipped == 2
    assert "item 0" in result.error and "bbox_2d" in result.error


def test_unusable_text() -> None:
    assert parse_answer("I cannot see any objects.") == parse_answer("")
    assert parse_answer("no list").error == "no JSON list found"
    broken = parse_answer('[{"bbox_2d": [1, 2, 3, 4], "label": "a"} {"bbox_2d": []}]')
    assert not broken.ok and not broken.truncated and len(broken.objects) == 1
    assert parse_answer("[]").ok and parse_answer("[ ]").objects == ()
