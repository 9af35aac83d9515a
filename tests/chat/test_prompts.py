"""System prompt and instruction: both languages, class list, answer format."""

from __future__ import annotations

import json

import pytest

from bbucli.chat.prompts import build_prompts, system_prompt, user_instruction

CLASSES = ["连接点（螺丝）/BBU安装螺丝/连接正确", "BBU品牌/华为", "挡风板/未安装"]


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_system_prompt_lists_classes_in_order_and_the_format(lang: str) -> None:
    text = system_prompt(CLASSES, lang)
    positions = [text.index(f"- {c}\n") for c in CLASSES]
    assert positions == sorted(positions)
    example = text[text.index("[{") : text.index("...]") + 4].replace(", ...", "")
    assert json.loads(example.replace("x1, y1, x2, y2", "1, 2, 3, 4"))[0].keys() == {
        "bbox_2d",
        "label",
    }


def test_languages_differ_and_instruction_is_short() -> None:
    zh, en = build_prompts(CLASSES, "zh"), build_prompts(CLASSES, "en")
    assert "类别" in zh.system and "Classes" in en.system
    assert zh.instruction == user_instruction("zh") and len(zh.instruction) < 40
    assert en.instruction.startswith("Detect")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="lang"):
        system_prompt(CLASSES, "fr")
    with pytest.raises(ValueError, match="at least one"):
        system_prompt([], "en")


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_prompt_without_the_class_list_keeps_the_task_and_format(lang):
    listed = system_prompt(["a/b/c", "d/e/f"], lang)
    short = system_prompt([], lang, list_classes=False)
    assert "a/b/c" in listed and "a/b/c" not in short and len(short) < len(listed)
    assert '"bbox_2d": [x1, y1, x2, y2]' in short and ("类别：" not in short and "Classes:" not in short)
    assert build_prompts(["x/y"], lang, list_classes=False).system == short
