"""`sdpa_varlen`: packed rows attended sample by sample, no (L, L) mask, same numbers as sdpa;
and the vision tower's `ATTN_WINDOWS`: windows batched per length, same numbers as sdpa per window.

The bin and the single-sample references are those of tests/data/test_packing_equivalence.py (1-,
0- and 2-image samples). Each packed check runs twice: with the row's `cu_seq_lens_q` (what
BBUModel passes) and with only the position ids (a caller of the bare Qwen model).
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from bbucli.data.collators import PackedDataCollator, StandardDataCollator
from bbucli.model.bbu_model import BBUModel
from bbucli.model.loading import load_model
from bbucli.model.varlen_attention import (
    ATTN_VARLEN,
    ATTN_WINDOWS,
    varlen_kwargs,
    varlen_mask,
    windows_attention_forward,
)
from tests.data.test_packing_equivalence import (
    PAD,
    TOL,
    forward_packed,
    forward_single,
    perturbed,
    processor,  # noqa: F401  (fixture)
    samples,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", seed=0).eval()


def test_auto_attention_is_varlen_on_cpu(model) -> None:
    assert model.config.text_config._attn_implementation == ATTN_VARLEN
    assert model.config.vision_config._attn_implementation == ATTN_WINDOWS


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_vision_windows_follow_the_text_attention(attn) -> None:
    model = load_model("tiny", attn_implementation=attn)
    assert model.config.text_config._attn_implementation == attn
    expected = ATTN_WINDOWS if attn == "sdpa" else attn
    assert model.config.vision_config._attn_implementation == expected


def test_windows_equal_one_sdpa_call_per_window() -> None:
    """Windows of four lengths (one of them empty), in mixed order: each window's output is
    sdpa over that window alone, and the gradient flows back the same way."""
    torch.manual_seed(0)
    cu = torch.tensor([0, 64, 128, 176, 240, 240, 256, 320, 368], dtype=torch.int32)
    q, k, v = (torch.randn(1, 2, 368, 16, requires_grad=True) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = False
    out, _ = windows_attention_forward(
        module, q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu, scaling=0.25, dropout=0.0
    )
    assert out.shape == (1, 368, 2, 16)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    pieces = [
        torch.nn.functional.scaled_dot_product_attention(
            q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], scale=0.25
        ).transpose(1, 2)
        for s, e in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)
        if e > s
    ]
    reference = torch.cat(pieces, dim=1)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    (reference * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    for got, want in zip(grads, (q.grad, k.grad, v.grad), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_windows_without_boundaries_fall_back_to_sdpa() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = False
    out, _ = windows_attention_forward(module, q, k, v, None, scaling=0.25)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25)
    torch.testing.assert_close(out, want.transpose(1, 2), rtol=0, atol=1e-6)


class _CountSdpa(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_vision_tower_windows_equal_sdpa() -> None:
    """The tiny vision tower (a window block and a full-attention block) on three images, two
    sizes with edge windows: embeddings and input gradients as under plain sdpa, in 6 sdpa calls
    (4 window lengths, 2 image sizes) instead of one per window and image (22 + 3): transformers
    still hands the boundaries to an implementation named like ATTN_WINDOWS."""
    torch.manual_seed(0)
    model = load_model("tiny")
    grid = torch.tensor([[1, 18, 22], [1, 16, 16], [1, 18, 22]])
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 14 * 14, requires_grad=True)
    results = []
    for name in (ATTN_WINDOWS, "sdpa"):
        model.set_attn_implementation({"vision_config": name})
        pixels.grad = None
        with _CountSdpa() as counter:
            out = model.model.visual(pixels, grid_thw=grid).pooler_output
        out.square().sum().backward()
        results.append((out.detach(), pixels.grad.clone(), counter.calls))
    (out_w, grad_w, calls_w), (out_s, grad_s, calls_s) = results
    assert (calls_w, calls_s) == (6, 25)
    torch.testing.assert_close(out_w, out_s, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_w, grad_s, rtol=0, atol=1e-6)


@pytest.mark.parametrize("boundaries", ["cu_seqlens", "position_ids"])
def test_packed_row_equals_each_sample_alone(model, samples, boundaries) -> None:  # noqa: F811
    batch = PackedDataCollator()(samples)
    extra = (
        varlen_kwargs(batch["cu_seqlens"], torch.device("cpu"))
        if boundaries == "cu_seqlens"
        else {}
    )
    logits = forward_packed(model, batch, **extra)
    bounds = batch["cu_seqlens"].tolist()
    for sample, start, end in zip(samples, bounds[:-1], bounds[1:], strict=True):
        assert (logits[start:end] - forward_single(model, sample)).abs().max() <= TOL


@pytest.mark.parametrize("use_cache", [False, True])
def test_changing_one_sample_leaves_the_others_unchanged(model, samples, use_cache) -> None:  # noqa: F811
    """With a KV cache too: plain sdpa leaks there (test_packing_equivalence shows it); the varlen
    path takes its boundaries from the row, not from the mask builder."""
    batch = PackedDataCollator()(samples)
    changed = PackedDataCollator()([perturbed(samples[0]), *samples[1:]])
    base = forward_packed(model, batch, use_cache=use_cache)
    other = forward_packed(model, changed, use_cache=use_cache)
    first = int(batch["cu_seqlens"][1])
    assert (base[:first] - other[:first]).abs().max() > 1e-2
    assert (base[first:] - other[first:]).abs().max() <= 1e-5


def test_padded_batch_equals_sdpa(model, samples) -> None:  # noqa: F811
    """Padded batches keep sdpa's mask path: the same logits as attn_implementation="sdpa"."""
    reference = load_model("tiny", seed=0, attn_implementation="sdpa").eval()
    batch = StandardDataCollator(PAD)(samples)
    inputs = {
        key: batch[key]
        for key in ("input_ids", "attention_mask", "position_ids", "pixel_values", "image_grid_thw")
    }
    with torch.no_grad():
        ours, theirs = model(**inputs).logits, reference(**inputs).logits
    valid = batch["attention_mask"].bool()
    assert (ours[valid] - theirs[valid]).abs().max() <= TOL


