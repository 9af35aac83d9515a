"""Our per-sample mRoPE ids equal transformers' `Qwen2_5_VLModel.get_rope_index`."""

from __future__ import annotations

import pytest
import torch

from bbucli.chat.loading import load_processor
from bbucli.chat.rope import image_token_runs, mrope_position_ids
from bbucli.errors import DataError
from bbucli.model.loading import load_model

IMAGE, VSTART, VEND = 151655, 151652, 151653
MERGE = 2


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", seed=0).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return load_processor("tiny").tokenizer


def build(
    tokenizer, texts: list[str], grids: list[tuple[int, int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """text0 <vs> pads(grid0) <ve> text1 ... -> (input_ids (S,), image_grid_thw (T, 3))."""
    ids: list[int] = []
    for i, text in enumerate(texts):
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if i < len(grids):
            t, h, w = grids[i]
            ids += [VSTART] + [IMAGE] * (t * h * w // MERGE**2) + [VEND]
    return torch.tensor(ids), torch.tensor(grids, dtype=torch.long).reshape(-1, 3)


def reference(model, input_ids: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, int]:
    position_ids, deltas = model.model.get_rope_index(
        input_ids[None],
        mm_token_type_ids=(input_ids == IMAGE).int()[None],
        image_grid_thw=grid if len(grid) else None,
    )
    return position_ids[:, 0], int(deltas.flatten()[0])


@pytest.mark.parametrize(
    ("texts", "grids"),
    [
        (["<|im_start|>user\nno image at all, 1234 digits<|im_end|>"], []),
        (["<|im_start|>user\n", "detect<|im_end|>\n<|im_start|>assistant\n[]"], [(1, 6, 4)]),
        (["sys", "a teacher", "the student answer 12 34"], [(1, 4, 12), (1, 16, 6)]),
        (["", "image first and last", ""], [(1, 8, 8), (1, 2, 2)]),
    ],
    ids=["0-images", "1-image", "2-images", "images-at-edges"],
)
def test_equals_get_rope_index(model, tokenizer, texts, grids) -> None:
    input_ids, grid = build(tokenizer, texts, grids)
    ours, delta = mrope_position_ids(input_ids, grid, MERGE, IMAGE, vision_start_id=VSTART)
    ref, ref_delta = reference(model, input_ids, grid)
    assert ours.shape == (3, input_ids.shape[0]) and ours.dtype == torch.long
    assert torch.equal(ours, ref)
    assert delta == ref_delta


def test_image_grid_layout() -> None:
    # 5 text tokens, a 2x3 merged grid (h=4, w=6 patches), 2 text tokens.
    input_ids = torch.tensor([1] * 4 + [VSTART] + [IMAGE] * 6 + [VEND, 2])
    ids, delta = mrope_position_ids(input_ids, torch.tensor([[1, 4, 6]]), MERGE, IMAGE)
    assert ids[:, :5].tolist() == [[0, 1, 2, 3, 4]] * 3
    assert ids[0, 5:11].tolist() == [5] * 6
    assert ids[1, 5:11].tolist() == [5, 5, 5, 6, 6, 6]
    assert ids[2, 5:11].tolist() == [5, 6, 7, 5, 6, 7]
    assert ids[:, 11:].tolist() == [[8, 9]] * 3  # continues at 5 + max(2, 3)
    assert delta == 10 - 13


def test_adjacent_images_split_by_their_grids() -> None:
    input_ids = torch.tensor([VSTART] + [IMAGE] * 4 + [IMAGE] * 1 + [VEND])
    ids, _ = mrope_position_ids(input_ids, torch.tensor([[1, 4, 4], [1, 2, 2]]), MERGE, IMAGE)
    assert ids[:, 5].tolist() == [3, 3, 3]  # second image starts after the first's 2x2 grid
    assert image_token_runs(input_ids, IMAGE) == [(1, 6)]


def test_mismatched_grids_raise() -> None:
    input_ids = torch.tensor([VSTART] + [IMAGE] * 5 + [VEND])
    with pytest.raises(DataError, match="needs 6 image tokens"):
        mrope_position_ids(input_ids, torch.tensor([[1, 4, 6]]), MERGE, IMAGE)
    with pytest.raises(DataError, match="only 0 image grid"):
        mrope_position_ids(input_ids, None, MERGE, IMAGE)
    with pytest.raises(DataError, match="image tokens for only 1"):
        mrope_position_ids(input_ids[:6], torch.tensor([[1, 2, 10], [1, 2, 2]]), MERGE, IMAGE)
    with pytest.raises(DataError, match="vision_start"):
        mrope_position_ids(
            torch.tensor([IMAGE] * 5), torch.tensor([[1, 2, 10]]), MERGE, IMAGE, VSTART
        )
