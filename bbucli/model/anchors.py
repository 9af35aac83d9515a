"""Token-anchored queries: where each merged vision token sits, and which tokens become queries.

Qwen2.5-VL's merger emits one token per 28x28-pixel cell of the resized image, row-major over the
merged grid `(grid_h, grid_w) = (h / 28, w / 28)`. Token `n` of an image therefore covers the cell
at row `n // grid_w`, column `n % grid_w`; the detection head starts one query from each such cell
(or from the K best-scoring ones) instead of from learned query embeddings, which converge far too
slowly on small data.

Boxes here are normalised cxcywh in [0, 1] of the resized image (see `bbucli.geometry`).
"""

from __future__ import annotations

import torch


def token_cell_boxes(grid_hw: torch.Tensor, n_tokens: int, cells: float = 1.0) -> torch.Tensor:
    """The box of every merged vision token, `cells` grid cells wide and high around the cell centre.

    grid_hw: (B, 2) integer merged-grid sizes `(grid_h, grid_w)` per image.
    n_tokens: the padded token count N (>= every grid_h * grid_w).
    Returns (B, N, 4) normalised cxcywh; sizes are clamped to 1. Padding positions (n >= grid_h *
    grid_w) get a harmless centred box so that everything downstream stays finite.
    """
    grid_hw = grid_hw.to(torch.long)
    n = torch.arange(n_tokens, device=grid_hw.device)[None, :]
    gh, gw = grid_hw[:, 0:1], grid_hw[:, 1:2]
    rows, cols = n // gw, n % gw
    cx = (cols + 0.5) / gw
    cy = (rows + 0.5) / gh
    w = (cells / gw).clamp(max=1.0).expand_as(cx)
    h = (cells / gh).clamp(max=1.0).expand_as(cy)
    boxes = torch.stack((cx, cy, w, h), dim=-1).float()
    inside = (n < gh * gw)[..., None]
    return torch.where(inside, boxes, boxes.new_tensor([0.5, 0.5, 0.5, 0.5]))


def select_query_tokens(
    scores: torch.Tensor, valid: torch.Tensor, max_queries: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the tokens that become queries: all of them when an image has at most `max_queries`,
    otherwise its `max_queries` best by `scores`.

    scores: (B, N) token objectness logits; valid: (B, N) bool, True for real tokens.
    Returns `index` (B, Q) long token indices and `query_mask` (B, Q) bool, Q = min(N, max_queries).
    Within an image the valid queries come first, in row-major token order, so
    `query_mask[b].sum()` valid queries are exactly `index[b, :n_valid]`; the rest are padding.
    The order does not depend on the other images of the batch (padding invariance).
    """
    b, n = scores.shape
    if n <= max_queries:
        candidates = torch.arange(n, device=scores.device).expand(b, n)
    else:
        masked = scores.detach().masked_fill(~valid, float("-inf"))
        candidates = masked.topk(max_queries, dim=1).indices
    # Valid tokens first, each group in token order: a stable order that is the same whether the
    # image is alone in its batch or padded next to a bigger one.
    key = candidates + (~valid.gather(1, candidates)).long() * n
    index = candidates.gather(1, key.argsort(dim=1))
    return index, valid.gather(1, index)
