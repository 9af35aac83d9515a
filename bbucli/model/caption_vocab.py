"""The compact caption vocabulary: the Qwen token ids that occur in the training descs.

The caption decoder predicts over this vocabulary instead of Qwen's ~151k tokens, so its logits
are (B, Q, L, V_caption) with V_caption in the hundreds. Compact ids 0-3 are its own specials
(`PAD`, `BOS`, `EOS`, `UNK`); compact id `N_SPECIAL + i` is the i-th smallest Qwen id of the
training descs. `UNK` stands for Qwen ids that only occur outside the training set (validation or
test descs) and decodes to nothing.

The vocabulary is built from the data, so it is saved with the checkpoint: `to_dict` / `from_dict`
round-trip through JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bbucli.errors import ModelError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
N_SPECIAL = 4
SPECIAL_NAMES = ("<pad>", "<bos>", "<eos>", "<unk>")
FORMAT = "bbu-caption-vocab"
VERSION = 1


@dataclass(frozen=True)
class CaptionVocab:
    """Maps Qwen token ids <-> compact caption ids. Build it with `CaptionVocab.build`."""

    qwen_ids: tuple[int, ...]
    _to_compact: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if list(self.qwen_ids) != sorted(set(self.qwen_ids)):
            raise ValueError("qwen_ids must be strictly increasing")
        if self.qwen_ids and self.qwen_ids[0] < 0:
            raise ValueError(f"Qwen token ids are non-negative, got {self.qwen_ids[0]}")
        table = {q: N_SPECIAL + i for i, q in enumerate(self.qwen_ids)}
        object.__setattr__(self, "_to_compact", table)

    @classmethod
    def build(cls, captions: Iterable[Sequence[int]]) -> CaptionVocab:
        """The vocabulary of every Qwen token id in `captions` (token id lists of the training descs)."""
        return cls(tuple(sorted({int(t) for caption in captions for t in caption})))

    @property
    def size(self) -> int:
        """V_caption: specials + Qwen ids; the caption decoder's output size."""
        return N_SPECIAL + len(self.qwen_ids)

    def __len__(self) -> int:
        return self.size

    def encode(self, qwen_ids: Sequence[int]) -> list[int]:
        """Qwen token ids -> compact ids (no BOS/EOS added); unseen ids become `UNK`."""
        return [self._to_compact.get(int(t), UNK) for t in qwen_ids]

    def decode(self, compact: Sequence[int] | torch.Tensor) -> list[int]:
        """Compact ids -> Qwen token ids, up to the first `EOS`; `PAD`, `BOS` and `UNK` are dropped."""
        ids = compact.tolist() if isinstance(compact, torch.Tensor) else compact
        out: list[int] = []
        for c in ids:
            c = int(c)
            if c == EOS:
                break
            if c >= N_SPECIAL:
                if c >= self.size:
                    raise ValueError(f"compact id {c} is outside a vocabulary of {self.size}")
                out.append(self.qwen_ids[c - N_SPECIAL])
        return out

    def targets(self, captions: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
        """Teacher-forcing targets for the caption decoder.

        captions: Qwen token id lists. Returns (N, max_len) long compact ids: the caption, `EOS`,
        then `PAD`. A caption longer than `max_len - 1` tokens is cut so that `EOS` still fits,
        which keeps teaching the decoder to stop. The decoder prepends `BOS` itself.
        """
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        out = torch.full((len(captions), max_len), PAD, dtype=torch.long)
        for i, caption in enumerate(captions):
            ids = self.encode(caption)[: max_len - 1] + [EOS]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, saved beside the checkpoint."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "specials": list(SPECIAL_NAMES),
            "qwen_ids": list(self.qwen_ids),
        }

    @classmethod
    def from_dict(cls, data: Any) -> CaptionVocab:
        """Inverse of `to_dict`; a file that is not one raises `ModelError`."""
        hint = "the checkpoint's caption vocabulary is damaged or from another tool; retrain"
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelError(f"not a {FORMAT} description", hint=hint)
        if data.get("version") != VERSION:
            version = data.get("version")
            raise ModelError(f"unsupported caption vocabulary version {version!r}", hint=hint)
        if data.get("specials") != list(SPECIAL_NAMES):
            raise ModelError(
                f"caption vocabulary specials {data.get('specials')!r} differ", hint=hint
            )
        ids = data.get("qwen_ids")
        if not isinstance(ids, list) or not all(type(t) is int for t in ids):
            raise ModelError("caption vocabulary qwen_ids must be a list of integers", hint=hint)
        try:
            return cls(tuple(ids))
        except ValueError as exc:
            raise ModelError(f"invalid caption vocabulary: {exc}", hint=hint) from exc
