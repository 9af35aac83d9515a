"""DetectionHead on plain tensors: shapes, padding invariance, token-anchored queries, init,
gradients, parameter names, and an overfit run that the head must win."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bbucli.errors import ConfigError
from bbucli.model.caption_vocab import EOS, PAD
from bbucli.model.decoder import PAD_LOGIT
from bbucli.model.head import DetectionHead, HeadConfig, parameter_group

pytestmark = pytest.mark.usefixtures("one_thread")


D = 32
SMALL = dict(llm_hidden=D, width=64, layers=3, heads=4, ffn=128, caption_vocab_size=20)


def make_head(**overrides) -> DetectionHead:
    torch.manual_seed(0)
    return DetectionHead(HeadConfig(**{**SMALL, **overrides})).eval()


def make_batch(grids, text_lens, seed=0, dim=D):
    """Random merger tokens for images of merged grids `grids`, prompts of `text_lens` tokens,
    padded at the end as the collator pads them."""
    g = torch.Generator().manual_seed(seed)
    n_vis, n_txt = max(h * w for h, w in grids), max(text_lens)
    b = len(grids)
    vision = torch.zeros(b, n_vis, dim)
    vision_mask = torch.zeros(b, n_vis, dtype=torch.bool)
    text = torch.zeros(b, n_txt, dim)
    text_mask = torch.zeros(b, n_txt, dtype=torch.bool)
    for i, ((h, w), t) in enumerate(zip(grids, text_lens, strict=True)):
        vision[i, : h * w] = torch.randn(h * w, dim, generator=g)
        vision_mask[i, : h * w] = True
        text[i, :t] = torch.randn(t, dim, generator=g)
        text_mask[i, :t] = True
    return vision, vision_mask, torch.tensor(grids), text, text_mask


def cell_centres(h: int, w: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack(((cols.flatten() + 0.5) / w, (rows.flatten() + 0.5) / h), dim=-1)


def test_shapes_for_mixed_image_sizes_and_prompt_lengths():
    head = make_head()
    grids, lens = [(3, 4), (5, 6), (2, 2)], [5, 9, 1]
    batch = make_batch(grids, lens)
    out = head(*batch, caption_targets=torch.full((3, 30, 7), PAD))
    assert len(out.logits) == len(out.boxes) == 3
    for logits, boxes in zip(out.logits, out.boxes, strict=True):
        assert logits.shape == (3, 30) and boxes.shape == (3, 30, 4)
        assert ((boxes >= 0) & (boxes <= 1)).all()
        assert (logits[~out.query_mask] == PAD_LOGIT).all()
    assert out.hidden.shape == (3, 30, 64)
    assert out.caption_logits.shape == (3, 30, 7, 20)
    assert out.query_mask.sum(1).tolist() == [12, 30, 4]
    # Valid queries first, in token order.
    for b, n in enumerate([12, 30, 4]):
        assert out.query_mask[b, :n].all() and not out.query_mask[b, n:].any()
        assert out.query_index[b, :n].tolist() == list(range(n))
    assert out.token_logits.shape == (3, 30) and out.token_boxes.shape == (3, 30, 4)
    assert out.pred_boxes is out.boxes[-1]


@pytest.mark.parametrize("max_queries", [300, 20])
def test_outputs_do_not_depend_on_padding_or_the_other_images(max_queries):
    """Image 0 batched next to a bigger image (more tokens, longer prompt) == image 0 alone.
    With max_queries=20 the batch takes the top-K path (image 1 has 30 tokens), alone it does not."""
    head = make_head(max_queries=max_queries)
    vision, vmask, grid, text, tmask = make_batch([(3, 4), (5, 6)], [5, 9])
    targets = torch.randint(0, 20, (2, min(30, max_queries), 6))
    both = head(vision, vmask, grid, text, tmask, caption_targets=targets)
    alone = head(
        vision[:1, :12],
        vmask[:1, :12],
        grid[:1],
        text[:1, :5],
        tmask[:1, :5],
        caption_targets=targets[:1, :12],
    )
    pairs = [(both.hidden, alone.hidden), (both.caption_logits, alone.caption_logits)]
    pairs += list(zip(both.logits, alone.logits, strict=True))
    pairs += list(zip(both.boxes, alone.boxes, strict=True))
    for batched, single in pairs:
        assert (batched[0, :12] - single[0]).abs().max() < 1e-5
    assert torch.equal(both.query_index[0, :12], alone.query_index[0])
    assert (both.token_logits[0, :12] - alone.token_logits[0]).abs().max() < 1e-5


def test_top_k_keeps_the_best_scoring_tokens_in_grid_order():
    head = make_head(max_queries=10)
    out = head(*make_batch([(6, 8), (2, 3)], [4, 4]))
    assert out.logits[-1].shape == (2, 10)
    expected = out.token_logits[0].topk(10).indices.sort().values
    assert torch.equal(out.query_index[0], expected)
    assert out.query_mask[0].all() and out.query_mask[1].tolist() == [True] * 6 + [False] * 4
    assert torch.allclose(out.reference_boxes[0, :, :2], cell_centres(6, 8)[expected])
    assert torch.equal(out.query_index[1, :6], torch.arange(6))


def test_initial_boxes_are_the_token_cells_and_layer0_outputs_them_exactly():
    head = make_head(ref_cells=2.0)
    out = head(*make_batch([(4, 5), (3, 7)], [3, 6]))
    for b, (h, w) in enumerate([(4, 5), (3, 7)]):
        n = h * w
        ref = out.reference_boxes[b, :n]
        # One query per cell, tiling the grid, each two cells wide and high.
        assert torch.allclose(ref[:, :2], cell_centres(h, w))
        assert torch.allclose(ref[:, 2:], torch.tensor([2 / w, 2 / h]).expand(n, 2))
        assert torch.allclose(out.token_boxes[b, :n, 2:], torch.tensor([1 / w, 1 / h]).expand(n, 2))
        # The box head's last layer starts at zero: no correction yet, at any layer.
        for boxes in out.boxes:
            assert (boxes[b, :n] - ref).abs().max() < 1e-6


def test_objectness_starts_at_the_prior():
    head = make_head(width=256, heads=8, ffn=1024, prior_prob=0.01)
    out = head(*make_batch([(8, 11)] * 4, [20] * 4))
    for logits in (*out.logits, out.token_logits):
        prob = torch.sigmoid(logits).mean().item()
        assert 0.005 < prob < 0.02, prob


def test_gradient_reaches_adapters_decoder_and_caption_decoder():
    head = make_head(max_queries=10).train()
    vision, vmask, grid, text, tmask = make_batch([(4, 4), (2, 3)], [5, 3])
    targets = torch.randint(0, 20, (2, 10, 5))
    out = head(vision, vmask, grid, text, tmask, caption_targets=targets)
    loss = sum(logit.sum() for logit in out.logits) + sum(b.sum() for b in out.boxes)
    loss = loss + out.token_logits[vmask].sum()
    loss = loss + F.cross_entropy(out.caption_logits.flatten(0, 2), targets.flatten())
    loss.backward()
    grads = {n: p.grad for n, p in head.named_parameters()}
    # Behind the zero-initialised last box layer the box MLP gets no gradient until it moves.
    silent = {n for n in grads if n.startswith("decoder.box_head.layers.") and ".2." not in n}
    for name, grad in grads.items():
        if name not in silent:
            assert grad is not None and grad.abs().sum() > 0, name
    for prefix in ("vision_adapter.", "language_adapter.", "decoder.layers.2.", "caption_decoder."):
        assert any(n.startswith(prefix) for n in grads)


def test_parameter_names_split_cleanly_into_adapter_and_detection():
    head = make_head()
    groups = {n: parameter_group(n) for n, _ in head.named_parameters()}
    adapter = {n for n, g in groups.items() if g == "adapter"}
    assert adapter and all(
        n.split(".")[0] in {"vision_adapter", "language_adapter"} for n in adapter
    )
    roots = {n.split(".")[0] for n, g in groups.items() if g == "detection"}
    assert roots == {
        "token_score_head",
        "query_embed",
        "memory_type_embed",
        "decoder",
        "caption_decoder",
    }


def test_builds_on_the_meta_device_at_7b_size():
    with torch.device("meta"):
        head = DetectionHead(HeadConfig(llm_hidden=3584, caption_vocab_size=500))
    assert sum(p.numel() for p in head.parameters()) > 0


def test_invalid_config_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        HeadConfig(llm_hidden=0, width=30, heads=8, prior_prob=1.5)
    message = str(err.value)
    assert "llm_hidden" in message and "width 30" in message and "prior_prob" in message


def test_mask_that_disagrees_with_the_grid_is_rejected():
    head = make_head()
    vision, vmask, grid, text, tmask = make_batch([(3, 4)], [2])
    with pytest.raises(ValueError, match="grid_h"):
        head(vision, vmask, torch.tensor([[3, 3]]), text, tmask)


def test_generate_captions_is_batched_over_queries():
    head = make_head()
    out = head(*make_batch([(2, 3), (2, 2)], [2, 2]))
    captions = head.generate_captions(out.hidden, max_len=5)
    assert captions.shape == (2, 6, 5)
    with torch.no_grad():
        head.caption_decoder.out.bias[EOS] = 1e3
    assert (head.generate_captions(out.hidden, max_len=5)[..., 0] == EOS).all()


def test_overfits_a_few_images():
    """4 images; a few tokens per image carry a shared "object" signal and have a box near their
    cell; everything else is background. Nearest-reference assignment (the matcher is not needed
    when every target lies in its own token's cell), L1 on every layer + objectness BCE."""
    torch.manual_seed(0)
    head = DetectionHead(
        HeadConfig(llm_hidden=D, width=64, layers=2, heads=4, ffn=128, caption_vocab_size=0)
    )
    grids = [(6, 8), (5, 7), (7, 6), (4, 8)]
    vision, vmask, grid, text, tmask = make_batch(grids, [6, 4, 8, 5], seed=1)
    g = torch.Generator().manual_seed(2)
    signal = torch.randn(D, generator=g)
    target_boxes, matched = [], []
    for b, (h, w) in enumerate(grids):
        tokens = torch.randperm(h * w, generator=g)[:3]
        vision[b, tokens] += 3 * signal
        centres = cell_centres(h, w)[tokens]
        jitter = (torch.rand(3, 2, generator=g) - 0.5) * 0.6 / torch.tensor([w, h])
        sizes = (1.0 + torch.rand(3, 2, generator=g)) / torch.tensor([w, h])
        target_boxes.append(torch.cat((centres + jitter, sizes), dim=1))
        matched.append(tokens)

    def assign(out):
        """Each target to the query whose reference centre is nearest."""
        idx = []
        for b, boxes in enumerate(target_boxes):
            dist = torch.cdist(boxes[:, :2], out.reference_boxes[b, :, :2])
            dist[:, ~out.query_mask[b]] = math.inf
            idx.append(dist.argmin(dim=1))
        return idx

    def l1(boxes, idx):
        return torch.stack(
            [
                (boxes[b, q] - t).abs().mean()
                for b, (q, t) in enumerate(zip(idx, target_boxes, strict=True))
            ]
        ).mean()

    with torch.no_grad():
        start = head(vision, vmask, grid, text, tmask)
    assert l1(start.pred_boxes, assign(start)) > 0.04  # the references alone do not fit

    opt = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(200):
        out = head(vision, vmask, grid, text, tmask)
        idx = assign(out)
        obj_target = torch.zeros_like(out.query_mask, dtype=torch.float32)
        for b, q in enumerate(idx):
            obj_target[b, q] = 1.0
        loss = 0.0
        for logits, boxes in zip(out.logits, out.boxes, strict=True):
            bce = F.binary_cross_entropy_with_logits(logits, obj_target, reduction="none")
            loss = loss + 5 * l1(boxes, idx) + bce[out.query_mask].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    head.eval()
    with torch.no_grad():
        out = head(vision, vmask, grid, text, tmask)
    idx = assign(out)
    assert all(
        torch.equal(q.sort().values, t.sort().values) for q, t in zip(idx, matched, strict=True)
    )
    assert l1(out.pred_boxes, idx) < 0.02
    for b, q in enumerate(idx):
        top = out.pred_logits[b].topk(3).indices
        assert set(top.tolist()) == set(q.tolist())


def test_token_boxes_start_at_the_anchors_and_feed_the_queries():
    """Two-stage: every token predicts a box (trainable), starting exactly at its ref_cells box,
    and each query's reference is its token's predicted box, detached."""
    from bbucli.model.anchors import token_cell_boxes

    head = make_head(token_boxes=True).train()
    vision, vmask, grids, text, tmask = make_batch([(3, 4), (2, 2)], [5, 3])
    out = head(vision, vmask, grids, text, tmask)
    anchors = token_cell_boxes(grids, vision.shape[1], cells=head.config.ref_cells)
    valid = vmask[..., None].expand_as(anchors)
    torch.testing.assert_close(out.token_boxes[valid], anchors[valid], atol=1e-4, rtol=0)  # eps of inverse_sigmoid
    assert out.token_boxes.requires_grad and not out.reference_boxes.requires_grad
    expected = out.token_boxes.gather(1, out.query_index[..., None].expand(-1, -1, 4))
    torch.testing.assert_close(out.reference_boxes, expected.detach())
    # A step on a box loss moves the token boxes (the head learns proposals).
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    target = torch.tensor([0.3, 0.3, 0.1, 0.1])
    for _ in range(3):
        loss = (head(vision, vmask, grids, text, tmask).token_boxes[0, 0] - target).abs().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = head(vision, vmask, grids, text, tmask)
    assert (moved.token_boxes[0, 0] - target).abs().sum() < (out.token_boxes[0, 0] - target).abs().sum()
    assert parameter_group("token_box_head.layers.0.weight") == "detection"


def test_without_token_boxes_the_token_stage_is_the_cells():
    head = make_head()
    assert head.token_box_head is None
    vision, vmask, grids, text, tmask = make_batch([(2, 3)], [4])
    out = head(vision, vmask, grids, text, tmask)
    assert not out.token_boxes.requires_grad
