"""Packed == unpacked on the tiny Qwen2.5-VL (fp32, CPU, sdpa and eager), and packing does not leak.

A packed row must give every sample the logits and per-token losses it gets when run alone. The bin
mixes samples with 0, 1 and 2 images. The leak tests change one sample and watch the next; they
also show that the naive form, (3, 1, L) mRoPE ids without the text row, and a forward with a KV
cache both let attention cross samples, so these tests would notice a transformers change that
silently stops isolating packed samples. Every test runs once more on a model whose text config
has `use_cache` on, as the published Qwen2.5-VL configs do (the tiny one has it off).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bbucli.chat.loading import load_processor
from bbucli.chat.processor import ChatProcessor, ChatProcessorOutput
from bbucli.data.collators import PackedDataCollator, StandardDataCollator
from bbucli.model.loading import load_model
from bbucli.schema import DetObject, Episode, Sample
from tests.model.bbu_batches import text_only_sample as text_only

TOL = 1e-4
PAD = 151643


@pytest.fixture(scope="module")
def processor():
    return load_processor("tiny")


def text_only_sample(processor) -> ChatProcessorOutput:
    """A 0-image sample (`tests/model/bbu_batches.py` builds it like ChatProcessor's output)."""
    return text_only(processor, "No image this time, answer with an empty list.")


@pytest.fixture(scope="module")
def samples(processor, tmp_path_factory) -> list[ChatProcessorOutput]:
    """A bin of 1-image, 0-image and 2-image samples (in that order)."""
    root: Path = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a.png": (56, 84), "b.png": (112, 56)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    cp = ChatProcessor(processor, system_prompt="Find objects.", instruction="Detect.")
    one = cp.process_sample(
        Episode(student=Sample(("a.png",), (DetObject((1, 2, 30, 40), "a/b"),))), root
    )
    two = cp.process_sample(
        Episode(
            student=Sample(
                ("b.png",), (DetObject((3, 4, 50, 50), "c/d"), DetObject((60, 5, 99, 44), "a/b"))
            ),
            teachers=(Sample(("a.png",), (DetObject((2, 2, 20, 20), "c/d"),)),),
        ),
        root,
    )
    return [one, text_only_sample(processor), two]


@pytest.fixture(
    scope="module",
    params=[("sdpa", False), ("eager", False), ("sdpa", True)],
    ids=["sdpa", "eager", "sdpa-use_cache"],
)
def model(request):
    """The tiny model (its text config has use_cache off), and once with use_cache on as in the
    published Qwen2.5-VL configs: packing must not depend on the checkpoint's flag."""
    attn, use_cache = request.param
    model = load_model("tiny", seed=0, attn_implementation=attn).eval()
    model.config.text_config.use_cache = use_cache
    assert model.config.text_config._attn_implementation == attn
    return model


def forward_single(model, sample: ChatProcessorOutput) -> torch.Tensor:
    batch = StandardDataCollator(PAD)([sample])
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
        )
    return out.logits[0]


def forward_packed(
    model, batch: dict, position_ids: torch.Tensor | None = None, **kwargs
) -> torch.Tensor:
    """Logits (L, V) of a packed row; `labels=` in kwargs returns (logits, the model's loss)."""
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"] if position_ids is None else position_ids,
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
            use_cache=kwargs.pop("use_cache", batch["use_cache"]),
            **kwargs,
        )
    return (out.logits[0], out.loss) if "labels" in kwargs else out.logits[0]


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(S, V) logits, (S,) labels -> (S - 1,) next-token cross entropy, 0 where ignored."""
    return F.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=-100, reduction="none")


def perturbed(sample: ChatProcessorOutput) -> ChatProcessorOutput:
    """The same sample with its first prompt tokens after <|im_start|> replaced (same length)."""
    ids = sample.input_ids.clone()
    ids[1:6] = torch.tensor([9707, 1879, 11, 1045, 13])
    return replace(sample, input_ids=ids)


@pytest.fixture(scope="module")
def singles(model, samples) -> list[torch.Tensor]:
    """Each sample's logits when run alone, (S_i, V)."""
    return [forward_single(model, s) for s in samples]


