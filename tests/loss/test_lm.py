"""The supervised-positions LM loss: teacher/student token means that recombine to transformers'
own loss, for padded and packed batches, with the same gradients, in any chunking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bbucli.chat.loading import load_processor
from bbucli.chat.processor import ChatProcessor
from bbucli.data.collators import PackedDataCollator, StandardDataCollator
from bbucli.loss.lm import lm_losses
from bbucli.model.loading import load_model
from bbucli.schema import DetObject, Episode, Sample

PAD = 151643


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """A student alone, and a student after two teachers (teacher and student answer tokens)."""
    root: Path = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for name, (w, h) in {"a.png": (56, 84), "b.png": (112, 56), "c.png": (84, 56)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    cp = ChatProcessor(load_processor("tiny"), system_prompt="Find objects.", instruction="Detect.")

    def sample(image, *boxes):
        return Sample((image,), tuple(DetObject(b, "screw/ok") for b in boxes))

    return [
        cp.process_sample(Episode(student=sample("a.png", (1, 2, 30, 40))), root),
        cp.process_sample(
            Episode(
                student=sample("b.png", (3, 4, 50, 50), (60, 5, 99, 44)),
                teachers=(sample("c.png", (2, 2, 20, 20)), sample("a.png", (5, 5, 9, 9))),
            ),
            root,
        ),
    ]


@pytest.fixture(scope="module")
def qwen():
    return load_model("tiny", seed=0)


def forward(qwen, batch, with_labels: bool = True):
    """transformers' own forward: hidden states, full logits and (with labels) its mean loss."""
    kwargs = {k: batch[k] for k in ("input_ids", "position_ids", "pixel_values", "image_grid_thw")}
    if "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    out = qwen(
        **kwargs,
        labels=batch["labels"] if with_labels else None,
        use_cache=False,
        output_hidden_states=True,
    )
    return out.hidden_states[-1], out.logits, out.loss


COLLATORS = {"standard": StandardDataCollator(PAD), "packed": PackedDataCollator()}


@pytest.mark.parametrize("kind", COLLATORS)
def test_token_weighted_means_recombine_to_the_plain_lm_loss(qwen, samples, kind) -> None:
    batch = COLLATORS[kind](samples)
    with torch.no_grad():
        hidden, _, reference = forward(qwen, batch)
        lm = lm_losses(hidden, batch["labels"], batch["segment"], qwen.lm_head)
    n_t, n_s = int(lm.teacher_tokens), int(lm.student_tokens)
    assert n_t > 0 and n_s > 0
    assert n_t + n_s == int((batch["labels"][:, 1:] != -100).sum())
    recombined = (n_t * lm.teacher_lm + n_s * lm.student_lm) / (n_t + n_s)
    assert abs(float(recombined) - float(reference)) <= 1e-5
    assert abs(float(lm.mean) - float(reference)) <= 1e-5


@pytest.mark.parametrize("kind", COLLATORS)
def test_segment_means_equal_full_logit_cross_entropy(qwen, samples, kind) -> None:
    batch = COLLATORS[kind](samples)
    with torch.no_grad():
        hidden, logits, _ = forward(qwen, batch, with_labels=False)
        lm = lm_losses(hidden, batch["labels"], batch["segment"], qwen.lm_head, chunk_size=7)
    per_token = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="none"
    ).view(logits.shape[0], -1)
    segment = batch["segment"][:, 1:]
    for value, seg in ((lm.teacher_lm, 1), (lm.student_lm, 2)):
        mask = (segment == seg) & (batch["labels"][:, 1:] != -100)
        assert abs(float(value) - float(per_token[mask].mean())) <= 1e-5


def test_packed_equals_standard(qwen, samples) -> None:
    values = {}
    for kind, collate in COLLATORS.items():
        batch = collate(samples)
        with torch.no_grad():
            hidden, _, _ = forward(qwen, batch, with_labels=False)
            values[kind] = lm_losses(hidden, batch["labels"], batch["segment"], qwen.lm_head)
    for field in ("teacher_lm", "student_lm", "teacher_tokens", "student_tokens"):
        assert (
            abs(float(getattr(values["packed"], field)) - float(getattr(values["standard"], field)))
            <= 1e-5
        )


@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
def test_gradients_equal_full_logit_gradients(chunk_size) -> None:
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(2, 9, 16, generator=gen, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9), generator=gen)
    labels[:, :3] = -100
    labels[1, 6] = -100
    segment = torch.where(labels == -100, 0, 2).to(torch.int8)
    segment[0, 3:5] = 1
    weights = (0.3, 1.7)

    lm = lm_losses(hidden, labels, segment, head, chunk_size=chunk_size)
    (weights[0] * lm.teacher_lm + weights[1] * lm.student_lm).backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    per_token = F.cross_entropy(
        head(hidden)[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none"
    ).view(2, -1)
    tgt_seg = segment[:, 1:]
    total = sum(
        w * per_token[(tgt_seg == s) & (labels[:, 1:] != -100)].mean()
        for w, s in zip(weights, (1, 2), strict=True)
    )
    total.backward()
    assert torch.allclose(grads[0], hidden.grad, atol=1e-6)
    assert torch.allclose(grads[1], head.weight.grad, atol=1e-6)


def test_no_supervised_token_gives_zero_losses_in_the_graph() -> None:
    head = torch.nn.Linear(8, 20)
    hidden = torch.randn(1, 5, 8, requires_grad=True)
    labels = torch.full((1, 5), -100)
    lm = lm_losses(hidden, labels, torch.zeros(1, 5, dtype=torch.int8), head)
    assert float(lm.teacher_lm.detach()) == float(lm.student_lm.detach()) == 0.0
    assert int(lm.teacher_tokens) == int(lm.student_tokens) == 0
    (lm.teacher_lm + lm.student_lm).backward()
    assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) == 0.0


