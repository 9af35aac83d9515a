"""The head's pixel stem: the student image rebuilt from the processor's patches, RoI sampling on
the right lattice of the right image, and a head that reads both without depending on padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bbucli.chat.loading import load_processor
from bbucli.model.head import DetectionHead, HeadConfig
from bbucli.model.pixel_stem import STEM_STRIDE, roi_sample, student_pixels

PATCH = dict(patch_size=14, merge_size=2, temporal_patch_size=2)
HEAD = dict(llm_hidden=32, width=64, layers=2, heads=4, ffn=128, stem_width=8, roi_grid=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_student_pixels_undo_the_processor_patch_layout():
    """Two images of different sizes through the real Qwen2-VL image processor; taken back in the
    other order, each is its own pixels (un-normalised) with zeros where the canvas pads it."""
    image_processor = load_processor("tiny").image_processor
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((308, 224), (84, 140))]
    out = image_processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 22, 16], [1, 6, 10]]  # not resized

    canvas, sizes = student_pixels(out["pixel_values"], out["image_grid_thw"], [1, 0], **PATCH)
    assert canvas.shape == (2, 3, 308, 224) and sizes.tolist() == [[84, 140], [308, 224]]
    mean = torch.tensor(image_processor.image_mean)[:, None, None]
    std = torch.tensor(image_processor.image_std)[:, None, None]
    for row, array in zip((1, 0), arrays, strict=True):
        h, w = array.shape[:2]
        rebuilt = (canvas[row, :, :h, :w] * std + mean) * 255
        expected = torch.from_numpy(array).permute(2, 0, 1).float()
        assert (rebuilt - expected).abs().max() < 1e-3
    assert canvas[0, :, 84:].abs().max() == 0 and canvas[0, :, :, 140:].abs().max() == 0


def test_roi_sample_reads_the_lattice_over_each_box_of_its_own_image():
    """Features that hold their own pixel coordinates (a linear ramp, which bilinear sampling
    reproduces exactly): the samples are the lattice points over the box, mapped through the
    image's share of the canvas."""
    canvas_h, canvas_w = 80, 100
    hf, wf = canvas_h // STEM_STRIDE, canvas_w // STEM_STRIDE
    ys, xs = torch.meshgrid(
        (torch.arange(hf) + 0.5) * STEM_STRIDE,
        (torch.arange(wf) + 0.5) * STEM_STRIDE,
        indexing="ij",
    )
    features = torch.stack((xs, ys))[None].expand(2, -1, -1, -1)
    # Image 0 fills the canvas; image 1 is 60 x 40 pixels in its top-left corner.
    extent = torch.tensor([[1.0, 1.0], [0.6, 0.5]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.3]], [[0.5, 0.5, 0.2, 0.3]]])
    got = roi_sample(features, boxes, extent, grid=2, expand=1.0).view(2, 1, 4, 2)
    # Image 1: centre (30, 20) px, box 12 x 12 px, lattice at +-1/4 of the box.
    assert torch.allclose(got[1, 0, :, 0], torch.tensor([27.0, 33.0, 27.0, 33.0]), atol=1e-4)
    assert torch.allclose(got[1, 0, :, 1], torch.tensor([17.0, 17.0, 23.0, 23.0]), atol=1e-4)
    # Image 0: centre (50, 40) px, box 20 x 24 px; expand 1.5 spreads the lattice.
    got = roi_sample(features, boxes, extent, grid=2, expand=1.5).view(2, 1, 4, 2)
    assert torch.allclose(got[0, 0, :, 0], torch.tensor([42.5, 57.5, 42.5, 57.5]), atol=1e-4)
    assert torch.allclose(got[0, 0, :, 1], torch.tensor([31.0, 31.0, 49.0, 49.0]), atol=1e-4)


