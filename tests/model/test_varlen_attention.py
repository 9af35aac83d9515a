"""`sdpa_varlen`: packed rows attended sample by sample, no (L, L) mask, same numbers as sdpa.

The bin and the single-sample references are those of tests/data/test_packing_equivalence.py (1-,
0- and 2-image samples). Each packed check runs twice: with the row's `cu_seq_lens_q` (what
BBUModel passes) and with only the position ids (a caller of the bare Qwen model).
"""

from __future__ import annotations

import pytest
import torch

from bbucli.data.collators import PackedDataCollator, StandardDataCollator
from bbucli.model.bbu_model import BBUModel
from bbucli.model.loading import load_model
from bbucli.model.varlen_attention import ATTN_VARLEN, varlen_kwargs, varlen_mask
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
    assert model.config.vision_config._attn_implementation == ATTN_VARLEN


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
