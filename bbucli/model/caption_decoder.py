"""The caption decoder: a small autoregressive transformer that describes one detection.

Each query's final hidden state becomes a one-token prefix; the decoder then reads `BOS` and the
caption so far with causal self-attention (a prefix language model) and predicts the next compact
caption id (`bbucli.model.caption_vocab`). Sequences are independent, so queries are simply the
batch: (N, ...) below is any flattening of (B, Q, ...).

Training uses teacher forcing (`forward`); inference uses greedy decoding with a key/value cache
(`generate`), which costs O(L) token steps per caption instead of re-running O(L^2).

Sequence positions: 0 = prefix, 1 = `BOS`, 1 + t = caption token t (0-based) fed back as input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bbucli.model.attention import MultiHeadAttention
from bbucli.model.caption_vocab import BOS, EOS, PAD

KVCache = tuple[torch.Tensor, torch.Tensor]


class CaptionBlock(nn.Module):
    """Pre-norm causal transformer block with an optional key/value cache."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, ffn)
        self.fc2 = nn.Linear(ffn, width)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """x (N, T, W) new positions; cache: keys/values (N, H, T0, d) of the positions before.
        Without a cache the T positions attend causally among themselves; with one, T must be 1
        and the new position attends to everything cached. Returns (N, T, W) and the new cache."""
        h = self.norm1(x)
        q = self.attn.split(self.attn.q_proj(h))
        k = self.attn.split(self.attn.k_proj(h))
        v = self.attn.split(self.attn.v_proj(h))
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        x = x + self.dropout(self.attn.attend(q, k, v, causal=cache is None and x.shape[1] > 1))
        x = x + self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(self.norm2(x))))))
        return x, (k, v)


class CaptionDecoder(nn.Module):
    """Prefix-conditioned autoregressive decoder over `vocab_size` compact caption ids.

    Parameter names: `prefix_proj.*`, `embed.*`, `pos_embed`, `blocks.*`, `norm.*`, `out.*`.
    """

    def __init__(
        self,
        vocab_size: int,
        cond_width: int,
        width: int,
        layers: int,
        heads: int,
        ffn: int,
        max_len: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.prefix_proj = nn.Sequential(nn.Linear(cond_width, width), nn.LayerNorm(width))
        self.embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.randn(max_len + 1, width) * 0.02)
        self.blocks = nn.ModuleList(CaptionBlock(width, heads, ffn, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab_size)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, cond: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher forcing. cond (N, C) query hidden states; targets (N, L) compact ids (caption,
        `EOS`, `PAD`, as `CaptionVocab.targets` makes them), L <= max_len.

        Returns logits (N, L, V): position t predicts `targets[:, t]`. Positions after `EOS` see only
        earlier positions (causal), so padding needs no mask; the loss should ignore `PAD` targets.
        """
        n, length = targets.shape
        if length > self.max_len:
            raise ValueError(f"caption targets have length {length} > max_len {self.max_len}")
        bos = targets.new_full((n, 1), BOS)
        inputs = torch.cat((bos, targets[:, :-1]), dim=1)
        x = torch.cat((self.prefix_proj(cond)[:, None], self.embed(inputs)), dim=1)
        x = x + self.pos_embed[: length + 1]
        for block in self.blocks:
            x, _ = block(x)
        return self.out(self.norm(x[:, 1:]))

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        """Greedy decoding. cond (N, C) -> (N, max_len) long compact ids: each caption ends with
        its first `EOS` (then `PAD`), or runs to `max_len` without one; `PAD` and `BOS` are never
        generated. Stops as soon as every caption has ended."""
        max_len = self.max_len if max_len is None else max_len
        if not 1 <= max_len <= self.max_len:
            raise ValueError(f"max_len must be in [1, {self.max_len}], got {max_len}")
        n = cond.shape[0]
        out = torch.full((n, max_len), PAD, dtype=torch.long, device=cond.device)
        if n == 0:
            return out
        bos = self.embed(torch.full((n, 1), BOS, dtype=torch.long, device=cond.device))
        x = torch.cat((self.prefix_proj(cond)[:, None], bos), dim=1) + self.pos_embed[:2]
        caches: list[KVCache | None] = [None] * len(self.blocks)
        finished = torch.zeros(n, dtype=torch.bool, device=cond.device)
        for t in range(max_len):
            for i, block in enumerate(self.blocks):
                x, caches[i] = block(x, caches[i])
            logits = self.out(self.norm(x[:, -1]))
            # PAD and BOS are never targets, so their logits are untrained: never pick them.
            logits[:, [PAD, BOS]] = float("-inf")
            token = logits.argmax(dim=-1)
            token = token.masked_fill(finished, PAD)
            out[:, t] = token
            finished |= token == EOS
            if t + 1 == max_len or bool(finished.all()):
                break
            x = self.embed(token)[:, None] + self.pos_embed[t + 2]
        return out
