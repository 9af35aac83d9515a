"""Adapters from the language model's hidden size to the detection head's width.

One `ResidualAdapter` maps the merger's vision tokens, another the prompt's last hidden states;
their parameters live under `vision_adapter.` / `language_adapter.` of `DetectionHead` so that the
`adapter` parameter group can have its own learning rate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualAdapter(nn.Module):
    """(..., in_dim) -> (..., width): `skip(LN(x)) + fc2(GELU(fc1(LN(x))))`.

    The skip starts from the normalised input, not the raw one: hidden states taken from an inner
    Qwen layer carry a few channels hundreds of times larger than the rest, and a raw linear skip
    would pass those straight into the attention logits of the decoder.
    """

    def __init__(self, in_dim: int, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.skip = nn.Linear(in_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The language model may run in bf16 while the head stays in fp32.
        x = self.norm(x.to(self.norm.weight.dtype))
        return self.skip(x) + self.fc2(F.gelu(self.fc1(x)))