def test_no_dense_mask_for_a_row_without_padding() -> None:
    row = torch.ones(1, 4096, dtype=torch.bool)
    assert varlen_mask(1, 4096, 4096, attention_mask=row) is None
    assert varlen_mask(1, 4096, 4096, attention_mask=None) is None
    padded = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    mask = varlen_mask(2, 4, 4, attention_mask=padded)
    assert mask is not None and mask.shape[-2:] == (4, 4)
    assert not bool(mask[0, 0, 1, 3]) and bool(mask[1, 0, 3, 0])


def test_bbu_model_packed_equals_padded(processor, samples) -> None:  # noqa: F811
    """The head and the hidden states, through BBUModel (which passes cu_seq_lens)."""
    from tests.model.bbu_batches import build_model, head_tensors

    bbu: BBUModel = build_model(processor, attn=ATTN_VARLEN).eval()
    assert bbu.qwen.config.text_config._attn_implementation == ATTN_VARLEN
    packed = PackedDataCollator()(samples)
    padded = StandardDataCollator(PAD)(samples)
    with torch.no_grad():
        row, rows = bbu(packed), bbu(padded)
    bounds = packed["cu_seqlens"].tolist()
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        length = end - start
        assert (row.hidden_states[0, start:end] - rows.hidden_states[i, :length]).abs().max() <= TOL
    assert row.head_samples.tolist() == rows.head_samples.tolist() == [0, 2]
    for k in range(2):
        ours, theirs = head_tensors(row, k), head_tensors(rows, k)
        for name, tensor in ours.items():
            assert (tensor - theirs[name]).abs().max() <= TOL, name
