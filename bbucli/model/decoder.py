"""The DETR decoder of the detection head, with Deformable-DETR iterative box refinement.

Each layer lets the queries attend to each other and to the memory (adapted vision + prompt tokens),
then the shared heads read every layer's hidden state: `box_head` predicts a correction to the
layer's reference box in logit space, `obj_head` an objectness logit. The corrected box, detached,
is the next layer's reference, as in Deformable DETR: each layer learns a correction to the previous
one instead of every layer receiving the gradients of all the later ones.

Boxes are normalised cxcywh in [0, 1] of the resized image. Parameter names: `layers.*`,
`pos_head.*`, `box_head.*`, `obj_head.*` (all in the `detection` group).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bbucli.model.attention import MultiHeadAttention

#: Logit given to padding queries and padding tokens: sigmoid is exactly 0 in fp32 and the focal
#: loss and its gradient vanish, yet it stays finite (and representable in fp16/bf16), so a
#: criterion that forgets the mask gets no NaN.
PAD_LOGIT = -1.0e4


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with x clamped away from 0 and 1, as in Deformable DETR."""
    x = x.clamp(min=0.0, max=1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def sine_box_embedding(
    boxes: torch.Tensor, feats: int, temperature: float = 10000.0
) -> torch.Tensor:
    """(..., 4) normalised cxcywh -> (..., 4 * feats) sine/cosine features (DAB-DETR's encoding)."""
    dim_t = torch.arange(feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * (dim_t // 2) / feats)
    angles = boxes.float()[..., None] * (2 * math.pi) / dim_t
    emb = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1)
    return emb.flatten(-3)


class MLP(nn.Module):
    """`layers` linear layers with ReLU between them: (..., in_dim) -> (..., out_dim)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class DecoderLayer(nn.Module):
    """Post-norm DETR decoder layer: self-attention among queries, cross-attention to the memory,
    FFN. Positions are added to queries and keys, never to values (DETR)."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(width, heads, dropout)
        self.cross_attn = MultiHeadAttention(width, heads, dropout)
        self.fc1 = nn.Linear(width, ffn)
        self.fc2 = nn.Linear(ffn, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.norm3 = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        query_pos: torch.Tensor,
        query_mask: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_mask: torch.Tensor,
    ) -> torch.Tensor:
        """x, query_pos (B, Q, W); query_mask (B, Q); memory, memory_pos (B, M, W);
        memory_mask (B, M); masks True = valid. -> (B, Q, W)."""
        q = x + query_pos
        x = self.norm1(x + self.dropout(self.self_attn(q, q, x, key_mask=query_mask)))
        attended = self.cross_attn(x + query_pos, memory + memory_pos, memory, key_mask=memory_mask)
        x = self.norm2(x + self.dropout(attended))
        x = self.norm3(x + self.dropout(self.fc2(self.dropout(F.relu(self.fc1(x))))))
        return x


class RefiningDecoder(nn.Module):
    """`layers` DecoderLayers with shared box and objectness heads and per-layer box refinement."""

    def __init__(
        self, width: int, layers: int, heads: int, ffn: int, dropout: float, prior_prob: float
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = nn.ModuleList(DecoderLayer(width, heads, ffn, dropout) for _ in range(layers))
        # One encoder of box positions for queries and memory keys alike, so that a query's
        # position and the positions of the tokens around it live in the same space.
        self.pos_head = MLP(2 * width, width, width, 2)
        self.box_head = MLP(width, width, 4, 3)
        self.obj_head = nn.Linear(width, 1)
        # Zero correction at start: layer 0 outputs exactly its reference box.
        nn.init.zeros_(self.box_head.layers[-1].weight)
        nn.init.zeros_(self.box_head.layers[-1].bias)
        # Focal-loss prior (RetinaNet): every query starts at objectness ~ prior_prob.
        nn.init.constant_(self.obj_head.bias, -math.log((1.0 - prior_prob) / prior_prob))

    def box_position(self, boxes: torch.Tensor) -> torch.Tensor:
        """(..., 4) normalised cxcywh -> (..., W) positional embedding."""
        emb = sine_box_embedding(boxes, self.width // 2)
        return self.pos_head(emb.to(self.pos_head.layers[0].weight.dtype))

    def forward(
        self,
        queries: torch.Tensor,
        reference: torch.Tensor,
        query_mask: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_mask: torch.Tensor,
        roi: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor]:
        """queries (B, Q, W) content; reference (B, Q, 4) initial boxes; query_mask (B, Q);
        memory, memory_pos (B, M, W); memory_mask (B, M); roi: optional boxes (B, Q, 4) ->
        (B, Q, W) features read over each box, added to the queries at each layer's reference.

        Returns per-layer objectness logits (B, Q) (padding queries at `PAD_LOGIT`), per-layer
        boxes (B, Q, 4) normalised cxcywh, and the last layer's hidden state (B, Q, W).
        """
        logits, boxes = [], []
        x, ref = queries, reference.detach()
        for layer in self.layers:
            if roi is not None:
                x = x + roi(ref)
            # The position follows the refined box (DAB-DETR), so later layers attend around where
            # the box now is rather than where its token was.
            x = layer(x, self.box_position(ref), query_mask, memory, memory_pos, memory_mask)
            # Refinement in fp32: inverse_sigmoid near 0 or 1 loses everything in bf16.
            box = (inverse_sigmoid(ref.float()) + self.box_head(x).float()).sigmoid()
            logit = self.obj_head(x).squeeze(-1).float().masked_fill(~query_mask, PAD_LOGIT)
            logits.append(logit)
            boxes.append(box)
            ref = box.detach()
        return tuple(logits), tuple(boxes), x