def head_inputs(grids, text_lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_vis, n_txt, b = max(h * w for h, w in grids), max(text_lens), len(grids)
    vision, text = torch.zeros(b, n_vis, 32), torch.zeros(b, n_txt, 32)
    vmask = torch.zeros(b, n_vis, dtype=torch.bool)
    tmask = torch.zeros(b, n_txt, dtype=torch.bool)
    sizes = torch.tensor([(h * 28, w * 28) for h, w in grids])
    pixels = torch.zeros(b, 3, int(sizes[:, 0].max()), int(sizes[:, 1].max()))
    for i, ((h, w), t) in enumerate(zip(grids, text_lens, strict=True)):
        vision[i, : h * w] = torch.randn(h * w, 32, generator=g)
        vmask[i, : h * w] = True
        text[i, :t] = torch.randn(t, 32, generator=g)
        tmask[i, :t] = True
        pixels[i, :, : h * 28, : w * 28] = torch.randn(3, h * 28, w * 28, generator=g)
    return (vision, vmask, torch.tensor(grids), text, tmask), pixels, sizes


def make_head(**overrides) -> DetectionHead:
    torch.manual_seed(0)
    return DetectionHead(HeadConfig(**{**HEAD, **overrides})).eval()


@pytest.mark.parametrize("token_boxes", [False, True])
def test_head_with_a_stem_does_not_depend_on_padding_or_the_other_image(token_boxes):
    head = make_head(token_boxes=token_boxes)
    (vision, vmask, grid, text, tmask), pixels, sizes = head_inputs([(3, 4), (5, 6)], [5, 9])
    both = head(vision, vmask, grid, text, tmask, pixels=pixels, pixel_hw=sizes)
    alone = head(
        vision[:1, :12],
        vmask[:1, :12],
        grid[:1],
        text[:1, :5],
        tmask[:1, :5],
        pixels=pixels[:1, :, :84, :112],
        pixel_hw=sizes[:1],
    )
    for batched, single in zip(both.boxes + both.logits, alone.boxes + alone.logits, strict=True):
        assert (batched[0, :12] - single[0]).abs().max() < 1e-5
    assert (both.token_logits[0, :12] - alone.token_logits[0]).abs().max() < 1e-5


def test_head_boxes_follow_the_pixels_inside_them():
    """Changing the pixels of one corner cell moves the outputs of the queries there and leaves
    the token stage of a far cell alone; the stem and its projection get gradient."""
    head = make_head(token_boxes=True).train()
    with torch.no_grad():  # the box corrections start at zero; move them as training would
        for layer in (head.token_box_head.layers[-1], head.decoder.box_head.layers[-1]):
            layer.weight.normal_(std=0.05)
    inputs, pixels, sizes = head_inputs([(4, 4)], [3])
    base = head(*inputs, pixels=pixels, pixel_hw=sizes)
    changed_pixels = pixels.clone()
    changed_pixels[0, :, :28, :28] += 3.0
    changed = head(*inputs, pixels=changed_pixels, pixel_hw=sizes)
    assert (base.token_boxes[0, 0] - changed.token_boxes[0, 0]).abs().max() > 1e-4
    assert (base.token_boxes[0, 15] - changed.token_boxes[0, 15]).abs().max() < 1e-6
    assert (base.token_logits[0, 0] - changed.token_logits[0, 0]).abs() > 1e-4
    assert (base.token_logits[0, 15] - changed.token_logits[0, 15]).abs() < 1e-6
    assert (base.pred_boxes[0, 0] - changed.pred_boxes[0, 0]).abs().max() > 1e-4

    (sum(b.sum() for b in base.boxes[1:]) + base.token_logits.sum()).backward()
    for prefix in ("pixel_stem.", "roi_proj."):
        grads = [p.grad for n, p in head.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), prefix


def test_head_with_a_stem_needs_the_pixels():
    head = make_head()
    inputs, _, _ = head_inputs([(2, 2)], [3])
    with pytest.raises(ValueError, match="pixel stem"):
        head(*inputs)


def test_each_decoder_layer_reads_at_its_own_reference_box():
    """The decoder calls the reader once per layer: layer 0 at the initial reference, layer k at
    layer k-1's (detached) box, and what it reads changes the queries."""
    from bbucli.model.decoder import RefiningDecoder

    torch.manual_seed(0)
    decoder = RefiningDecoder(width=32, layers=3, heads=4, ffn=64, dropout=0.0, prior_prob=0.01)
    with torch.no_grad():  # move the box corrections away from their zero start
        decoder.box_head.layers[-1].weight.normal_(std=0.1)
    queries, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    reference = torch.rand(2, 5, 4) * 0.5 + 0.25
    masks = torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 7, dtype=torch.bool)
    read_at = []

    def reader(boxes):
        read_at.append(boxes)
        return boxes.sum(-1, keepdim=True).expand(-1, -1, 32)

    _, boxes, hidden = decoder(
        queries, reference, masks[0], memory, memory * 0, masks[1], roi=reader
    )
    assert len(read_at) == 3
    assert torch.equal(read_at[0], reference)
    for k in (1, 2):
        assert torch.equal(read_at[k], boxes[k - 1]) and not read_at[k].requires_grad
    _, _, plain = decoder(queries, reference, masks[0], memory, memory * 0, masks[1])
    assert (hidden - plain).abs().max() > 1e-3
