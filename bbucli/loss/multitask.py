"""The multi-task loss of BBUModel: teacher/student LM + detection + captions.

Every component is unweighted here; `total_loss` (`bbucli.loss.weights`) applies `LossWeights`
once, to all of them:

    total = teacher_weight * teacher_lm + student_weight * student_lm
          + bbox_l1_weight * l1 + bbox_giou_weight * giou + objectness_weight * objectness
          + caption_weight * caption

Detection terms come from `DetectionCriterion` for every decoder layer: the last layer's under plain
keys (`l1`, `giou`, `objectness`), auxiliary layers' as `l1_0`, `giou_1`, ..., each weighted like
its plain key (DETR's auxiliary losses). The head's token objectness (the top-K query choice) is one
more auxiliary stage, `objectness_token`, matched on its tokens' fixed cells (Deformable DETR's
two-stage encoder loss; its boxes are constants, so only objectness trains there).

Captions: the caption decoder runs on the **matched** queries only (the criterion's matching of the
last decoder layer, reused: one matching per step), teacher forced on the compact ids of their
targets' descs (`CaptionTargets`): token-mean cross entropy per box, summed and divided by the same
`num_boxes` as the detection terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bbucli.loss.detection import (
    DetectionCriterion,
    DetTargets,
    LayerOutput,
    num_boxes_across_ranks,
)
from bbucli.loss.lm import DEFAULT_CHUNK, SEGMENT_STUDENT, SEGMENT_TEACHER, lm_losses
from bbucli.loss.matcher import HungarianMatcher, MatchIndices
from bbucli.loss.weights import LossWeights, total_loss
from bbucli.model.anchors import token_cell_boxes
from bbucli.model.bbu_model import BBUModel, BBUOutput
from bbucli.model.caption_vocab import PAD, CaptionVocab


def caption_token_ids(tokenizer: Any, desc: str) -> list[int]:
    """The Qwen token ids of one desc, as the caption decoder learns it (no special tokens)."""
    return list(tokenizer(desc, add_special_tokens=False)["input_ids"])


def build_caption_vocab(tokenizer: Any, descs: Sequence[str]) -> CaptionVocab:
    """The compact caption vocabulary of the training descs."""
    return CaptionVocab.build(caption_token_ids(tokenizer, d) for d in descs)


class CaptionTargets:
    """descs -> (N, max_len) compact caption ids (caption, `EOS`, then `PAD`), tokenising each
    distinct desc once."""

    def __init__(self, tokenizer: Any, vocab: CaptionVocab, max_len: int) -> None:
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.max_len = max_len
        self._ids: dict[str, list[int]] = {}

    def __call__(self, descs: Sequence[str]) -> torch.Tensor:
        captions = []
        for desc in descs:
            if desc not in self._ids:
                self._ids[desc] = caption_token_ids(self.tokenizer, desc)
            captions.append(self._ids[desc])
        return self.vocab.targets(captions, self.max_len)


@dataclass(frozen=True)
class LossBreakdown:
    """total: the scalar to backpropagate; losses: unweighted scalar components (keys as in the
    module docstring); stats: token and box counts (scalars) for logging."""

    total: torch.Tensor
    losses: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor | float]

    def for_logging(self) -> dict[str, float]:
        """Every component and count as a float (one host sync per value)."""
        out = {"loss": float(self.total.detach())}
        out.update({k: float(v.detach()) for k, v in self.losses.items()})
        out.update({k: float(v) for k, v in self.stats.items()})
        return out


class MultiTaskLoss:
    """Computes every component of the total loss from a `BBUModel` forward.

    matcher: the Hungarian matcher (costs, spatial prior, focal parameters) of the detection
    criterion, whose matching the token stage and the captions share (None: the defaults).
    captions: the caption targets builder, needed when the head has a caption decoder and
    `caption_weight` > 0. `aux`: detection losses on every decoder layer, not just the last.
    `token_aux`: add the head's token-objectness stage.
    `token_matches`: with a head that predicts token boxes (`HeadConfig.token_boxes`), the token
    stage also trains boxes (`l1_token`, `giou_token`), matching every target to this many
    tokens (one-to-many, as in H-DETR's hybrid branch: more box supervision per image while the
    decoder keeps one-to-one matching).
    `lm_max_tokens`: while the model trains, score about this many answer tokens per step, a
    random subset drawn per segment from the step number (reproducible; `bbucli.loss.lm`); None:
    all. A model in eval mode is always scored on every answer token, so `eval_loss` (the usual
    best-model metric) is the full loss, not a draw. Answer segments whose weight is 0 are never
    scored.
    """

    def __init__(
        self,
        weights: LossWeights,
        *,
        matcher: HungarianMatcher | None = None,
        captions: CaptionTargets | None = None,
        aux: bool = True,
        token_aux: bool = True,
        lm_chunk_size: int = DEFAULT_CHUNK,
        lm_max_tokens: int | None = None,
        token_matches: int = 1,
    ) -> None:
        if token_matches < 1:
            raise ValueError(f"token_matches must be >= 1, got {token_matches}")
        self.token_matches = token_matches
        if lm_max_tokens is not None and lm_max_tokens < 1:
            raise ValueError(f"lm_max_tokens must be >= 1 or None, got {lm_max_tokens}")
        self.weights = weights
        self.lm_max_tokens = lm_max_tokens
        self.lm_segments = tuple(
            segment
            for segment, weight in (
                (SEGMENT_TEACHER, weights.teacher_weight),
                (SEGMENT_STUDENT, weights.student_weight),
            )
            if weight
        )
        self.captions = captions
        self.token_aux = token_aux
        self.lm_chunk_size = lm_chunk_size
        self.criterion = DetectionCriterion(
            HungarianMatcher() if matcher is None else matcher, aux=aux
        )

    def idle_parameters(self, model: BBUModel) -> list[str]:
        """Names of `model`'s trainable parameters this loss never sends a gradient to, whatever
        the batch: the modules whose only way into the total is a term weighted 0 or a stage not
        scored. Empty with the default settings. A run freezes them (`bbucli.train.build`): DDP
        expects a gradient for every trainable parameter (else the second step fails on several
        devices), and its search for unused ones cannot be used instead, since the caption loss
        runs head parameters outside the model's forward.

        - objectness_weight 0: the decoder's and the tokens' objectness heads (the top-K choice
          reads token scores without a gradient);
        - token_aux off: the token stage (its scores, and its boxes with `token_boxes`; queries
          start from those boxes detached);
        - bbox_l1_weight and bbox_giou_weight 0: the box heads (the next layer's reference box is
          detached);
        - no caption loss (caption_weight 0, or no caption targets): the caption decoder;
        - no detection and no caption term: the whole head;
        - no LM term (teacher_weight and student_weight 0): an untied lm_head, and the language
          model's layers after `text_layer` with its final norm when the head reads an inner
          layer.
        """
        head, w = model.head, self.weights
        captioned = (
            head.caption_decoder is not None and w.caption_weight > 0 and self.captions is not None
        )
        boxes = w.bbox_l1_weight > 0 or w.bbox_giou_weight > 0
        idle: list[nn.Module | None] = []
        if not (w.objectness_weight > 0 or boxes or captioned):
            idle.append(head)
        else:
            if not w.objectness_weight > 0:
                idle += [head.decoder.obj_head, head.token_score_head]
            if not self.token_aux:
                idle += [head.token_score_head, head.token_box_head]
            if not boxes:
                idle += [head.decoder.box_head, head.token_box_head]
            if not captioned:
                idle.append(head.caption_decoder)
        if not self.lm_segments:
            qwen = model.qwen
            lm_head = qwen.get_output_embeddings()
            if lm_head.weight is not qwen.get_input_embeddings().weight:
                idle.append(lm_head)
            language = qwen.model.language_model
            idle += list(language.layers[model.text_layer :])
            if model.text_layer < model.num_layers:
                idle.append(language.norm)
        ids = {id(p) for module in idle if module is not None for p in module.parameters()}
        return [n for n, p in model.named_parameters() if p.requires_grad and id(p) in ids]

    def __call__(
        self,
        model: BBUModel,
        output: BBUOutput,
        batch: Mapping[str, Any],
        *,
        step: int | None = None,
    ) -> LossBreakdown:
        max_tokens = self.lm_max_tokens if model.training else None
        lm = lm_losses(
            output.hidden_states,
            batch["labels"],
            batch["segment"],
            model.qwen.get_output_embeddings(),
            chunk_size=self.lm_chunk_size,
            segments=self.lm_segments,
            max_tokens=max_tokens,
            generator=None
            if step is None or max_tokens is None
            else torch.Generator().manual_seed(step),
        )
        losses: dict[str, torch.Tensor] = {"teacher_lm": lm.teacher_lm, "student_lm": lm.student_lm}
        stats: dict[str, torch.Tensor | float] = {
            "teacher_tokens": lm.teacher_tokens,
            "student_tokens": lm.student_tokens,
        }
        device = output.hidden_states.device
        targets = self._targets(output, batch, device)
        # Always called: under torch.distributed it is a collective every rank must join.
        num_boxes = num_boxes_across_ranks(targets, device)
        stats["num_boxes"] = num_boxes
        if output.head is not None:
            losses.update(self._detection(model, output, targets, batch, num_boxes, step))
        return LossBreakdown(total_loss(losses, self.weights), losses, stats)

    def _targets(
        self, output: BBUOutput, batch: Mapping[str, Any], device: torch.device
    ) -> list[DetTargets]:
        """GT boxes of the head's samples; a sample with boxes but no image is an error."""
        gt_boxes = batch["gt_boxes"]
        rows = output.head_samples.tolist()
        missing = [i for i, boxes in enumerate(gt_boxes) if len(boxes) and i not in rows]
        if missing:
            raise ValueError(f"samples {missing} have GT boxes but no image to detect them in")
        return [DetTargets(gt_boxes[i].to(device=device, dtype=torch.float32)) for i in rows]

    def _detection(
        self,
        model: BBUModel,
        output: BBUOutput,
        targets: list[DetTargets],
        batch: Mapping[str, Any],
        num_boxes: float,
        step: int | None,
    ) -> dict[str, torch.Tensor]:
        head = output.head
        layers = [
            LayerOutput(logits, boxes)
            for logits, boxes in zip(head.logits, head.boxes, strict=True)
        ]
        # Every token's cell: where each query and each token-stage proposal comes from.
        spatial_prior = self.criterion.matcher.cost_center > 0
        cells = (
            token_cell_boxes(output.grid_hw, head.token_logits.shape[1]) if spatial_prior else None
        )
        query_cells = None
        if cells is not None:
            query_cells = cells.gather(1, head.query_index[..., None].expand(-1, -1, 4))
        det = self.criterion(
            layers,
            targets,
            num_boxes=num_boxes,
            step=step,
            anchors=query_cells,
            query_mask=head.query_mask,
        )
        losses = dict(det.losses)
        if self.token_aux:
            stage = LayerOutput(head.token_logits, head.token_boxes)
            if model.head.token_box_head is not None:
                k = self.token_matches
                many = [DetTargets(t.boxes.repeat(k, 1)) for t in targets]
                token = self.criterion(
                    [stage],
                    many,
                    num_boxes=num_boxes * k,
                    step=step,
                    anchors=cells,
                    query_mask=head.token_mask,
                )
                losses.update(
                    {f"{key}_token": token.losses[key] for key in ("l1", "giou", "objectness")}
                )
            else:
                token = self.criterion(
                    [stage],
                    targets,
                    num_boxes=num_boxes,
                    step=step,
                    anchors=cells,
                    query_mask=head.token_mask,
                )
                losses["objectness_token"] = token.losses["objectness"]
        if (
            self.weights.caption_weight > 0
            and model.head.caption_decoder is not None
            and self.captions is not None
        ):
            descs = [batch["gt_descs"][i] for i in output.head_samples.tolist()]
            losses["caption"] = self._caption(model, output, det.indices[-1], descs, num_boxes)
        return losses

    def _caption(
        self,
        model: BBUModel,
        output: BBUOutput,
        indices: list[MatchIndices],
        descs: list[Sequence[str]],
        num_boxes: float,
    ) -> torch.Tensor:
        """Token-mean caption cross entropy of the matched queries, summed / num_boxes.
        indices: the criterion's matching of the last decoder layer, per image."""
        head = output.head
        device = head.hidden.device
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
        query_idx = torch.cat([q for q, _ in indices])
        ids = [
            self.captions([d[int(t)] for t in tgt])
            for d, (_, tgt) in zip(descs, indices, strict=True)
        ]
        caption_ids = torch.cat(ids).to(device)  # (M, L)
        # M may be 0 (no box in the batch): the decoder still runs, on nothing, so its parameters
        # get (zero) gradients and DDP without find_unused_parameters stays in step.
        hidden = head.hidden[batch_idx.to(device), query_idx.to(device)]
        logits = model.head.caption_logits(hidden, caption_ids)  # (M, L, V)
        ce = F.cross_entropy(
            logits.flatten(0, 1).float(), caption_ids.flatten(), ignore_index=PAD, reduction="none"
        ).view_as(caption_ids)
        tokens = (caption_ids != PAD).sum(1).clamp(min=1)
        return (ce.sum(1) / tokens).sum() / num_boxes
