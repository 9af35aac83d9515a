"""The detection criterion: Hungarian-matched box and objectness losses per decoder layer.

The model returns one `LayerOutput` per decoder layer; `DetectionCriterion` matches all layers in
one go with the `HungarianMatcher` it holds, then computes one small loss per term, DETR-style:
- `l1`, `giou`: on matched (query, target) pairs, boxes cxcywh normalised (GIoU on xyxy);
- `objectness`: sigmoid focal loss on every real query, 1 for matched queries, 0 for the rest
  (padding queries, outside `query_mask`, are neither matched nor scored).
Each is summed and divided by `num_boxes`, the GT count averaged over ranks (see
`num_boxes_across_ranks`). The last layer's losses have plain keys, earlier (auxiliary) layers
`<name>_<layer>`. The losses are unweighted (`bbucli.loss.weights` weighs them) and come back with
the matching, so that other losses on the matched queries (captions) reuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.func import vmap

from bbucli.geometry import cxcywh_to_xyxy, generalized_box_iou
from bbucli.loss.focal import sigmoid_focal_loss
from bbucli.loss.matcher import HungarianMatcher, MatchIndices

# GIoU of matched pairs only: (M, 1, 4) x (M, 1, 4) -> (M, 1, 1), O(M) instead of diag of (M, M).
_paired_giou = vmap(generalized_box_iou)


@dataclass(frozen=True)
class LayerOutput:
    """One decoder layer's predictions for a batch of B images with Q queries each.

    logits: (B, Q) objectness logits; boxes: (B, Q, 4) cxcywh normalised to [0, 1].
    """

    logits: torch.Tensor
    boxes: torch.Tensor


@dataclass(frozen=True)
class DetTargets:
    """Ground truth of one image. boxes: (N, 4) cxcywh normalised (N may be 0)."""

    boxes: torch.Tensor


@dataclass(frozen=True)
class DetectionLosses:
    """losses: unweighted scalar losses keyed `l1`, `giou`, `objectness` for the last layer and
    `<name>_<layer>` for auxiliary layers; indices: the matching, `indices[layer][image] =
    (pred_idx, tgt_idx)` for every layer scored, first to last (`indices[-1]`: the last layer)."""

    losses: dict[str, torch.Tensor]
    indices: list[list[MatchIndices]]


@dataclass(frozen=True)
class _Matched:
    """Matched pairs of one layer on the loss device: (M,) each. `target` indexes the
    concatenation of all images' targets."""

    batch: torch.Tensor
    query: torch.Tensor
    target: torch.Tensor


def num_boxes_across_ranks(targets: Sequence[DetTargets], device: torch.device | str) -> float:
    """Number of GT boxes per rank, averaged over ranks when torch.distributed is initialised,
    clamped to >= 1 so that batches without objects divide by 1."""
    count = torch.tensor(float(sum(len(t.boxes) for t in targets)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return max(float(count), 1.0)


@dataclass(frozen=True)
class DetectionCriterion:
    """Matches predictions to targets with `matcher` and computes the unweighted detection
    losses; the objectness focal loss uses the matcher's `focal_alpha` / `focal_gamma`.
    aux: score every decoder layer (DETR's auxiliary losses), not just the last."""

    matcher: HungarianMatcher = field(default_factory=HungarianMatcher)
    aux: bool = True

    def __call__(
        self,
        outputs: Sequence[LayerOutput],
        targets: Sequence[DetTargets],
        *,
        num_boxes: float,
        step: int | None = None,
        anchors: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
    ) -> DetectionLosses:
        """outputs: one `LayerOutput` per decoder layer, first to last; targets: one `DetTargets`
        per image; anchors: optional (B, Q, 4) cxcywh cell of every query, for the matching's
        spatial prior (`cost_center`); query_mask: optional (B, Q) bool, True for real queries
        (None: all are), the same for every layer."""
        if num_boxes <= 0:
            raise ValueError(f"num_boxes must be positive, got {num_boxes}")
        if not outputs:
            raise ValueError("DetectionCriterion needs at least one decoder layer output")
        layers = list(outputs) if self.aux else [outputs[-1]]
        device = layers[-1].boxes.device
        indices = self.matcher.match_layers(
            [(out.logits, out.boxes) for out in layers],
            [t.boxes for t in targets],
            step=step,
            anchors=anchors,
            query_mask=query_mask,
        )
        tgt_boxes = torch.cat([t.boxes for t in targets]).to(device=device, dtype=torch.float32)

        losses: dict[str, torch.Tensor] = {}
        last = len(layers) - 1
        for k, (out, layer_indices) in enumerate(zip(layers, indices, strict=True)):
            matched = _to_device(layer_indices, [len(t.boxes) for t in targets], device)
            suffix = "" if k == last else f"_{k}"
            losses[f"l1{suffix}"] = self.loss_l1(out, matched, tgt_boxes, num_boxes)
            losses[f"giou{suffix}"] = self.loss_giou(out, matched, tgt_boxes, num_boxes)
            losses[f"objectness{suffix}"] = self.loss_objectness(
                out, matched, num_boxes, query_mask
            )
        return DetectionLosses(losses, indices)

    def loss_l1(
        self, out: LayerOutput, matched: _Matched, tgt_boxes: torch.Tensor, num_boxes: float
    ) -> torch.Tensor:
        """Summed absolute error of matched cxcywh boxes / num_boxes."""
        src = out.boxes[matched.batch, matched.query].float()
        return F.l1_loss(src, tgt_boxes[matched.target], reduction="sum") / num_boxes

    def loss_giou(
        self, out: LayerOutput, matched: _Matched, tgt_boxes: torch.Tensor, num_boxes: float
    ) -> torch.Tensor:
        """Sum of (1 - GIoU) over matched pairs / num_boxes."""
        src = cxcywh_to_xyxy(out.boxes[matched.batch, matched.query].float())
        tgt = cxcywh_to_xyxy(tgt_boxes[matched.target])
        giou = _paired_giou(src.unsqueeze(1), tgt.unsqueeze(1)).flatten()
        return (1 - giou).sum() / num_boxes

    def loss_objectness(
        self,
        out: LayerOutput,
        matched: _Matched,
        num_boxes: float,
        query_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Focal loss summed over the real queries (all B * Q without `query_mask`; matched ones
        are positives) / num_boxes."""
        logits = out.logits.float()
        is_object = torch.zeros_like(logits)
        is_object[matched.batch, matched.query] = 1.0
        alpha, gamma = self.matcher.focal_alpha, self.matcher.focal_gamma
        loss = sigmoid_focal_loss(logits, is_object, alpha=alpha, gamma=gamma)
        if query_mask is not None:
            loss = loss * query_mask.to(device=loss.device, dtype=loss.dtype)
        return loss.sum() / num_boxes


def _to_device(indices: list[MatchIndices], sizes: list[int], device: torch.device) -> _Matched:
    """Per-image CPU index pairs -> batch/query/global-target indices, in one host-to-device copy."""
    offsets = [0]
    for n in sizes[:-1]:
        offsets.append(offsets[-1] + n)
    empty = torch.empty(0, dtype=torch.int64)
    rows = torch.cat(
        [
            torch.stack((torch.full_like(src, image), src, tgt + offsets[image]))
            for image, (src, tgt) in enumerate(indices)
        ]
        or [torch.stack((empty, empty, empty))],
        dim=1,
    ).to(device, non_blocking=True)
    return _Matched(batch=rows[0], query=rows[1], target=rows[2])
