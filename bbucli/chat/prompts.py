"""The words of the conversation: system prompt and per-image instruction, Chinese or English.

The system prompt is sent once per episode, so it carries everything long: the task, the class list
(canonical descs, given by the caller as a plain list: the taxonomy is one source of truth and this
module does not read it) and the answer format. The list training names is `trained_classes`: the
descs its data holds, as `bbu convert` wrote them (cut to `--levels`, unknown labels kept as-is),
not the taxonomy's full list, which would name classes the answers never use. The checkpoint keeps
that list, so inference builds the same prompt from it. The instruction is repeated with every image
(teachers and student), so it stays one short sentence.

Without the class list (`list_classes=False`, config `data.prompt_classes: false`) the system prompt
is the task and the answer format only, about 60 tokens instead of ~430 for the 22 built-in classes:
the model then learns the classes from the answers alone. Worth it where the prompt is most of a
short sequence and compute is scarce (the CPU demo); a pre-trained model profits from the list.

The format described here is the one `bbucli.chat.answer.render_answer` writes: Qwen2.5-VL's native
grounding JSON with integer pixel coordinates of the image as the model sees it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from bbucli.schema import Sample

Lang = Literal["zh", "en"]
LANGS: tuple[str, ...] = ("zh", "en")

_SYSTEM = {
    "zh": (
        "你是通信机房BBU机柜的质检助手。请在图片中找出下列类别的所有目标，"
        "每个目标给出边界框和类别描述（类型/属性/状态）。\n"
        "{classes}"
        "只输出JSON列表，不要输出其他内容，格式为："
        '[{{"bbox_2d": [x1, y1, x2, y2], "label": "类别描述"}}, ...]，'
        "坐标为图片像素的整数（左上角x1, y1，右下角x2, y2），目标按从上到下、从左到右排列；"
        "图片中没有目标时输出[]。"
    ),
    "en": (
        "You are an inspection assistant for telecom BBU cabinets. Find every object of the classes "
        "below in the image and give each one's bounding box and class description "
        "(type/property/state).\n"
        "{classes}"
        "Answer with a JSON list only, nothing else, in the form "
        '[{{"bbox_2d": [x1, y1, x2, y2], "label": "class description"}}, ...], '
        "with integer pixel coordinates of the image (top-left x1, y1, bottom-right x2, y2), objects "
        "ordered top to bottom, then left to right; answer [] when the image shows none."
    ),
}

_CLASSES = {"zh": "类别：\n{classes}\n", "en": "Classes:\n{classes}\n"}
_ALL = {"zh": "下列类别的所有目标", "en": "every object of the classes below"}
_NO_LIST = {"zh": "所有目标", "en": "every object"}

_INSTRUCTION = {
    "zh": "请检测图中所有目标，按要求输出JSON。",
    "en": "Detect all objects in this image and answer in the required JSON.",
}


@dataclass(frozen=True)
class Prompts:
    """The two texts a `ChatProcessor` needs: `system` once per episode, `instruction` per image."""

    system: str
    instruction: str


def _check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")


def trained_classes(samples: Iterable[Sample]) -> tuple[str, ...]:
    """The class list of a training set: every distinct desc of `samples` (the train students and
    teachers, and the teacher pool), sorted, so the same data gives the same list in any order."""
    return tuple(sorted({o.desc for sample in samples for o in sample.objects}))


def system_prompt(
    class_descs: Sequence[str], lang: Lang = "zh", *, list_classes: bool = True
) -> str:
    """The system prompt listing `class_descs` (canonical descs, one per line, in the order given);
    with list_classes=False, the task and answer format without the list (module doc)."""
    _check_lang(lang)
    if not list_classes:
        return _SYSTEM[lang].replace(_ALL[lang], _NO_LIST[lang]).format(classes="")
    if not class_descs:
        raise ValueError("class_descs must list at least one class")
    classes = "\n".join(f"- {desc}" for desc in class_descs)
    return _SYSTEM[lang].format(classes=_CLASSES[lang].format(classes=classes))


def user_instruction(lang: Lang = "zh") -> str:
    """The sentence that follows every image in its user turn."""
    _check_lang(lang)
    return _INSTRUCTION[lang]


def build_prompts(
    class_descs: Sequence[str], lang: Lang = "zh", *, list_classes: bool = True
) -> Prompts:
    """System prompt and instruction for one language."""
    return Prompts(
        system=system_prompt(class_descs, lang, list_classes=list_classes),
        instruction=user_instruction(lang),
    )
