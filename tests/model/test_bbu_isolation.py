"""BBUModel on the tiny Qwen2.5-VL: what never reaches the head (teacher pixels, answer tokens,
the other samples of a packed row), and padded, left-padded and packed batches giving the same head
outputs; packed rows hand their boundaries to flash-attention.

Each test runs under sdpa and eager attention, and once more with the text config's `use_cache`
on, as the published Qwen2.5-VL configs have it (the tiny config has it off): the model's forward
must turn the cache off itself, or packed samples attend to each other."""

from __future__ import annotations

import pytest
import torch

from bbucli.data.collators import StandardDataCollator
from bbucli.model.bbu_model import BBUModel
from tests.model.bbu_batches import (
    PAD,
    build_model,
    head_tensors,
    max_diff,
    packed,
    run,
    standard,
    with_new_answer,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(
    scope="module",
    params=[("sdpa", False), ("eager", False), ("sdpa", True)],
    ids=["sdpa", "eager", "sdpa-use_cache"],
)
def model(request, processor) -> BBUModel:
    attn, use_cache = request.param
    model = build_model(processor, attn)
    model.qwen.config.text_config.use_cache = use_cache
    return model


# ---- what never reaches the head -------------------------------------------------------------


def test_teacher_pixels_do_not_reach_the_vision_memory(model, samples) -> None:
    base = run(model, standard(samples["one"], samples["two"]))
    other = run(model, standard(samples["one"], samples["two_t2"]))
    assert torch.equal(base.vision_memory, other.vision_memory)
    # The teacher does reach the prompt's hidden states (the LM attends to it): the test can see.
    assert (base.text_memory[1] - other.text_memory[1]).abs().max() > 1e-3


@pytest.mark.parametrize("collate", [standard, packed])
def test_answer_tokens_never_reach_the_head(model, samples, collate) -> None:
    one, two = samples["one"], samples["two"]
    base = run(model, collate(one, two))
    changed = run(model, collate(with_new_answer(one), with_new_answer(two)))
    for row in (0, 1):
        assert max_diff(head_tensors(base, row), head_tensors(changed, row)) == 0.0
    # The LM does see the new answers.
    assert (base.hidden_states - changed.hidden_states).abs().max() > 1e-2


def test_answer_of_another_length_never_reaches_the_head(model, samples) -> None:
    base = run(model, packed(samples["one"], samples["two"]))
    other = samples["two_other_answer"]
    assert other.length != samples["two"].length
    changed = run(model, packed(samples["one"], other))
    for row in (0, 1):
        assert max_diff(head_tensors(base, row), head_tensors(changed, row)) <= 1e-6


def test_packed_samples_do_not_see_each_other(model, samples) -> None:
    base = run(model, packed(samples["one"], samples["two"]))
    changed = run(model, packed(samples["one_a2"], samples["two"]))
    assert max_diff(head_tensors(base, 0), head_tensors(changed, 0)) > 1e-3
    assert max_diff(head_tensors(base, 1), head_tensors(changed, 1)) <= 1e-6


def test_packed_head_outputs_equal_standard(model, samples, processor) -> None:
    bin_ = [samples["one"], samples["two"], samples["two_t2"]]
    pk = run(model, packed(*bin_))
    st = run(model, standard(*bin_))
    for row in range(3):
        assert max_diff(head_tensors(pk, row), head_tensors(st, row)) <= 1e-4
    starts = packed(*bin_)["cu_seqlens"].tolist()
    for row, sample in enumerate(bin_):
        piece = pk.hidden_states[0, starts[row] : starts[row + 1]]
        assert (piece - st.hidden_states[row, : sample.length]).abs().max() <= 1e-4


def test_left_padding_gives_the_same_head_outputs(model, samples) -> None:
    bin_ = [samples["one"], samples["two"]]
    right = run(model, standard(*bin_))
    left = run(model, StandardDataCollator(PAD, padding_side="left")(bin_))
    for row in range(2):
        assert max_diff(head_tensors(right, row), head_tensors(left, row)) <= 1e-4


def test_packed_rows_hand_their_boundaries_to_flash_attention(processor, samples) -> None:
    """flash-attn cannot run here: a probe registered as a flash-attention implementation checks
    that the packed row's cu_seqlens reach the attention function, then computes with sdpa."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    seen = []

    def probe(module, query, key, value, attention_mask, **kwargs):
        seen.append((kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("bbu_flash_probe", probe)
    AttentionMaskInterface.register("bbu_flash_probe", sdpa_mask)
    model = build_model(processor)
    model.qwen.set_attn_implementation({"text_config": "bbu_flash_probe"})
    batch = packed(samples["one"], samples["two"])
    run(model, batch)
    assert len(seen) == model.num_layers
    lengths = [samples["one"].length, samples["two"].length]
    for cu, longest in seen:
        assert cu.dtype == torch.int32 and torch.equal(cu, batch["cu_seqlens"])
        assert longest == max(lengths)
    seen.clear()
    run(model, standard(samples["one"], samples["two"]))  # padded rows: the mask says it all
    assert all(cu is None for cu, _ in seen)
