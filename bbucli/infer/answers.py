"""A generated answer -> `Detections`: its objects' boxes back in the image's frame, and their scores,
the mean token log-probability of each object's text.

An object's *span* is its JSON item in the answer, from its opening `{` to its closing `}`
inclusive (`{"bbox_2d": [12, 40, 88, 131], "label": "screw/install/ok"}`): its box and its label,
without the list brackets and the `, ` separators between items. A token *belongs* to a span when
the characters it decodes to overlap it; a token that ends inside a multi-byte character (a
Chinese character split over two byte-level tokens) counts as covering that character. The score
of an object is the mean log-probability (natural log, of the token the greedy decoder chose) over
the tokens belonging to its span, so it is <= 0 and 0 means certain.

Spans are found in the text by string-aware brace matching and tied to the parsed objects in order
by parsing each item on its own with `parse_answer`, so the rules of what counts as an object stay
those of `bbucli.chat.answer`. Pure functions, no torch.

Boxes: the answer's integers are pixels of the image the model saw (`model_wh`); they are clipped
to it and scaled per axis to the frame asked for (`image_wh`, the original upright image).
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from bbucli.chat.answer import parse_answer
from bbucli.evaluation.types import Detections
from bbucli.geometry import clip_box_xyxy
from bbucli.schema import DetObject

#: desc of a box whose label or caption is empty (and of every head box without a caption decoder).
UNCAPTIONED = "object"


@dataclass(frozen=True)
class GeneratedAnswer:
    """One row's answer. token_ids: generated tokens up to, not including, `<|im_end|>`;
    logprobs: natural-log probability of each; stopped: True when `<|im_end|>` ended it, False
    when `max_new_tokens` cut it."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    stopped: bool


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2 / Qwen2 byte-level BPE alphabet: printable character -> the byte it stands for."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def _token_bytes(token: str) -> bytes:
    table = _byte_decoder()
    if all(ch in table for ch in token):
        return bytes(table[ch] for ch in token)
    return token.encode("utf-8")  # an added token outside the byte alphabet: its own text


def token_char_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decode `ids` and say which characters each token covers.

    Returns the text (as `tokenizer.decode(ids)` gives it, special tokens kept) and, per token,
    `(start, end)` character offsets into it, end > start (see the module doc for split characters).
    Byte-level tokenizers (Qwen2) are decoded incrementally in one pass; any other tokenizer falls
    back to decoding every prefix.
    """
    ids = [int(i) for i in ids]
    reference = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    for token in tokenizer.convert_ids_to_tokens(ids):
        piece = decoder.decode(_token_bytes(token))
        pieces.append(piece)
        spans.append((length, max(length + len(piece), length + 1)))
        length += len(piece)
    pieces.append(decoder.decode(b"", final=True))
    text = "".join(pieces)
    if text != reference:
        text, spans = reference, []
        previous = 0
        for k in range(1, len(ids) + 1):
            size = len(
                tokenizer.decode(
                    ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False
                )
            )
            spans.append((previous, max(size, previous + 1)))
            previous = size
    return text, [(min(s, len(text)), min(e, max(len(text), 1))) for s, e in spans]


def item_spans(text: str) -> list[tuple[int, int]]:
    """`(start, end)` of every top-level JSON object `{...}` in `text`, in order; quotes and escapes
    respected. An object cut off by the end of the text runs to the end."""
    spans: list[tuple[int, int]] = []
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = depth > 0
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
    if depth > 0:
        spans.append((start, len(text)))
    return spans


def object_spans(text: str, objects: Sequence[DetObject]) -> list[tuple[int, int] | None]:
    """The span of each parsed object (`parse_answer(text).objects`, in order); None where no item
    of the text parses to it (then the caller falls back to the whole answer)."""
    found: list[tuple[int, int] | None] = []
    spans = iter(item_spans(text))
    for obj in objects:
        match = None
        for start, end in spans:
            parsed = parse_answer("[" + text[start:end] + "]").objects
            if len(parsed) == 1 and parsed[0] == obj:
                match = (start, end)
                break
        found.append(match)
    return found


def mean_logprob(
    token_spans: Sequence[tuple[int, int]], logprobs: Sequence[float], span: tuple[int, int] | None
) -> float:
    """Mean of the finite `logprobs` over the tokens whose characters overlap `span`; over all
    tokens when `span` is None or no token overlaps it; 0.0 for an empty answer."""
    everything = [lp for lp in logprobs if math.isfinite(lp)]
    chosen = everything
    if span is not None:
        pairs = zip(token_spans, logprobs, strict=True)
        chosen = [
            lp for (s, e), lp in pairs if s < span[1] and e > span[0] and math.isfinite(lp)
        ] or everything
    return sum(chosen) / len(chosen) if chosen else 0.0


def answer_object_scores(
    text: str,
    token_spans: Sequence[tuple[int, int]],
    logprobs: Sequence[float],
    objects: Sequence[DetObject],
) -> list[float]:
    """The score of each parsed object of a generated answer (module doc)."""
    return [mean_logprob(token_spans, logprobs, span) for span in object_spans(text, objects)]


def detections_from_answer(
    tokenizer: Any,
    answer: GeneratedAnswer,
    key: str,
    image_wh: tuple[int, int],
    model_wh: tuple[int, int],
    *,
    score_threshold: float | None = None,
    top_k: int | None = None,
) -> tuple[Detections, str, str | None]:
    """A generated answer -> (Detections in the `image_wh` frame, the answer text, why it is
    unparseable or None). Boxes: integers of `model_wh` clipped to it, scaled per axis to
    `image_wh`; boxes empty after clipping are dropped. Scores: `answer_object_scores`."""
    text, spans = token_char_spans(tokenizer, answer.token_ids)
    parsed = parse_answer(text)
    scores = answer_object_scores(text, spans, answer.logprobs, parsed.objects)
    sx, sy = image_wh[0] / model_wh[0], image_wh[1] / model_wh[1]
    boxes, descs, kept = [], [], []
    for obj, score in zip(parsed.objects, scores, strict=True):
        clipped = clip_box_xyxy(obj.bbox_2d, model_wh)
        if clipped is None:
            continue
        boxes.append((clipped[0] * sx, clipped[1] * sy, clipped[2] * sx, clipped[3] * sy))
        descs.append(obj.desc.strip() or UNCAPTIONED)
        kept.append(score)
    score_array = np.asarray(kept, dtype=np.float64)
    order = np.argsort(-score_array, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    if score_threshold is not None:
        order = order[score_array[order] >= score_threshold]
    error = None if parsed.ok else parsed.error
    if error is None and not answer.stopped:
        error = "the answer did not end with <|im_end|> within max_new_tokens"
    dets = Detections(
        key,
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[order],
        tuple(descs[i] for i in order),
        score_array[order],
        image_wh=image_wh,
        source="lm",
        unparseable=not parsed.ok,
    )
    return dets, text, error
