"""The language-model loss at supervised positions only, split into teacher and student answers.

Position t predicts token t + 1 (causal LM). Only positions whose next label is not -100 are
supervised: their hidden states are gathered, pushed through `lm_head` in chunks, and scored with
cross entropy, so the (B, S, V) logits of a 151k vocabulary never exist. When there is more than
one chunk and gradients are on, each chunk runs under activation checkpointing: the forward keeps
only the chunk's hidden states and backward recomputes its logits, so at most one chunk's
(chunk, V) logits live at a time (`benchmarks/lm_loss.py` measures the peak).

`teacher_lm` / `student_lm` are token means over segment 1 / segment 2 targets (the segment of the
token being predicted). Weighted by their token counts they recombine to the plain mean LM loss over
all supervised tokens. Packed rows need nothing special: the collator masks each sample's first
label, the one its predecessor's last position would predict.

Two ways to pay for fewer tokens, both for small models on a CPU where the (D x 151k) lm_head is
most of a step: `segments` leaves out the answer segments whose loss weight is 0 (their losses
are then 0, still in the graph), and `max_tokens` scores a random subset of about that many
supervised positions, drawn from `generator` segment by segment (`draw_per_segment`): each
segment present gets its share of the budget, at least one token, drawn uniformly without
replacement among its own positions, so each segment's mean over its draw is an unbiased
estimate of its full token mean. (One uniform draw over all positions would not be: a segment
that happens to draw no token would count as 0, and a short teacher answer next to a long
student one often draws none at small budgets.) The counts returned are the tokens actually
scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bbucli.chat.processor import IGNORE_INDEX

SEGMENT_TEACHER, SEGMENT_STUDENT = 1, 2
DEFAULT_CHUNK = 512


@dataclass(frozen=True)
class LMLosses:
    """teacher_lm / student_lm: scalar token means (0, still in the graph, when a segment has no
    token); teacher_tokens / student_tokens: scalar long counts of supervised tokens."""

    teacher_lm: torch.Tensor
    student_lm: torch.Tensor
    teacher_tokens: torch.Tensor
    student_tokens: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """The plain LM loss: mean cross entropy over all supervised tokens."""
        t, s = self.teacher_tokens, self.student_tokens
        total = self.teacher_lm * t + self.student_lm * s
        return total / (t + s).clamp(min=1)


def lm_losses(
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    segment: torch.Tensor,
    lm_head: nn.Module,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    segments: tuple[int, ...] = (SEGMENT_TEACHER, SEGMENT_STUDENT),
    max_tokens: int | None = None,
    generator: torch.Generator | None = None,
) -> LMLosses:
    """hidden_states: (B, S, D) final normalised hidden states; labels: (B, S) token ids, -100
    where unsupervised; segment: (B, S) 0 prompt, 1 teacher answer, 2 student answer, -1 padding;
    lm_head: (..., D) -> (..., V). chunk_size: supervised positions per lm_head call; segments:
    the answer segments scored; max_tokens: score a random subset of this many supervised
    positions (None: all), drawn per segment (`draw_per_segment`) with `generator` (a CPU
    generator; None: torch's global one)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    if labels.shape != hidden_states.shape[:2] or segment.shape != labels.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} and segment {tuple(segment.shape)} must match the "
            f"hidden states' (B, S) {tuple(hidden_states.shape[:2])}"
        )
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    target_segment = segment[:, 1:][supervised]
    other = supervised.sum() - sum(
        (target_segment == s).sum() for s in (SEGMENT_TEACHER, SEGMENT_STUDENT)
    )
    if int(other):
        raise ValueError(
            f"{int(other)} supervised tokens lie outside the teacher (1) and student (2) answer segments"
        )
    if set(segments) != {SEGMENT_TEACHER, SEGMENT_STUDENT}:
        scored = supervised & torch.isin(
            segment[:, 1:], torch.tensor(segments, device=segment.device)
        )
        supervised, target_segment = scored, segment[:, 1:][scored]
    positions = supervised.flatten().nonzero().squeeze(1)  # (N,) in row-major order
    if max_tokens is not None and len(positions) > max_tokens:
        pick = draw_per_segment(target_segment.cpu(), max_tokens, generator).to(positions.device)
        positions, target_segment = positions[pick], target_segment[pick]
    rows, cols = positions // targets.shape[1], positions % targets.shape[1]
    hidden = hidden_states[rows, cols]  # (N, D): position t predicts token t + 1
    targets = targets[rows, cols]  # (N,)

    pieces = []
    # Checkpointing pays one recomputation to keep a single chunk's logits alive instead of all of
    # them; with one chunk there is nothing to save (the loss's backward runs first, while every
    # activation is still alive), so it is skipped.
    recompute = torch.is_grad_enabled() and hidden.requires_grad and len(targets) > chunk_size
    # At least one (possibly empty) chunk: without a supervised token the losses are 0 yet stay
    # connected to lm_head and the hidden states, so DDP still sees every parameter used.
    for start in range(0, max(len(targets), 1), chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if recompute:
            pieces.append(checkpoint(_token_ce, lm_head, h, t, use_reentrant=False))
        else:
            pieces.append(_token_ce(lm_head, h, t))
    per_token = torch.cat(pieces)
    zero = per_token.sum() * 0.0

    teacher = target_segment == SEGMENT_TEACHER
    student = target_segment == SEGMENT_STUDENT
    n_teacher, n_student = teacher.sum(), student.sum()
    teacher_lm = (per_token * teacher).sum() / n_teacher.clamp(min=1) + zero
    student_lm = (per_token * student).sum() / n_student.clamp(min=1) + zero
    return LMLosses(teacher_lm, student_lm, n_teacher, n_student)


def draw_per_segment(
    segment: torch.Tensor, budget: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices (ascending) of about `budget` of the N tokens whose segments `segment` (N,) gives.

    Every segment present gets the share of the budget its token count earns (largest remainder),
    at least one token, and draws it uniformly without replacement among its own tokens, so its
    mean over the draw is an unbiased estimate of its mean over all its tokens. The total is
    `budget`, or the number of segments present when that is larger."""
    kinds, counts = torch.unique(segment, return_counts=True)
    total, counts = int(counts.sum()), counts.tolist()
    shares = [budget * c // total for c in counts]
    by_remainder = sorted(range(len(counts)), key=lambda i: -(budget * counts[i] % total))
    for i in by_remainder[: budget - sum(shares)]:
        shares[i] += 1
    shares = [max(1, share) for share in shares]
    while sum(shares) > max(budget, len(shares)):  # the minimum of one went over the budget
        shares[shares.index(max(shares))] -= 1
    picks = []
    for kind, count, share in zip(kinds.tolist(), counts, shares, strict=True):
        members = (segment == kind).nonzero().squeeze(1)
        picks.append(members[torch.randperm(count, generator=generator)[:share]])
    return torch.cat(picks).sort().values


def _token_ce(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(n, D) hidden, (n,) targets -> (n,) float32 cross entropy of lm_head's logits."""
    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="none")
