"""Head decoding: the detection head's output for a batch -> `Detections` per image.

`HeadDecoder` turns a `HeadOutput` (pred_boxes (B, Q, 4) normalised cxcywh of the image the model
saw, pred_logits (B, Q) objectness, hidden (B, Q, D), query_mask (B, Q) with the valid queries
first) into boxes, scores and descs:
- with known classes (`class_descs`: the checkpoint's trained classes that the caption vocabulary
  can spell) each query is labelled by the caption decoder's likelihood of every class desc
  (teacher-forced, softmax over the classes) and score = sigmoid(objectness) x p(class); a query
  yields its `hypotheses` best classes (DETR's top-k over query x class pairs; 1: one box per
  query). Two cuts make this cheap without changing a kept box: the class captions are padded to
  the longest one (the decoder is causal, so the `PAD` positions after every `EOS` change nothing
  before them), and queries are scored in objectness order only until no unscored query can
  enter the top `top_k` (`_class_pairs`);
- without classes: desc = the greedy caption (compact vocabulary -> Qwen ids -> text), score =
  sigmoid(objectness).
The top `top_k` by score are kept, then those >= `score_threshold`. Boxes come back xyxy in pixels
of `image_wh` (normalised cxcywh x image_wh: the model's resize is a per-axis scaling), and boxes
with no area are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from bbucli.evaluation.types import Detections
from bbucli.geometry import denormalize_cxcywh
from bbucli.infer.answers import UNCAPTIONED
from bbucli.loss.multitask import caption_token_ids
from bbucli.model.caption_vocab import PAD, UNK

if TYPE_CHECKING:
    from bbucli.model.bbu_model import BBUModel
    from bbucli.model.head import HeadOutput

#: Per image: (query of each kept box, its score, its desc), best first.
Chosen = tuple[torch.Tensor, torch.Tensor, list[str]]


class HeadDecoder:
    """Decodes the head output of one `BBUModel` (module doc); `class_descs` keeps only the descs
    the model's caption vocabulary can spell (an unknown token is UNK, never generated)."""

    def __init__(
        self,
        model: BBUModel,
        tokenizer: Any,
        class_descs: Sequence[str] | None = None,
        hypotheses: int = 1,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.hypotheses = hypotheses
        self.class_descs: tuple[str, ...] = ()
        self._class_targets: torch.Tensor | None = None
        vocab = model.caption_vocab
        if class_descs and vocab is not None and model.head.caption_decoder is not None:
            ids = {d: caption_token_ids(tokenizer, d) for d in dict.fromkeys(class_descs)}
            known = [d for d, t in ids.items() if UNK not in vocab.encode(t)]
            if known:
                self.class_descs = tuple(known)
                max_len = model.head.config.caption_max_len
                targets = vocab.targets([ids[d] for d in known], max_len)
                longest = int((targets != PAD).sum(-1).max())  # the longest caption and its EOS
                self._class_targets = targets[:, :longest]

    def __call__(
        self,
        out: HeadOutput,
        keys: Sequence[str],
        image_whs: Sequence[tuple[int, int]],
        threshold: float | None,
        top_k: int | None,
    ) -> list[Detections]:
        """One `Detections` per batch row, named `keys[row]`, in the frame `image_whs[row]`."""
        if self._class_targets is not None:
            chosen = self._class_pairs(out, threshold, top_k)
        else:
            chosen = self._greedy(out, threshold, top_k)
        found = []
        rows = zip(keys, image_whs, chosen, strict=True)
        for row, (key, image_wh, (keep, scores, descs)) in enumerate(rows):
            boxes = denormalize_cxcywh(out.pred_boxes[row, keep].float().cpu(), image_wh).numpy()
            scores = scores.cpu().numpy()
            valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            row_descs = [d for d, v in zip(descs, valid, strict=True) if v]
            found.append(
                Detections(
                    key,
                    boxes[valid],
                    tuple(row_descs),
                    scores[valid],
                    image_wh=image_wh,
                    source="head",
                )
            )
        return found

    def _greedy(self, out: HeadOutput, threshold: float | None, top_k: int | None) -> list[Chosen]:
        """Per row: (kept queries, their objectness, their greedy captions), best first."""
        kept = []
        for row in range(out.hidden.shape[0]):
            n = int(out.query_mask[row].sum())  # valid queries come first
            scores = torch.sigmoid(out.pred_logits[row, :n].float())
            order = best_first(scores, top_k, threshold)
            kept.append((order, scores[order]))
        descs = self._captions(out.hidden, [order for order, _ in kept])
        return [(order, scores, d) for (order, scores), d in zip(kept, descs, strict=True)]

    def _class_pairs(
        self, out: HeadOutput, threshold: float | None, top_k: int | None
    ) -> list[Chosen]:
        """Per row: (query of each kept (query, class) pair, objectness x p(class), class desc),
        best first; each query gives its `hypotheses` most likely classes.

        A pair scores at most its query's objectness (p(class) <= 1). So the queries are scored in
        objectness order, ceil(top_k / hypotheses) at a time (the fewest that can fill top_k), and
        scoring stops once the top_k-th pair found beats the objectness of the next query; a query
        below `threshold` is never scored. The pairs kept are those of scoring every query. How
        many are scored depends on the head: all of them when objectness is flat, down to
        ceil(top_k / hypotheses) when it is confident on a few (`bbu predict --threshold` also
        skips every query below the threshold)."""
        per_query = min(self.hypotheses, len(self.class_descs))
        chosen = []
        for row in range(out.hidden.shape[0]):
            n = int(out.query_mask[row].sum())  # valid queries come first
            objectness = torch.sigmoid(out.pred_logits[row, :n].float())
            queries = best_first(objectness, None, threshold)
            step = max(len(queries) if top_k is None else -(-top_k // per_query), 1)
            scored, scores, classes = [], [], []
            for at in range(0, len(queries), step):
                batch, rest = queries[at : at + step], queries[at + step :]
                best, which = self._classify(out.hidden[row, batch], per_query)
                scored.append(batch.repeat_interleave(per_query))
                scores.append((objectness[batch, None] * best).flatten())
                classes.append(which.flatten())
                if len(rest) and _settled(torch.cat(scores), top_k, objectness[rest[0]]):
                    break
            if not scored:
                chosen.append((queries, objectness[queries], []))
                continue
            scored_t, scores_t, classes_t = torch.cat(scored), torch.cat(scores), torch.cat(classes)
            order = best_first(scores_t, top_k, threshold)
            descs = [self.class_descs[int(c)] for c in classes_t[order]]
            chosen.append((scored_t[order], scores_t[order], descs))
        return chosen

    def _classify(self, hidden: torch.Tensor, per_query: int) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (M, W) query states -> (p, class index), both (M, per_query): each query's
        `per_query` most likely classes, by the caption decoder's teacher-forced likelihood of every
        class desc, softmaxed over the classes."""
        n_classes = len(self.class_descs)
        targets = self._class_targets.to(hidden.device).repeat(hidden.shape[0], 1)  # (M * C, L)
        conditions = hidden.float().repeat_interleave(n_classes, 0)
        logits = self.model.head.caption_logits(conditions, targets).float()
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD, reduction="none")
        p_class = (-nll.sum(-1)).view(-1, n_classes).softmax(-1)
        return p_class.topk(per_query, dim=-1)

    def _captions(self, hidden: torch.Tensor, keep_per_row: list[torch.Tensor]) -> list[list[str]]:
        """Greedy captions of the kept queries, decoded to text (UNCAPTIONED when empty or when
        the head has no caption decoder)."""
        vocab = self.model.caption_vocab
        counts = [len(k) for k in keep_per_row]
        if vocab is None or self.model.head.caption_decoder is None or not sum(counts):
            return [[UNCAPTIONED] * n for n in counts]
        chosen = torch.cat([hidden[row, keep] for row, keep in enumerate(keep_per_row)])
        compact = self.model.head.generate_captions(chosen.float()).cpu()
        texts = [
            self.tokenizer.decode(vocab.decode(row), skip_special_tokens=True).strip()
            for row in compact
        ]
        texts = [t or UNCAPTIONED for t in texts]
        out, at = [], 0
        for n in counts:
            out.append(texts[at : at + n])
            at += n
        return out


def _settled(scores: torch.Tensor, top_k: int | None, bound: torch.Tensor) -> bool:
    """Whether a pair scoring at most `bound` can no longer enter the top `top_k` of `scores`."""
    if top_k is None or len(scores) < top_k:
        return False
    return bool(scores.topk(top_k).values[-1] >= bound)


def best_first(scores: torch.Tensor, top_k: int | None, threshold: float | None) -> torch.Tensor:
    """Indices of `scores` (1-D) from best to worst, at most top_k of them, none below threshold."""
    order = torch.argsort(scores, descending=True)
    if top_k is not None:
        order = order[:top_k]
    if threshold is not None:
        order = order[scores[order] >= threshold]
    return order