def test_supervised_tokens_outside_answers_are_refused() -> None:
    labels = torch.tensor([[-100, 3, 4]])
    segment = torch.tensor([[0, 0, 2]], dtype=torch.int8)
    with pytest.raises(ValueError, match="outside the teacher"):
        lm_losses(torch.randn(1, 3, 8), labels, segment, torch.nn.Linear(8, 10))
    with pytest.raises(ValueError, match="must match"):
        lm_losses(torch.randn(1, 4, 8), labels, segment, torch.nn.Linear(8, 10))


def _synthetic_lm(seed=0, rows=2, length=40, dim=8, vocab=50):
    """Random hidden states, an lm_head, and labels with teacher and student answer spans."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, length, dim, generator=gen, requires_grad=True)
    head = torch.nn.Linear(dim, vocab, bias=False)
    torch.nn.init.normal_(head.weight, generator=gen)
    labels = torch.randint(0, vocab, (rows, length), generator=gen)
    segment = torch.zeros(rows, length, dtype=torch.long)
    segment[:, 5:15], segment[:, 20:38] = 1, 2
    labels[segment == 0] = -100
    return hidden, head, labels, segment


def test_zero_weight_segments_are_not_scored():
    hidden, head, labels, segment = _synthetic_lm()
    full = lm_losses(hidden, labels, segment, head)
    student_only = lm_losses(hidden, labels, segment, head, segments=(2,))
    assert int(student_only.teacher_tokens) == 0 and float(student_only.teacher_lm.detach()) == 0.0
    assert int(student_only.student_tokens) == int(full.student_tokens)
    torch.testing.assert_close(student_only.student_lm, full.student_lm)
    # Still in the graph (DDP sees lm_head used), with no gradient from teacher positions.
    student_only.student_lm.backward()
    assert hidden.grad[:, 4:14].abs().sum() == 0 and hidden.grad[:, 19:37].abs().sum() > 0


def test_max_tokens_scores_a_reproducible_subset_with_an_unbiased_mean():
    hidden, head, labels, segment = _synthetic_lm()
    full = lm_losses(hidden, labels, segment, head)
    n = int(full.teacher_tokens + full.student_tokens)
    assert lm_losses(hidden, labels, segment, head, max_tokens=n).mean.item() == pytest.approx(
        full.mean.item()
    )

    def draw(seed):
        return lm_losses(
            hidden,
            labels,
            segment,
            head,
            max_tokens=7,
            generator=torch.Generator().manual_seed(seed),
        )

    one, again, other = draw(3), draw(3), draw(4)
    assert int(one.teacher_tokens + one.student_tokens) == 7
    assert one.mean.item() == again.mean.item() and one.mean.item() != other.mean.item()
    draws = [draw(seed) for seed in range(400)]
    for segment in ("teacher_lm", "student_lm"):
        estimate = sum(getattr(d, segment).item() for d in draws) / len(draws)
        assert estimate == pytest.approx(getattr(full, segment).item(), rel=0.02), segment
    one.mean.backward()
    assert int((hidden.grad.abs().sum(-1) > 0).sum()) == 7  # only the scored positions


def test_max_tokens_draws_every_segment_so_small_budgets_stay_unbiased():
    """A 2-token teacher answer next to a 36-token student one, 4 tokens a step: a uniform draw
    over all positions leaves the teacher out of most steps, where its mean would count as 0.
    Drawn per segment, both means stay unbiased, step by step the teacher is always scored."""
    hidden, head, labels, segment = _synthetic_lm()
    segment[:, 5:15] = 0  # the teacher answer shrinks to one token per row
    segment[:, 5] = 1
    labels[segment == 0] = -100
    full = lm_losses(hidden, labels, segment, head)
    assert int(full.teacher_tokens) == 2 and int(full.student_tokens) == 36
    draws = [
        lm_losses(
            hidden,
            labels,
            segment,
            head,
            max_tokens=4,
            generator=torch.Generator().manual_seed(seed),
        )
        for seed in range(300)
    ]
    assert all(
        int(d.teacher_tokens) >= 1 and int(d.teacher_tokens + d.student_tokens) == 4 for d in draws
    )
    for name in ("teacher_lm", "student_lm"):
        estimate = sum(getattr(d, name).item() for d in draws) / len(draws)
        assert estimate == pytest.approx(getattr(full, name).item(), rel=0.05), name


def test_max_tokens_must_be_positive():
    hidden, head, labels, segment = _synthetic_lm()
    with pytest.raises(ValueError, match="max_tokens"):
        lm_losses(hidden, labels, segment, head, max_tokens=0)
