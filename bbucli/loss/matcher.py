"""Hungarian matching of detection queries to ground-truth boxes, for one or all decoder layers.

`HungarianMatcher` is the matching costs (`MatchCosts`, where their defaults live) plus the
matching. Cost per (query, target) pair: `cost_obj * focal objectness cost + cost_bbox * L1
+ cost_giou * (-GIoU) [+ cost_center * spatial prior]`, boxes cxcywh normalised to [0, 1] for L1
and xyxy (same frame) for GIoU. Every per-image cost matrix of a step is built on the predictions'
device in one batched pass (targets padded to the largest image, never one cross-batch matrix),
copied to the host once, and solved image by image with scipy's `linear_sum_assignment`. Only
valid queries take part (`query_mask`): an image padded next to a bigger one never has a padding
query matched, even when it has more objects than valid queries. Nothing here needs gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch.func import vmap
from torch.nn.utils.rnn import pad_sequence

from bbucli.errors import BbuError
from bbucli.geometry import cxcywh_to_xyxy, generalized_box_iou
from bbucli.loss.costs import MatchCosts
from bbucli.loss.focal import focal_objectness_cost

MatchIndices = tuple[torch.Tensor, torch.Tensor]
"""(pred_idx, tgt_idx): two (M,) int64 CPU tensors, M = min(valid queries, N_i), pred_idx
ascending."""

# Any valid box does: padded target columns are sliced off before the assignment.
_PAD_BOX_CXCYWH = 0.5

_batched_giou = vmap(generalized_box_iou)


class MatchingError(BbuError):
    """A matching cost is NaN or infinite: the predictions (or the targets) diverged."""


@dataclass(frozen=True)
class HungarianMatcher(MatchCosts):
    """Optimal one-to-one assignment of queries to targets under the costs it holds.

    `matcher(logits, boxes, targets)` matches one decoder layer, `matcher.match_layers(...)` all
    of them with one device-to-host copy, `matcher.cost(...)` is the pairwise cost itself.
    """

    def cost(
        self,
        pred_logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        tgt_boxes: torch.Tensor,
        *,
        anchors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pairwise matching cost of K independent (queries, targets) problems.

        pred_logits: (K, Q) objectness logits; pred_boxes: (K, Q, 4) and tgt_boxes: (K, N, 4)
        cxcywh normalised. Returns (K, Q, N) float32, lower is a better match.
        anchors: optional (K, Q, 4) cxcywh, where each query comes from (its token's cell); with
        `cost_center` > 0 a pair costs that much more when the anchor's centre lies outside the
        target box grown by half the anchor on each side (`center_prior_outside`).
        """
        pred_boxes, tgt_boxes = pred_boxes.float(), tgt_boxes.float()
        # Coordinate planes ((K, 4, Q) memory behind a (K, Q, 4) view) make every broadcast op in
        # geometry's GIoU run over contiguous memory: 2x faster on CPU than interleaved xyxy.
        pred_xyxy = cxcywh_to_xyxy(pred_boxes).mT.contiguous().mT
        tgt_xyxy = cxcywh_to_xyxy(tgt_boxes).mT.contiguous().mT
        cost = torch.cdist(pred_boxes, tgt_boxes, p=1).mul_(self.cost_bbox)
        cost.sub_(_batched_giou(pred_xyxy, tgt_xyxy), alpha=self.cost_giou)
        obj = focal_objectness_cost(
            pred_logits.float(), alpha=self.focal_alpha, gamma=self.focal_gamma
        )
        cost.add_(obj.unsqueeze(-1), alpha=self.cost_obj)
        if anchors is not None and self.cost_center > 0:
            cost.add_(center_prior_outside(anchors, tgt_boxes).float(), alpha=self.cost_center)
        return cost

    @torch.no_grad()
    def match_layers(
        self,
        layers: Sequence[tuple[torch.Tensor, torch.Tensor]],
        targets: Sequence[torch.Tensor],
        *,
        step: int | None = None,
        anchors: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
    ) -> list[list[MatchIndices]]:
        """Match every decoder layer's queries to the targets with one device-to-host copy.

        layers: per decoder layer `(logits (B, Q), boxes (B, Q, 4) cxcywh normalised)`, the same
        B and Q for all; targets: B tensors `(N_i, 4)` cxcywh normalised (N_i may be 0).
        anchors: optional (B, Q, 4) cxcywh of where each query comes from, the same for every
        layer, for the spatial prior `cost_center` (see `cost`).
        query_mask: optional (B, Q) bool, True for the real queries of each image (the head's
        `query_mask`, or `token_mask` for its token stage); padding queries are never matched and
        their predictions may be anything. None: every query is real.
        Returns `result[layer][image] = (pred_idx, tgt_idx)`, empty for images without targets.
        Raises `MatchingError` naming the step, layer and image of the first non-finite cost of a
        real query.
        """
        if not layers:
            raise ValueError("match_layers needs at least one decoder layer")
        batch, num_queries = layers[0][0].shape
        for k, (logits, boxes) in enumerate(layers):
            if logits.shape != (batch, num_queries) or boxes.shape != (batch, num_queries, 4):
                raise ValueError(
                    f"layer {k}: expected logits ({batch}, {num_queries}) and boxes "
                    f"({batch}, {num_queries}, 4), got {tuple(logits.shape)} and {tuple(boxes.shape)}"
                )
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} target tensors for a batch of {batch} images")
        if query_mask is not None and query_mask.shape != (batch, num_queries):
            raise ValueError(
                f"query_mask {tuple(query_mask.shape)} does not match the queries ({batch}, {num_queries})"
            )
        sizes = [int(t.shape[0]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if max(sizes, default=0) == 0 or num_queries == 0:
            return [[(empty, empty) for _ in range(batch)] for _ in layers]

        device = layers[0][1].device
        padded = pad_sequence(
            [t.to(device=device, dtype=torch.float32) for t in targets],
            batch_first=True,
            padding_value=_PAD_BOX_CXCYWH,
        )  # (B, N_max, 4)
        # Layers become extra problems of the same batched pass: (L * B, Q, N_max).
        cost = self.cost(
            torch.stack([logits for logits, _ in layers]).flatten(0, 1),
            torch.stack([boxes for _, boxes in layers]).flatten(0, 1),
            padded.repeat(len(layers), 1, 1),
            anchors=None if anchors is None else anchors.to(device).repeat(len(layers), 1, 1),
        )
        # The mask travels as one more column, so that the host still gets a single copy.
        valid = torch.ones(batch, num_queries, device=device) if query_mask is None else query_mask
        valid = valid.to(device=device, dtype=cost.dtype).repeat(len(layers), 1)
        host = torch.cat((cost, valid.unsqueeze(-1)), dim=-1).cpu().numpy()  # (L * B, Q, N_max + 1)
        cost_host, real_rows = host[..., :-1], [np.flatnonzero(m) for m in host[:batch, :, -1] > 0]
        if not np.isfinite(cost_host).all():
            _raise_first_non_finite(cost_host, sizes, real_rows, step)

        result: list[list[MatchIndices]] = []
        for layer in range(len(layers)):
            pairs: list[MatchIndices] = []
            for image, n in enumerate(sizes):
                rows = real_rows[image]
                if n == 0 or len(rows) == 0:
                    pairs.append((empty, empty))
                    continue
                block = cost_host[layer * batch + image, rows, :n]
                picked, cols = linear_sum_assignment(block)
                # rows ascend and so does `picked`: pred_idx stays ascending.
                pairs.append((torch.from_numpy(rows[picked]).long(), torch.from_numpy(cols).long()))
            result.append(pairs)
        return result

    def __call__(
        self,
        pred_logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        targets: Sequence[torch.Tensor],
        *,
        step: int | None = None,
        anchors: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
    ) -> list[MatchIndices]:
        """One decoder layer's matching, per image.

        pred_logits: (B, Q) objectness logits; pred_boxes: (B, Q, 4) cxcywh normalised; targets:
        B tensors (N_i, 4) cxcywh normalised; query_mask: optional (B, Q) bool of real queries.
        Returns B pairs `(pred_idx, tgt_idx)` of int64 CPU tensors of length min(real queries,
        N_i), minimising the summed cost. Use `match_layers` to match several decoder layers with
        a single device-to-host copy.
        """
        layers = [(pred_logits, pred_boxes)]
        return self.match_layers(
            layers, targets, step=step, anchors=anchors, query_mask=query_mask
        )[0]


def hungarian_matcher(
    pred_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    targets: Sequence[torch.Tensor],
    *,
    step: int | None = None,
    anchors: torch.Tensor | None = None,
    query_mask: torch.Tensor | None = None,
    **costs: float,
) -> list[MatchIndices]:
    """`HungarianMatcher(**costs)(pred_logits, pred_boxes, targets)`: the 0.1 function, kept so that
    `bbucli.hungarian_matcher` still works. `costs` are `MatchCosts` fields (cost_obj, ...)."""
    matcher = HungarianMatcher(**costs)
    return matcher(
        pred_logits, pred_boxes, targets, step=step, anchors=anchors, query_mask=query_mask
    )


def center_prior_outside(anchors: torch.Tensor, tgt_boxes: torch.Tensor) -> torch.Tensor:
    """(K, Q, N) bool: True where query q's anchor centre is outside target n's box grown by half
    the anchor's size on each side, i.e. where the query's cell neither holds a part of the target
    nor touches its centre's cell. anchors (K, Q, 4), tgt_boxes (K, N, 4), cxcywh normalised.

    A spatial prior as in DeFCN/FCOS centre sampling: a one-to-one assignment restricted to the
    queries around each object is stable from the first step, instead of pairing an object with
    whichever query happens to be closest in the random early predictions."""
    anchors, tgt_boxes = anchors.float(), tgt_boxes.float()
    dx = (anchors[..., None, 0] - tgt_boxes[..., None, :, 0]).abs()
    dy = (anchors[..., None, 1] - tgt_boxes[..., None, :, 1]).abs()
    reach_x = (anchors[..., None, 2] + tgt_boxes[..., None, :, 2]) / 2
    reach_y = (anchors[..., None, 3] + tgt_boxes[..., None, :, 3]) / 2
    return (dx > reach_x) | (dy > reach_y)


def _raise_first_non_finite(
    cost_host: np.ndarray, sizes: list[int], real_rows: list[np.ndarray], step: int | None
) -> None:
    """Raise for the first (layer, image) whose real block (real queries x real targets) is not
    finite.

    Padding columns only inherit non-finite values from their rows, and padding queries are never
    matched, so an image whose real block is finite (or that has no targets, hence no cost
    matrix) is not an error.
    """
    batch = len(sizes)
    for problem in range(cost_host.shape[0]):
        layer, image = divmod(problem, batch)
        block = cost_host[problem, real_rows[image], : sizes[image]]
        bad = int((~np.isfinite(block)).sum())
        if bad:
            at_step = "an unknown step" if step is None else f"step {step}"
            raise MatchingError(
                f"matching cost is NaN or infinite at {at_step}, decoder layer {layer}, "
                f"image {image} ({bad} of {block.size} entries)",
                hint="the predicted boxes or objectness logits diverged (or a target box is "
                "not finite); lower the learning rate or check this step's batch",
            )
