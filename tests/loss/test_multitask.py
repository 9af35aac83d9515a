"""The multi-task loss: components, captions on matched queries only, gradients to every
parameter group, and a short CPU overfit of the whole tiny BBUModel on synthetic rectangles."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from bbucli.chat.loading import load_processor
from bbucli.chat.processor import ChatProcessor
from bbucli.data.collators import PackedDataCollator, StandardDataCollator
from bbucli.geometry import box_iou, cxcywh_to_xyxy
from bbucli.loss.matcher import HungarianMatcher
from bbucli.loss.multitask import (
    CaptionTargets,
    MultiTaskLoss,
    build_caption_vocab,
    caption_token_ids,
)
from bbucli.loss.weights import LossWeights, total_loss
from bbucli.model.bbu_model import BBUModel
from bbucli.model.caption_vocab import EOS, PAD
from bbucli.model.loading import load_model
from bbucli.model.param_groups import GROUPS, build_param_groups, parameter_group
from bbucli.schema import DetObject, Episode, Sample

COLOURS = {"cable/fibre": (220, 30, 30), "screw/install": (30, 60, 220)}
HEAD = dict(width=64, layers=2, heads=4, ffn=128, caption_max_len=8)
MAX_OBJECTS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def rectangles_set(root: Path, n_images: int, seed: int = 0) -> list[Episode]:
    """n 112x112 images (merged grid 4x4): a plain background and 1 to MAX_OBJECTS
    non-overlapping filled rectangles of 24-56 px, red or blue (the desc says which); image 1 has
    image 0 as teacher."""
    rng = random.Random(seed)
    episodes, students = [], []
    for i in range(n_images):
        image = Image.new("RGB", (112, 112), tuple(rng.randint(150, 255) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        objects: list[DetObject] = []
        for _ in range(rng.randint(1, MAX_OBJECTS)):
            desc = rng.choice(list(COLOURS))
            for _ in range(100):
                w, h = rng.randint(24, 56), rng.randint(24, 56)
                x, y = rng.randint(0, 112 - w), rng.randint(0, 112 - h)
                box = (x, y, x + w, y + h)
                if all(
                    box[2] <= o[0] or o[2] <= box[0] or box[3] <= o[1] or o[3] <= box[1]
                    for o in (d.bbox_2d for d in objects)
                ):
                    objects.append(DetObject(box, desc))
                    draw.rectangle((x, y, x + w - 1, y + h - 1), fill=COLOURS[desc])
                    break
        image.save(root / f"{i}.png")
        objects.sort(key=lambda o: (o.bbox_2d[1], o.bbox_2d[0]))
        students.append(Sample((f"{i}.png",), tuple(objects)))
        # One episode with a teacher, so that both LM segments train (answers dominate CPU time).
        teachers = (students[0],) if i == 1 else ()
        episodes.append(Episode(student=students[i], teachers=teachers))
    return episodes


@pytest.fixture(scope="module")
def processor():
    return load_processor("tiny")


@pytest.fixture(scope="module")
def vocab(processor):
    return build_caption_vocab(processor.tokenizer, list(COLOURS))


def make_samples(processor, root: Path, n_images: int, seed: int = 0):
    chat = ChatProcessor(processor, system_prompt="Find objects.", instruction="Detect.")
    return [chat.process_sample(e, root) for e in rectangles_set(root, n_images, seed)]


@pytest.fixture(scope="module")
def samples(processor, tmp_path_factory):
    return make_samples(processor, tmp_path_factory.mktemp("rects"), 3, seed=1)


def make_model(vocab, **head) -> BBUModel:
    qwen = load_model("tiny", seed=0)
    torch.manual_seed(0)
    return BBUModel.from_qwen(qwen, caption_vocab=vocab, **{**HEAD, **head})


def make_loss(processor, vocab, **weights) -> MultiTaskLoss:
    captions = CaptionTargets(processor.tokenizer, vocab, HEAD["caption_max_len"])
    return MultiTaskLoss(LossWeights(**weights), captions=captions)


# ---- weights ----------------------------------------------------------------------------------


def test_caption_targets_tokenise_descs_into_the_compact_vocabulary(processor, vocab) -> None:
    targets = CaptionTargets(processor.tokenizer, vocab, max_len=8)(["cable/fibre", "screw/x"])
    ids = caption_token_ids(processor.tokenizer, "cable/fibre")
    assert targets.shape == (2, 8)
    assert vocab.decode(targets[0]) == ids and targets[0, len(ids)] == EOS
    assert processor.tokenizer.decode(vocab.decode(targets[0])) == "cable/fibre"
    assert bool((targets[0, len(ids) + 1 :] == PAD).all())


# ---- components on a real batch ----------------------------------------------------------------


def test_components_and_total(processor, vocab, samples) -> None:
    model = make_model(vocab)
    batch = PackedDataCollator()(samples)
    out = model(batch)
    result = make_loss(processor, vocab)(model, out, batch)
    layers = HEAD["layers"]
    expected = {"teacher_lm", "student_lm", "caption", "objectness_token"}
    for name in ("l1", "giou", "objectness"):
        expected |= {name} | {f"{name}_{k}" for k in range(layers - 1)}
    assert set(result.losses) == expected
    assert all(bool(torch.isfinite(v)) and v.ndim == 0 for v in result.losses.values())
    recombined = total_loss(result.losses, LossWeights())
    assert float(result.total.detach()) == pytest.approx(float(recombined.detach()))
    assert result.stats["num_boxes"] == sum(len(s.gt_boxes) for s in samples)
    assert int(result.stats["teacher_tokens"]) > 0 and int(result.stats["student_tokens"]) > 0
    logged = result.for_logging()
    assert set(logged) == {"loss", *result.losses, *result.stats}


def test_caption_loss_reads_matched_queries_only(processor, vocab, samples) -> None:
    model = make_model(vocab).eval()
    batch = StandardDataCollator(151643)(samples)
    with torch.no_grad():
        out = model(batch)
        caption = make_loss(processor, vocab)(model, out, batch).losses["caption"]
        head = out.head
        boxes = [s.gt_boxes for s in samples]
        builder = CaptionTargets(processor.tokenizer, vocab, HEAD["caption_max_len"])
        total, n = 0.0, sum(len(b) for b in boxes)
        for b, (queries, targets) in enumerate(
            HungarianMatcher()(head.pred_logits, head.pred_boxes, boxes)
        ):
            ids = builder([samples[b].gt_descs[int(t)] for t in targets])
            logits = model.head.caption_logits(head.hidden[b, queries], ids)
            ce = F.cross_entropy(logits.transpose(1, 2), ids, ignore_index=PAD, reduction="none")
            total += float((ce.sum(1) / (ids != PAD).sum(1)).sum())
    assert float(caption) == pytest.approx(total / n, rel=1e-5)


def caption_loss_of(model, processor, vocab, samples, head, indices) -> float:
    builder = CaptionTargets(processor.tokenizer, vocab, HEAD["caption_max_len"])
    total = 0.0
    for b, (queries, targets) in enumerate(indices):
        ids = builder([samples[b].gt_descs[int(t)] for t in targets])
        logits = model.head.caption_logits(head.hidden[b, queries], ids)
        ce = F.cross_entropy(logits.transpose(1, 2), ids, ignore_index=PAD, reduction="none")
        total += float((ce.sum(1) / (ids != PAD).sum(1)).sum())
    return total / sum(len(s.gt_boxes) for s in samples)


def test_center_prior_reaches_the_caption_matching(processor, vocab, samples) -> None:
    """With loss.cost_center the caption loss reads the queries the spatial prior matched: the
    cells of the queries' tokens, rebuilt here from the grid."""
    model = make_model(vocab).eval()
    batch = StandardDataCollator(151643)(samples)
    captions = CaptionTargets(processor.tokenizer, vocab, HEAD["caption_max_len"])
    with torch.no_grad():
        out = model(batch)
        # Predicted boxes moved 5 tokens on, so that matching by box alone picks queries away
        # from the objects (at initialisation every query predicts its own cell).
        head = replace(out.head, boxes=tuple(b.roll(5, dims=1) for b in out.head.boxes))
        out = replace(out, head=head)
        boxes = [s.gt_boxes for s in samples]
        cells = []
        for b in range(len(samples)):
            gh, gw = (int(v) for v in out.grid_hw[b])
            n = head.query_index[b]
            cells.append(
                torch.stack(
                    (
                        (n % gw + 0.5) / gw,
                        (n // gw + 0.5) / gh,
                        torch.full_like(n, 1.0 / gw, dtype=torch.float32),
                        torch.full_like(n, 1.0 / gh, dtype=torch.float32),
                    ),
                    -1,
                ).float()
            )
        anchors = torch.stack(cells)
        prior = HungarianMatcher(cost_center=100.0)
        with_prior = prior(head.pred_logits, head.pred_boxes, boxes, anchors=anchors)
        without = HungarianMatcher()(head.pred_logits, head.pred_boxes, boxes)
        assert any(not torch.equal(a[0], b[0]) for a, b in zip(with_prior, without, strict=True))
        loss = MultiTaskLoss(LossWeights(), captions=captions, matcher=prior)
        caption = float(loss(model, out, batch).losses["caption"])
        plain = float(
            MultiTaskLoss(LossWeights(), captions=captions)(model, out, batch).losses["caption"]
        )
        assert caption == pytest.approx(
            caption_loss_of(model, processor, vocab, samples, head, with_prior), rel=1e-5
        )
        assert plain == pytest.approx(
            caption_loss_of(model, processor, vocab, samples, head, without), rel=1e-5
        )
    for b, (queries, _) in enumerate(with_prior):
        # Every matched query's cell touches its object here (small images, few objects).
        assert len(queries) == len(boxes[b])


class _FixedLastLayer:
    """A matcher for the test below: counts its calls and, for the decoder's layers, replaces the
    last layer's matching with a hand-built one (query i <-> target i), so a caption loss that
    matched on its own would read other queries."""

    def __init__(self) -> None:
        self.real = HungarianMatcher()
        self.cost_center = self.real.cost_center
        self.focal_alpha, self.focal_gamma = self.real.focal_alpha, self.real.focal_gamma
        self.calls = 0
        self.last_layer: list | None = None

    def match_layers(self, layers, targets, *, step=None, anchors=None, query_mask=None):
        self.calls += 1
        result = self.real.match_layers(
            layers, targets, step=step, anchors=anchors, query_mask=query_mask
        )
        if len(layers) > 1:  # the decoder, not the token stage
            n = [len(t) for t in targets]
            result[-1] = [(torch.arange(k), torch.arange(k)) for k in n]
            self.last_layer = result[-1]
        return result


def test_caption_loss_reuses_the_criterions_matching(processor, vocab, samples) -> None:
    """One matching per stage and step: the captions read the decoder's last-layer pairs the
    criterion returned (here a hand-built matching), not a matching of their own."""
    model = make_model(vocab).eval()
    batch = StandardDataCollator(151643)(samples)
    captions = CaptionTargets(processor.tokenizer, vocab, HEAD["caption_max_len"])
    matcher = _FixedLastLayer()
    with torch.no_grad():
        out = model(batch)
        result = MultiTaskLoss(LossWeights(), captions=captions, matcher=matcher)(model, out, batch)
        real = HungarianMatcher()(
            out.head.pred_logits, out.head.pred_boxes, [s.gt_boxes for s in samples]
        )
        assert any(
            not torch.equal(q, torch.arange(len(q))) for q, _ in real
        )  # a different matching
        expected = caption_loss_of(model, processor, vocab, samples, out.head, matcher.last_layer)
    assert matcher.calls == 2  # the decoder's layers and the token stage: none for the captions
    assert float(result.losses["caption"]) == pytest.approx(expected, rel=1e-5)


def test_caption_weight_zero_skips_the_caption_decoder(processor, vocab, samples) -> None:
    model = make_model(vocab)
    batch = PackedDataCollator()(samples)
    result = make_loss(processor, vocab, caption_weight=0.0)(model, model(batch), batch)
    assert "caption" not in result.losses


def test_every_parameter_gets_a_gradient(processor, vocab, samples) -> None:
    """No parameter is unused (DDP without find_unused_parameters), every group learns."""
    model = make_model(vocab)
    batch = PackedDataCollator()(samples)
    make_loss(processor, vocab)(model, model(batch), batch).total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    for group in GROUPS:
        norms = [
            float(p.grad.norm()) for n, p in model.named_parameters() if parameter_group(n) == group
        ]
        assert max(norms) > 0, group


# model options -> {case: (LossWeights fields, MultiTaskLoss options)}: one forward per model.
IDLE_CASES = {
    "default head": {
        "defaults": ({}, {}),
        "objectness_weight 0": ({"objectness_weight": 0.0}, {}),
        "token_aux off": ({}, {"token_aux": False}),
        "caption_weight 0": ({"caption_weight": 0.0}, {}),
        "box weights 0": ({"bbox_l1_weight": 0.0, "bbox_giou_weight": 0.0}, {}),
        "LM only": (
            {
                "objectness_weight": 0.0,
                "bbox_l1_weight": 0.0,
                "bbox_giou_weight": 0.0,
                "caption_weight": 0.0,
            },
            {},
        ),
    },
    "token boxes": {
        "defaults": ({}, {}),
        "token_aux off": ({}, {"token_aux": False}),
    },
    "text layer 1": {
        "defaults": ({}, {}),
        "no LM term": ({"teacher_weight": 0.0, "student_weight": 0.0}, {}),
    },
}
MODEL_OPTIONS = {
    "default head": {},
    "token boxes": {"token_boxes": True},
    "text layer 1": {"text_layer": 1},
}


@pytest.mark.parametrize("kind", IDLE_CASES)
def test_idle_parameters_are_exactly_those_without_a_gradient(
    processor, vocab, samples, kind
) -> None:
    """DDP needs find_unused_parameters exactly when some trainable parameter gets no gradient:
    `idle_parameters` names those of one backward, no more (that would cost every step a graph
    walk) and no fewer (the second step would fail on several devices)."""
    head = dict(MODEL_OPTIONS[kind])
    text_layer = head.pop("text_layer", -1)
    qwen = load_model("tiny", seed=0)
    torch.manual_seed(0)
    model = BBUModel.from_qwen(qwen, caption_vocab=vocab, text_layer=text_layer, **{**HEAD, **head})
    captions = CaptionTargets(processor.tokenizer, vocab, HEAD["caption_max_len"])
    batch = PackedDataCollator()(samples)
    output = model(batch)
    for case, (weights, options) in IDLE_CASES[kind].items():
        loss = MultiTaskLoss(LossWeights(**weights), captions=captions, **options)
        model.zero_grad(set_to_none=True)
        loss(model, output, batch).total.backward(retain_graph=True)
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert loss.idle_parameters(model) == missing, case
        assert bool(missing) == (case != "defaults"), case
    # Frozen groups are nobody's concern.
    build_param_groups(model, {g: (0.0 if g == "detection" else 1e-4) for g in GROUPS}, 0.0)
    assert not any(
        n.startswith("head.") and "adapter" not in n for n in loss.idle_parameters(model)
    )


def test_lm_max_tokens_draws_in_training_only(processor, vocab, samples) -> None:
    """eval_loss, the usual best-model metric, must be the full loss: a model in eval mode is
    scored on every answer token whatever lm_max_tokens says."""
    model = make_model(vocab)
    batch = PackedDataCollator()(samples)
    captions = CaptionTargets(processor.tokenizer, vocab, HEAD["caption_max_len"])
    full = MultiTaskLoss(LossWeights(), captions=captions)
    capped = MultiTaskLoss(LossWeights(), captions=captions, lm_max_tokens=3)
    with torch.no_grad():
        trained = capped(model, model(batch), batch, step=5)
        model.eval()
        output = model(batch)
        evaluated, reference = (
            capped(model, output, batch, step=5),
            full(model, output, batch, step=5),
        )
    assert float(trained.stats["teacher_tokens"] + trained.stats["student_tokens"]) == 3
    assert float(evaluated.stats["student_tokens"]) == float(reference.stats["student_tokens"]) > 3
    for key in ("teacher_lm", "student_lm"):
        assert float(evaluated.losses[key]) == float(reference.losses[key])


def test_batch_without_boxes_keeps_every_parameter_in_the_graph(processor, vocab, tmp_path) -> None:
    rectangles_set(tmp_path, 2)
    chat = ChatProcessor(processor, system_prompt="Find objects.", instruction="Detect.")
    empty = [
        chat.process_sample(Episode(student=Sample((f"{i}.png",), ())), tmp_path) for i in (0, 1)
    ]
    model = make_model(vocab)
    batch = PackedDataCollator()(empty)
    result = make_loss(processor, vocab)(model, model(batch), batch)
    assert result.stats["num_boxes"] == 1.0  # clamped
    assert float(result.losses["l1"].detach()) == float(result.losses["caption"].detach()) == 0.0
    assert float(result.losses["objectness"].detach()) > 0  # every query is background
    result.total.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_an_image_with_more_objects_than_queries_next_to_a_bigger_one(processor, vocab, tmp_path):
    """A 56x56 photo (4 vision tokens, so 4 queries) with 6 objects, batched with a 112x112 one
    (16 queries): its 12 padding queries are never matched, so the objectness terms stay small
    (a matched padding query, at logit -1e4, would cost about 2500 / num_boxes each)."""
    draw_colour = COLOURS["screw/install"]
    small = Image.new("RGB", (56, 56), (200, 200, 200))
    pen = ImageDraw.Draw(small)
    boxes = [(x, y, x + 10, y + 10) for x in (4, 22, 40) for y in (6, 34)]
    for box in boxes:
        pen.rectangle(box, fill=draw_colour)
    small.save(tmp_path / "small.png")
    Image.new("RGB", (112, 112), (200, 200, 200)).save(tmp_path / "big.png")
    objects = tuple(
        DetObject(b, "screw/install") for b in sorted(boxes, key=lambda b: (b[1], b[0]))
    )
    chat = ChatProcessor(processor, system_prompt="Find objects.", instruction="Detect.")
    episodes = [
        Episode(student=Sample(("small.png",), objects)),
        Episode(student=Sample(("big.png",), (DetObject((10, 10, 30, 30), "screw/install"),))),
    ]
    samples = [chat.process_sample(e, tmp_path) for e in episodes]
    model = make_model(vocab)
    batch = StandardDataCollator(151643)(samples)
    with torch.no_grad():
        out = model(batch)
        result = make_loss(processor, vocab)(model, out, batch)
    assert out.head.query_mask.sum(1).tolist() == [4, 16]
    assert out.head.token_mask.sum(1).tolist() == [4, 16]
    assert float(result.losses["objectness"]) < 10 and float(result.losses["objectness_token"]) < 10


def test_boxes_without_an_image_are_an_error(processor, vocab, samples) -> None:
    model = make_model(vocab)
    batch = PackedDataCollator()(samples)
    out = model(batch)
    batch["gt_boxes"] = [*batch["gt_boxes"], torch.rand(1, 4)]
    with pytest.raises(ValueError, match="no image"):
        make_loss(processor, vocab)(model, out, batch)


# ---- overfit ------------------------------------------------------------------------------------


def ap50(model: BBUModel, batch: dict, gt_boxes: list[torch.Tensor]) -> float:
    """Training-set AP at IoU 0.5 over all images: detections sorted by objectness, each matched
    greedily to the best unmatched GT of its image, all-point interpolated precision."""
    model.eval()
    with torch.no_grad():
        head = model(batch).head
    model.train()
    records: list[tuple[float, bool]] = []
    for b, gt in enumerate(gt_boxes):
        n = int(head.query_mask[b].sum())
        scores = head.pred_logits[b, :n].sigmoid()
        iou, _ = box_iou(cxcywh_to_xyxy(head.pred_boxes[b, :n]), cxcywh_to_xyxy(gt))
        used: set[int] = set()
        for q in scores.argsort(descending=True).tolist():
            free = [j for j in range(len(gt)) if j not in used]
            j = max(free, key=lambda j: float(iou[q, j]), default=None)
            hit = j is not None and float(iou[q, j]) >= 0.5
            if hit:
                used.add(j)
            records.append((float(scores[q]), hit))
    records.sort(key=lambda r: -r[0])
    hits = np.cumsum([hit for _, hit in records])
    precision = hits / np.arange(1, len(records) + 1)
    recall = hits / sum(len(g) for g in gt_boxes)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


def test_whole_model_overfits_a_handful_of_images(processor, vocab, tmp_path) -> None:
    samples = make_samples(processor, tmp_path, 5)
    gt_boxes = [s.gt_boxes for s in samples]
    batch = PackedDataCollator()(samples)
    # A wider, deeper head than the other tests' converges in fewer steps; the steps' CPU time is
    # almost all the LM loss over the real 152k vocabulary (~2.5 ms per answer token).
    model = make_model(vocab, width=128, layers=3, ffn=256)
    loss = make_loss(processor, vocab)
    groups = build_param_groups(model, dict.fromkeys(GROUPS, 2e-3), weight_decay=1e-4)
    optimizer = torch.optim.AdamW(groups, fused=True)

    before = ap50(model, batch, gt_boxes)
    start, history = time.perf_counter(), []
    for step in range(50):
        result = loss(model, model(batch), batch, step=step)
        optimizer.zero_grad()
        result.total.backward()
        optimizer.step()
        history.append(result.for_logging())
    after = ap50(model, batch, gt_boxes)
    first, last = history[0], history[-1]
    print(
        f"\noverfit: {sum(len(g) for g in gt_boxes)} boxes, {time.perf_counter() - start:.1f} s, "
        f"AP50 {before:.3f} -> {after:.3f}, "
        + ", ".join(
            f"{k} {first[k]:.3f} -> {last[k]:.3f}"
            for k in ("loss", "teacher_lm", "student_lm", "l1", "giou", "objectness", "caption")
        )
    )
    assert before < 0.2
    assert after >= 0.7
    assert last["loss"] < first["loss"] / 5
    for name in ("teacher_lm", "student_lm", "l1", "giou", "objectness", "caption"):
        assert last[name] < first[name] / 2, name


def test_token_boxes_add_one_to_many_box_losses_on_the_token_stage(
    processor, vocab, samples
) -> None:
    model = make_model(vocab, token_boxes=True)
    batch = PackedDataCollator()(samples)
    captions = CaptionTargets(processor.tokenizer, vocab, HEAD["caption_max_len"])
    output = model(batch)
    one = MultiTaskLoss(LossWeights(), captions=captions, token_matches=1)(model, output, batch)
    three = MultiTaskLoss(LossWeights(), captions=captions, token_matches=3)(model, output, batch)
    for key in ("l1_token", "giou_token", "objectness_token"):
        assert key in one.losses and torch.isfinite(one.losses[key])
    # Three tokens per target: the mean box loss takes in two more, worse, tokens per target. Were
    # the targets not repeated, the same pairs over a 3x num_boxes would give a third of it.
    assert float(three.losses["l1_token"]) > float(one.losses["l1_token"])
    three.total.backward()
    grads = [p.grad for n, p in model.named_parameters() if "token_box_head" in n]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads[-2:])
    with pytest.raises(ValueError, match="token_matches"):
        MultiTaskLoss(LossWeights(), token_matches=0)