@pytest.fixture(scope="module")
def packed(model, samples) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The packed bin, its logits (L, V) and the model's own loss on its labels."""
    batch = PackedDataCollator()(samples)
    return batch, *forward_packed(model, batch, labels=batch["labels"])


@pytest.fixture(scope="module")
def changed(samples) -> dict:
    """The bin with its first sample perturbed."""
    return PackedDataCollator()([perturbed(samples[0]), *samples[1:]])


def test_bin_mixes_image_counts(samples) -> None:
    assert [s.image_grid_thw.shape[0] for s in samples] == [1, 0, 2]


def test_packed_logits_and_losses_equal_unpacked(model, samples, singles, packed) -> None:
    batch, packed_logits, row_loss = packed
    packed_losses = token_losses(packed_logits, batch["labels"][0])
    bounds = batch["cu_seqlens"].tolist()
    single_losses = [
        token_losses(logits, s.labels) for logits, s in zip(singles, samples, strict=True)
    ]
    for logits, losses, start, end in zip(
        singles, single_losses, bounds[:-1], bounds[1:], strict=True
    ):
        assert (packed_logits[start:end] - logits).abs().max() <= TOL
        # positions start..end-2 predict the sample's own tokens; end-1 predicts the next sample's
        # first token, whose label the collator masked.
        assert (losses > 0).sum() > 0
        assert (packed_losses[start : end - 1] - losses).abs().max() <= TOL
        assert packed_losses[end - 1 : end].sum() == 0
    # The model's own mean loss over the row == the token-weighted mean of the samples' losses.
    counts = sum(int((s.labels[1:] != -100).sum()) for s in samples)
    assert abs(float(row_loss) - float(sum(t.sum() for t in single_losses)) / counts) <= TOL


def test_standard_batch_equals_unpacked(model, samples, singles) -> None:
    batch = StandardDataCollator(PAD, padding_side="right")(samples)
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
        ).logits
    for i, (s, single) in enumerate(zip(samples, singles, strict=True)):
        assert (logits[i, : s.length] - single).abs().max() <= TOL


def test_changing_one_sample_leaves_the_others_unchanged(model, packed, changed) -> None:
    batch, base, _ = packed
    other = forward_packed(model, changed)
    first = int(batch["cu_seqlens"][1])
    assert (
        base[:first] - other[:first]
    ).abs().max() > 1e-2  # the change is visible in its own sample
    assert (base[first:] - other[first:]).abs().max() <= 1e-5


def test_naive_packing_leaks(model, packed, changed) -> None:
    """Without the text-position row, or with a KV cache, the same check fails: the test is sensitive."""
    batch, _, _ = packed
    first = int(batch["cu_seqlens"][1])
    naive = forward_packed(model, batch, position_ids=batch["position_ids"][1:])
    naive_changed = forward_packed(model, changed, position_ids=changed["position_ids"][1:])
    assert (naive[first:] - naive_changed[first:]).abs().max() > 1e-2
    cached = forward_packed(model, batch, use_cache=True)
    cached_changed = forward_packed(model, changed, use_cache=True)
    assert (cached[first:] - cached_changed[first:]).abs().max() > 1e-2


def test_a_config_with_use_cache_leaks_unless_the_batch_turns_it_off(
    model, packed, changed
) -> None:
    """The collator's `use_cache: False` is what isolates the samples under a config with the
    cache on (the published one): left to the config default, the same forward leaks."""
    batch, base, _ = packed
    first = int(batch["cu_seqlens"][1])
    assert batch["use_cache"] is False and changed["use_cache"] is False
    default = forward_packed(model, batch, use_cache=None)
    default_changed = forward_packed(model, changed, use_cache=None)
    spread = float((default[first:] - default_changed[first:]).abs().max())
    if model.config.text_config.use_cache:
        assert spread > 1e-2
    else:
        assert spread <= 1e-5 and (default - base).abs().max() <= 1e-5
