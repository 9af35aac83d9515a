"""Standard (padded) and packed collators: shapes, padding sides, span alignment, packed layout."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bbucli.chat.loading import load_processor
from bbucli.chat.processor import ChatProcessor
from bbucli.data.collators import PackedDataCollator, StandardDataCollator
from bbucli.model.loading import load_model
from bbucli.schema import DetObject, Episode, Sample

PAD = 151643


@pytest.fixture(scope="module")
def processor():
    return load_processor("tiny")


@pytest.fixture(scope="module")
def samples(processor, tmp_path_factory):
    """Three processed episodes of different lengths: 1, 2 and 3 images."""
    root: Path = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a.png": (56, 84), "b.png": (84, 56), "c.png": (56, 56)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)

    def s(name: str, *boxes) -> Sample:
        return Sample((name,), tuple(DetObject(b, "a/b/c") for b in boxes))

    episodes = [
        Episode(student=s("a.png", (1, 2, 30, 40))),
        Episode(
            student=s("b.png", (3, 4, 50, 50), (5, 6, 7, 8)), teachers=(s("c.png", (1, 1, 9, 9)),)
        ),
        Episode(student=s("c.png"), teachers=(s("a.png", (2, 2, 4, 4)), s("b.png"))),
    ]
    cp = ChatProcessor(processor, system_prompt="Find objects.", instruction="Detect.")
    return [cp.process_sample(e, root) for e in episodes]


@pytest.mark.parametrize("side", ["right", "left"])
def test_standard_padding_keeps_everything_aligned(samples, side: str) -> None:
    batch = StandardDataCollator(PAD, padding_side=side)(samples)
    width = max(s.length for s in samples)
    for key in ("input_ids", "attention_mask", "labels", "segment", "mm_token_type_ids"):
        assert batch[key].shape == (3, width), key
    assert batch["position_ids"].shape == (3, 3, width)
    for i, s in enumerate(samples):
        offset = width - s.length if side == "left" else 0
        real = slice(offset, offset + s.length)
        assert torch.equal(batch["input_ids"][i, real], s.input_ids)
        assert torch.equal(batch["position_ids"][:, i, real], s.position_ids)
        assert (
            batch["attention_mask"][i].sum() == s.length and batch["attention_mask"][i, real].all()
        )
        pads = batch["attention_mask"][i] == 0
        assert (batch["input_ids"][i, pads] == PAD).all() and (
            batch["segment"][i, pads] == -1
        ).all()
        assert (batch["labels"][i, pads] == -100).all() and (
            batch["position_ids"][:, i, pads] == 1
        ).all()
        # labels exist exactly on answer tokens, also after padding
        assert torch.equal(batch["labels"][i] != -100, batch["segment"][i] > 0)
        first_student = int(torch.nonzero(batch["segment"][i] == 2)[0])
        assert batch["prompt_end"][i] == first_student == s.prompt_end + offset
    assert torch.equal(batch["pixel_values"], torch.cat([s.pixel_values for s in samples]))
    assert torch.equal(batch["image_grid_thw"], torch.cat([s.image_grid_thw for s in samples]))
    assert [b.shape for b in batch["gt_boxes"]] == [(1, 4), (2, 4), (0, 4)]
    assert batch["gt_descs"][1] == ("a/b/c", "a/b/c")


def test_left_padded_positions_equal_get_rope_index(samples) -> None:
    batch = StandardDataCollator(PAD, padding_side="left")(samples)
    model = load_model("tiny").eval()
    ref, _ = model.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    real = batch["attention_mask"].bool()
    assert torch.equal(batch["position_ids"][:, real], ref[:, real])


def test_left_padding_puts_every_prompt_end_at_the_same_generation_point(
    samples, processor
) -> None:
    # Generation batches hold prompts only: cut each sample at prompt_end, then left-pad.
    prompts = [
        replace(
            s,
            input_ids=s.input_ids[: s.prompt_end],
            labels=s.labels[: s.prompt_end],
            segment=s.segment[: s.prompt_end],
            mm_token_type_ids=s.mm_token_type_ids[: s.prompt_end],
            position_ids=s.position_ids[:, : s.prompt_end],
        )
        for s in samples
    ]
    batch = StandardDataCollator(PAD, padding_side="left")(prompts)
    assert (batch["prompt_end"] == batch["input_ids"].shape[1]).all()
    tail = processor.tokenizer.decode(batch["input_ids"][0, -3:])
    assert tail == "<|im_start|>assistant\n"


def test_packed_row_layout(samples) -> None:
    batch = PackedDataCollator()(samples)
    lengths = [s.length for s in samples]
    total = sum(lengths)
    assert batch["cu_seqlens"].dtype == torch.int32
    assert batch["cu_seqlens"].tolist() == [0, lengths[0], lengths[0] + lengths[1], total]
    for key in ("input_ids", "labels", "segment", "mm_token_type_ids"):
        assert batch[key].shape == (1, total), key
    assert "attention_mask" not in batch and batch["use_cache"] is False
    position_ids = batch["position_ids"]
    assert position_ids.shape == (4, 1, total)
    starts = batch["cu_seqlens"][:-1].tolist()
    for s, start in zip(samples, starts, strict=True):
        row = slice(start, start + s.length)
        assert torch.equal(position_ids[0, 0, row], torch.arange(s.length))
        assert torch.equal(position_ids[1:, 0, row], s.position_ids)
        assert torch.equal(batch["input_ids"][0, row], s.input_ids)
        assert torch.equal(batch["segment"][0, row], s.segment)
        assert torch.equal(batch["labels"][0, start + 1 : start + s.length], s.labels[1:])
        assert batch["labels"][0, start] == -100
    assert batch["prompt_end"].tolist() == [
        st + s.prompt_end for st, s in zip(starts, samples, strict=True)
    ]
    for pe in batch["prompt_end"].tolist():
        assert batch["segment"][0, pe] == 2 and batch["segment"][0, pe - 1] == 0
    assert torch.equal(batch["pixel_values"], torch.cat([s.pixel_values for s in samples]))
    assert batch["image_grid_thw"].shape == (6, 3)


def test_first_label_is_masked_even_when_it_is_an_answer_token(samples) -> None:
    s = samples[0]
    answer_first = replace(s, labels=s.input_ids.clone())
    batch = PackedDataCollator()([answer_first, answer_first])
    assert batch["labels"][0, 0] == -100 and batch["labels"][0, s.length] == -100
    assert (batch["labels"][0, 1 : s.length] != -100).all()


def test_bad_calls() -> None:
    with pytest.raises(ValueError, match="padding_side"):
        StandardDataCollator(PAD, padding_side="middle")
    with pytest.raises(ValueError, match="empty"):
        StandardDataCollator(PAD)([])
    with pytest.raises(ValueError, match="empty"):
        PackedDataCollator()([])


def _spans_point_at_the_same_tokens(batch, row_of, samples) -> None:
    """Each sample's moved spans select, in its batch row, the tokens its own spans select."""
    for i, s in enumerate(samples):
        ids = batch["input_ids"][row_of(i)]
        start, end = batch["student_image_span"][i].tolist()
        turn, prompt_end = int(batch["student_turn_start"][i]), int(batch["prompt_end"][i])
        own_start, own_end = s.student_image_span
        assert end - start == own_end - own_start > 0
        assert torch.equal(ids[start:end], s.input_ids[own_start:own_end])
        assert torch.equal(ids[turn:prompt_end], s.input_ids[s.student_turn_start : s.prompt_end])
        # The sample's student image is its last grid, found in the batch's concatenated grids.
        k = int(batch["student_image"][i])
        assert torch.equal(batch["image_grid_thw"][k], s.image_grid_thw[-1])
        assert end - start == int(batch["image_grid_thw"][k].prod()) // 4


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_moves_the_student_spans_with_their_sample(samples, side: str) -> None:
    batch = StandardDataCollator(PAD, padding_side=side)(samples)
    _spans_point_at_the_same_tokens(batch, lambda i: i, samples)
    if side == "left":  # the shorter samples moved right: the offsets were needed
        assert batch["student_turn_start"].tolist() != [s.student_turn_start for s in samples]
    assert batch["student_image"].tolist() == [0, 2, 5]


def test_packing_moves_the_student_spans_with_their_sample(samples) -> None:
    bin_ = list(reversed(samples))  # 3, 2 and 1 images
    batch = PackedDataCollator()(bin_)
    _spans_point_at_the_same_tokens(batch, lambda i: 0, bin_)
    starts = batch["cu_seqlens"][:-1].long()
    own = torch.tensor([s.student_image_span[0] for s in bin_])
    assert torch.equal(batch["student_image_span"][:, 0] - starts, own) and starts[1:].all()
    assert batch["student_image"].tolist() == [2, 4, 5]
