"""The detection criterion: Hungarian-matched box, objectness and caption losses per decoder layer.

The model returns one `LayerOutput` per decoder layer; `DetectionCriterion` matches all layers in
one go (`match_layers`), then computes one small loss per term, DETR-style:
- `l1`, `giou`: on matched (query, target) pairs, boxes cxcywh normalised (GIoU on xyxy);
- `objectness`: sigmoid focal loss on every query, 1 for matched queries, 0 for the rest;
- `caption`: cross entropy of the caption decoder on matched queries only (teacher forcing).
Each is summed and divided by `num_boxes`, the GT count averaged over ranks (see
`num_boxes_across_ranks`). The last layer's losses have plain keys, earlier (auxiliary) layers
`<name>_<layer>`; `total` is their weighted sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from bbucli.geometry import cxcywh_to_xyxy, generalized_box_iou
from bbucli.loss.focal import sigmoid_focal_loss
from bbucli.loss.matcher import MatchIndices, match_layers

IGNORE_INDEX = -100

# GIoU of matched pairs only: (M, 1, 4) x (M, 1, 4) -> (M, 1, 1), O(M) instead of diag of (M, M).
_paired_giou = vmap(generalized_box_iou)


@dataclass(frozen=True)
class LayerOutput:
    """One decoder layer's predictions for a batch of B images with Q queries each.

    logits: (B, Q) objectness logits; boxes: (B, Q, 4) cxcywh normalised to [0, 1];
    caption_logits: (B, Q, L, V_caption) or None, position t predicting caption token t.
    """

    logits: torch.Tensor
    boxes: torch.Tensor
    caption_logits: torch.Tensor | None = None


@dataclass(frozen=True)
class DetTargets:
    """Ground truth of one image. boxes: (N, 4) cxcywh normalised (N may be 0);
    caption_ids: (N, L) caption-vocabulary ids padded with -100, or None (no caption loss)."""

    boxes: torch.Tensor
    caption_ids: torch.Tensor | None = None


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


class DetectionCriterion(nn.Module):
    """Matches predictions to targets and computes the weighted detection losses (no parameters)."""

    def __init__(
        self,
        *,
        l1: float = 5.0,
        giou: float = 2.0,
        objectness: float = 2.0,
        caption: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cost_obj: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        cost_center: float = 0.0,
        aux: bool = True,
    ) -> None:
        super().__init__()
        self.weights = {"l1": l1, "giou": giou, "objectness": objectness, "caption": caption}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.costs = {
            "cost_obj": cost_obj, "cost_bbox": cost_bbox, "cost_giou": cost_giou,
            "cost_center": cost_center,
        }  # fmt: skip
        self.aux = aux

    def forward(
        self,
        outputs: Sequence[LayerOutput],
        targets: Sequence[DetTargets],
        *,
        num_boxes: float,
        step: int | None = None,
        anchors: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """outputs: one `LayerOutput` per decoder layer, first to last; targets: one `DetTargets`
        per image; anchors: optional (B, Q, 4) cxcywh cell of every query, for the matching's
        spatial prior (`cost_center`). Returns scalar losses keyed `l1`, `giou`, `objectness`, [`caption`] for the
        last layer, the same with `_<layer>` for auxiliary layers, and the weighted `total`."""
        if num_boxes <= 0:
            raise ValueError(f"num_boxes must be positive, got {num_boxes}")
        if not outputs:
            raise ValueError("DetectionCriterion needs at least one decoder layer output")
        layers = list(outputs) if self.aux else [outputs[-1]]
        device = layers[-1].boxes.device
        indices = match_layers(
            [(out.logits, out.boxes) for out in layers],
            [t.boxes for t in targets],
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            step=step,
            anchors=anchors,
            **self.costs,
        )
        tgt_boxes = torch.cat([t.boxes for t in targets]).to(device=device, dtype=torch.float32)
        tgt_captions = _concat_captions(targets, device)

        losses: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=device)
        last = len(layers) - 1
        for k, (out, layer_indices) in enumerate(zip(layers, indices, strict=True)):
            matched = _to_device(layer_indices, [len(t.boxes) for t in targets], device)
            terms = {
                "l1": self.loss_l1(out, matched, tgt_boxes, num_boxes),
                "giou": self.loss_giou(out, matched, tgt_boxes, num_boxes),
                "objectness": self.loss_objectness(out, matched, num_boxes),
            }
            if out.caption_logits is not None:
                terms["caption"] = self.loss_caption(out, matched, tgt_captions, num_boxes)
            suffix = "" if k == last else f"_{k}"
            for name, value in terms.items():
                losses[f"{name}{suffix}"] = value
                total = total + self.weights[name] * value
        losses["total"] = total
        return losses

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
        self, out: LayerOutput, matched: _Matched, num_boxes: float
    ) -> torch.Tensor:
        """Focal loss summed over all B * Q queries (matched ones are positives) / num_boxes."""
        logits = out.logits.float()
        is_object = torch.zeros_like(logits)
        is_object[matched.batch, matched.query] = 1.0
        loss = sigmoid_focal_loss(logits, is_object, alpha=self.focal_alpha, gamma=self.focal_gamma)
        return loss.sum() / num_boxes

    def loss_caption(
        self,
        out: LayerOutput,
        matched: _Matched,
        tgt_captions: torch.Tensor | None,
        num_boxes: float,
    ) -> torch.Tensor:
        """Token-mean cross entropy per matched caption, summed over boxes / num_boxes.

        Boxes without a caption (all -100) add nothing; unmatched queries are not supervised.
        """
        logits = out.caption_logits[matched.batch, matched.query]  # (M, L, V)
        if tgt_captions is None:
            return logits.sum() * 0.0  # keeps the graph and the key without supervising anything
        ids = tgt_captions[matched.target]  # (M, L)
        if ids.shape[1] != logits.shape[1]:
            raise ValueError(
                f"caption logits have {logits.shape[1]} positions but targets have {ids.shape[1]}"
            )
        ce = F.cross_entropy(
            logits.flatten(0, 1).float(), ids.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        ).view_as(ids)
        tokens = (ids != IGNORE_INDEX).sum(1).clamp(min=1)
        return (ce.sum(1) / tokens).sum() / num_boxes


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


def _concat_captions(targets: Sequence[DetTargets], device: torch.device) -> torch.Tensor | None:
    """All images' caption ids as one (sum N, L_max) tensor padded with -100; None if no image
    has captions. Images without `caption_ids` contribute rows of -100."""
    lengths = [t.caption_ids.shape[1] for t in targets if t.caption_ids is not None]
    if not lengths:
        return None
    rows = sum(len(t.boxes) for t in targets)
    out = torch.full((rows, max(lengths)), IGNORE_INDEX, dtype=torch.long, device=device)
    row = 0
    for t in targets:
        if t.caption_ids is not None:
            if len(t.caption_ids) != len(t.boxes):
                raise ValueError(f"{len(t.caption_ids)} captions for {len(t.boxes)} boxes")
            out[row : row + len(t.boxes), : t.caption_ids.shape[1]] = t.caption_ids
        row += len(t.boxes)
    return out
