"""The assistant's answer: Qwen2.5-VL's native grounding JSON, rendered and parsed back.

One answer lists the objects of one image:

    [{"bbox_2d": [12, 40, 88, 131], "label": "connection_point/install_screw/correct"}, {"bbox_2d": ...}]

The rendering is exact and stable, because the model is trained on it token for token:
- one line; `json.dumps` with its default separators (`", "` and `": "`), so the text reads like
  the answers Qwen2.5-VL was pre-trained on while staying compact;
- keys in the order `bbox_2d`, `label`; coordinates are integer xyxy pixels of the stored
  (resized) image the model sees; labels are canonical descs, non-ASCII (Chinese) kept as is
  (`ensure_ascii=False`) so they tokenize like natural text, quotes and backslashes JSON-escaped;
- objects in the order given (the JSONL stores them sorted by (y1, x1)); an image without objects
  answers `[]`.

The parser reads what a model generates, which is not always that: it skips a ```json fence and any
text before the list or after it, accepts float coordinates (rounded) and `desc` for `label`, and
keeps the parsed prefix of a truncated list (generation cut by `max_new_tokens`) with a flag.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bbucli.schema import DetObject

_DECODER = json.JSONDecoder()


def render_answer(objects: Iterable[DetObject]) -> str:
    """The grounding JSON of `objects` (boxes: integer xyxy, stored-image pixels), one line."""
    return json.dumps(
        [{"bbox_2d": [int(v) for v in o.bbox_2d], "label": o.desc} for o in objects],
        ensure_ascii=False,
    )


@dataclass(frozen=True)
class ParseResult:
    """What `parse_answer` recovered from a generated answer.

    objects: the valid objects in answer order (boxes as integer xyxy, the frame the model answered in).
    ok: True when the text held one complete JSON list and every item in it was a valid object.
    error: why `ok` is False (the first problem found), None when ok.
    truncated: the list was cut off; `objects` is the prefix parsed before the cut.
    skipped: items of the list that were not valid objects (wrong keys, a box of 3 numbers, ...).
    """

    objects: tuple[DetObject, ...]
    ok: bool
    error: str | None = None
    truncated: bool = False
    skipped: int = 0


def _candidates(text: str) -> list[str]:
    """Where the list may start: after a ``` fence line (a closing fence is trailing text), then the
    whole text (no fence, or ``` inside a label)."""
    start = text.find("```")
    if start < 0:
        return [text]
    body_start = text.find("\n", start)
    # "```json[...]" on one line: the list starts right after the language tag.
    return [text[body_start + 1 :] if body_start >= 0 else text[start + 3 :], text]


def _object_from_item(item: object) -> DetObject | str:
    """A DetObject, or the reason the JSON item is not one."""
    if not isinstance(item, dict):
        return f"expected an object, got {type(item).__name__}"
    box = item.get("bbox_2d")
    if not isinstance(box, list) or len(box) != 4:
        return f"bbox_2d must be a list of 4 numbers, got {box!r}"
    coords: list[int] = []
    for value in box:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            return f"bbox_2d must be a list of 4 numbers, got {box!r}"
        coords.append(int(round(value)))
    label = item.get("label", item.get("desc"))
    if not isinstance(label, str):
        return f"label must be a string, got {label!r}"
    return DetObject(bbox_2d=tuple(coords), desc=label)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def parse_answer(text: str) -> ParseResult:
    """Parse a grounding answer; never raises. `parse_answer(render_answer(objs)).objects == objs`."""
    results = [_parse_list(body) for body in _candidates(text)]
    # A complete list wins; else the reading that recovered most (a truncated prefix over none).
    return max(results, key=lambda r: (r.ok, len(r.objects), r.truncated))


def _parse_list(body: str) -> ParseResult:
    pos = body.find("[")
    if pos < 0:
        return ParseResult((), ok=False, error="no JSON list found")
    # Item by item rather than one json.loads: a truncated list still yields its complete items.
    objects: list[DetObject] = []
    first_error: str | None = None
    skipped = 0
    pos = _skip_ws(body, pos + 1)
    if pos < len(body) and body[pos] == "]":
        return ParseResult((), ok=True)
    while True:
        if pos >= len(body):
            return _truncated(objects, skipped, first_error)
        try:
            item, pos = _DECODER.raw_decode(body, pos)
        except json.JSONDecodeError as exc:
            if _is_cut_off(body, pos):
                return _truncated(objects, skipped, first_error)
            return ParseResult(
                tuple(objects),
                ok=False,
                error=f"invalid JSON at item {len(objects) + skipped}: {exc.msg}",
                skipped=skipped,
            )
        parsed = _object_from_item(item)
        if isinstance(parsed, str):
            skipped += 1
            first_error = first_error or f"item {len(objects) + skipped - 1}: {parsed}"
        else:
            objects.append(parsed)
        pos = _skip_ws(body, pos)
        if pos >= len(body):
            return _truncated(objects, skipped, first_error)
        if body[pos] == "]":
            return ParseResult(
                tuple(objects), ok=first_error is None, error=first_error, skipped=skipped
            )
        if body[pos] != ",":
            return ParseResult(
                tuple(objects),
                ok=False,
                error=f"expected ',' or ']' after item, got {body[pos]!r}",
                skipped=skipped,
            )
        pos = _skip_ws(body, pos + 1)


def _is_cut_off(body: str, pos: int) -> bool:
    """True when the JSON value starting at `pos` fails only because the text ends inside it."""
    try:
        _DECODER.raw_decode(body, pos)
    except json.JSONDecodeError as exc:
        # An unterminated string is reported at its opening quote, any other cut at the end.
        return exc.msg.startswith("Unterminated string") or exc.pos >= len(body.rstrip())
    return False


def _truncated(objects: Sequence[DetObject], skipped: int, first_error: str | None) -> ParseResult:
    return ParseResult(
        tuple(objects),
        ok=False,
        error=first_error or f"answer truncated after {len(objects)} object(s)",
        truncated=True,
        skipped=skipped,
    )
