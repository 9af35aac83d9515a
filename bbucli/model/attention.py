"""Multi-head attention for the detection head and its caption decoder.

A thin wrapper over `torch.nn.functional.scaled_dot_product_attention` rather than
`nn.MultiheadAttention`: boolean "may attend" masks mean the same thing everywhere in the head,
and the caption decoder needs the projections and the attention step separately to keep a key/value
cache during greedy decoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over `heads` heads of `width // heads` channels each."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (B, Lq, W), key/value (B, Lk, W), key_mask (B, Lk) bool, True = may be
        attended to -> (B, Lq, W). Every query row needs at least one valid key."""
        q = self.split(self.q_proj(query))
        k = self.split(self.k_proj(key))
        v = self.split(self.v_proj(value))
        return self.attend(q, k, v, key_mask=key_mask)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, W) -> (B, heads, L, W // heads)."""
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Heads-split q (B, H, Lq, d), k/v (B, H, Lk, d) -> output projection (B, Lq, W).

        `causal` needs Lq == Lk (SDPA aligns its causal mask top-left)."""
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
        )
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))
