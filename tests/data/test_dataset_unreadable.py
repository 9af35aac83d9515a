"""A sample whose image header reads but whose pixels do not (a truncated JPEG): EpisodeDataset
gives an UnreadableSample, SkipUnreadable drops it from the batch and lists it, and a batch with
nothing readable is made of the first readable sample (every rank still takes the step)."""

from __future__ import annotations

import pytest

from bbucli.chat.loading import load_processor
from bbucli.chat.processor import ChatProcessor, ChatProcessorOutput
from bbucli.chat.prompts import build_prompts
from bbucli.convert.pipeline import ConvertOptions, convert_dataset
from bbucli.data.collators import PackedDataCollator
from bbucli.data.dataset import EpisodeDataset, SkipUnreadable, UnreadableSample, unreadable_limit
from bbucli.demo.synthetic import generate_raw_set
from bbucli.errors import DataError
from bbucli.schema import read_episodes
from bbucli.taxonomy import Taxonomy

MAX_PIXELS = 16 * 28 * 28


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> EpisodeDataset:
    """Three train episodes (one teacher pool image), the first student's image truncated."""
    root = tmp_path_factory.mktemp("dataset_unreadable")
    generate_raw_set(root / "raw", 4, size=(256, 352), exif_rotated_every=0)
    options = ConvertOptions(val_ratio=0.0, pool=1, max_pixels=MAX_PIXELS)
    convert_dataset(root / "raw", root / "data" / "bbu.jsonl", options)
    episodes = read_episodes(root / "data" / "bbu.jsonl")
    first = root / "data" / episodes[0].student.image
    raw = first.read_bytes()
    first.write_bytes(raw[: len(raw) // 2])
    prompts = build_prompts(Taxonomy.load().descs("zh"), "zh")
    chat = ChatProcessor(
        load_processor("tiny", max_pixels=MAX_PIXELS),
        system_prompt=prompts.system,
        instruction=prompts.instruction,
    )
    return EpisodeDataset(episodes, chat, root / "data", num_teachers=0)


def test_an_undecodable_image_is_an_unreadable_sample(dataset):
    item = dataset[0]
    assert isinstance(item, UnreadableSample)
    assert item.image == dataset.current[0].student.image
    assert item.reason.startswith(f"cannot decode image {dataset.image_root / item.image}")
    assert "image file is truncated" in item.reason
    assert isinstance(dataset[1], ChatProcessorOutput)


def test_skip_unreadable_drops_and_lists_it(dataset):
    collate = SkipUnreadable(PackedDataCollator(), dataset)
    batch = collate([dataset[0], dataset[1]])
    assert batch["cu_seqlens"].tolist() == [0, dataset[1].length]
    assert batch["unreadable"] == ((dataset[0].image, dataset[0].reason),)
    assert "unreadable" not in collate([dataset[1], dataset[2]])


def test_a_batch_with_nothing_readable_trains_on_the_first_readable_sample(dataset):
    batch = SkipUnreadable(PackedDataCollator(), dataset)([dataset[0]])
    assert batch["input_ids"][0].tolist() == dataset[1].input_ids.tolist()
    assert [image for image, _ in batch["unreadable"]] == [dataset[0].image]


def test_no_readable_sample_at_all_is_a_data_error(dataset):
    only_bad = EpisodeDataset(
        dataset.current[:1], dataset.processor, dataset.image_root, num_teachers=0
    )
    with pytest.raises(DataError, match=r"train: no sample of 1 has readable images"):
        only_bad.stand_in()


def test_the_limit_is_ten_or_one_percent():
    assert [unreadable_limit(n) for n in (0, 12, 1000, 1099, 5000)] == [10, 10, 10, 10, 50]
