"""Token counts of rendered grounding answers without tokenising every answer.

Owns `AnswerLengths`, the shortcut `ChatProcessor` uses to count answer tokens for the token
budget and `measure` (its hot path); the counts are checked against the tokenizer per desc and
`ChatProcessor.process_sample` checks the total against the rendered conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bbucli.chat.answer import render_answer
from bbucli.errors import DataError
from bbucli.schema import DetObject


class AnswerLengths:
    """Token counts of `render_answer(objects)` without tokenising every answer (`measure`'s hot path).

    `render_answer` writes "[" + o_1 + ", " + o_2 + ... + "]". Under Qwen2's pre-tokenizer the gap
    between "," and " " is always a pre-token boundary (a punctuation run stops at whitespace) and
    BPE never merges across pre-tokens, so an answer's length is the sum of its pieces "[o_1,",
    " o_2,", ..., " o_n]"; every digit is a pre-token and one token of its own, so a piece counts
    as the same piece with a box of single digits plus the extra digits. Piece lengths are cached
    per (prefix, desc, suffix). Each desc is checked once against the tokenizer on whole answers;
    where the sum disagrees (another tokenizer, an odd desc) whole answers are tokenised instead,
    cached by text.
    """

    _EXACT_CACHE = 65536

    def __init__(self, tokenizer: Any, image_token: str = "<|image_pad|>") -> None:
        self.tokenizer = tokenizer
        self.image_token = image_token
        self._pieces: dict[tuple[str, str, str], int] = {}
        self._additive: dict[str, bool] = {}
        self._exact: dict[str, int] = {}

    def __call__(self, objects: Sequence[DetObject]) -> int:
        total = self._sum(objects) if objects else None
        if total is not None:
            return total
        text = render_answer(objects)
        n = self._exact.get(text)
        if n is None:
            if len(self._exact) >= self._EXACT_CACHE:
                self._exact.clear()
            n = self._exact[text] = self._count(text)
        return n

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _piece(self, key: tuple[str, str, str]) -> int:
        prefix, desc, suffix = key
        item = render_answer([DetObject((0, 0, 0, 0), desc)])[1:-1]
        n = self._pieces[key] = self._count(prefix + item + suffix)
        return n

    def _sum(self, objects: Sequence[DetObject], checked: bool = True) -> int | None:
        """The summed length, or None where it does not apply (a desc that failed its check, a
        negative coordinate); checked=False skips the desc check (the check itself uses it)."""
        last = len(objects) - 1
        total = 0
        for i, o in enumerate(objects):
            if checked and not self._is_additive(o.desc):
                return None
            b = o.bbox_2d
            digits = f"{int(b[0])}{int(b[1])}{int(b[2])}{int(b[3])}"
            if "-" in digits:
                return None
            key = ("[" if i == 0 else " ", o.desc, "]" if i == last else ",")
            total += (self._pieces.get(key) or self._piece(key)) + len(digits) - 4
        return total

    def _is_additive(self, desc: str) -> bool:
        ok = self._additive.get(desc)
        if ok is None:
            if self.image_token in desc:
                raise DataError(f"an answer contains '{self.image_token}'")
            boxes = ((7, 38, 905, 1234), (0, 0, 1, 1), (10, 200, 3000, 45), (99, 1, 2, 3))
            probes = [(DetObject(boxes[0], desc),), tuple(DetObject(b, desc) for b in boxes[1:])]
            ok = all(self._count(render_answer(p)) == self._sum(p, checked=False) for p in probes)
            self._additive[desc] = ok
        return ok
