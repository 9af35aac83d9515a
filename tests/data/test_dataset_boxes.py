"""EpisodeDataset refuses boxes past their stored image (counted, images named); a box ending on
the image's edge is inside."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from bbucli.chat.loading import load_processor
from bbucli.chat.processor import ChatProcessor
from bbucli.chat.prompts import build_prompts
from bbucli.convert.pipeline import ConvertOptions, convert_dataset
from bbucli.data.dataset import EpisodeDataset
from bbucli.demo.synthetic import generate_raw_set
from bbucli.errors import DataError
from bbucli.schema import DetObject, Episode, read_episodes
from bbucli.taxonomy import Taxonomy

MAX_PIXELS = 64 * 28 * 28


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataset_boxes")
    generate_raw_set(root / "raw", 3, size=(448, 616), exif_rotated_every=0)
    options = ConvertOptions(val_ratio=0.0, pool=1, max_pixels=MAX_PIXELS)
    convert_dataset(root / "raw", root / "data" / "bbu.jsonl", options)
    return root / "data"


@pytest.fixture(scope="module")
def chat() -> ChatProcessor:
    prompts = build_prompts(Taxonomy.load().descs("zh"), "zh")
    return ChatProcessor(
        load_processor("tiny", max_pixels=MAX_PIXELS),
        system_prompt=prompts.system,
        instruction=prompts.instruction,
        max_tokens=None,
    )


def with_student_box(episode: Episode, box: tuple[int, int, int, int]) -> Episode:
    first = DetObject(box, episode.student.objects[0].desc)
    student = dataclasses.replace(episode.student, objects=(first, *episode.student.objects[1:]))
    return dataclasses.replace(episode, student=student)


def size_of(data: Path, episode: Episode) -> tuple[int, int]:
    with Image.open(data / episode.student.image) as image:
        return image.size


def test_a_box_past_the_image_is_refused_with_a_count(data, chat):
    episodes = read_episodes(data / "bbu.jsonl")
    width, height = size_of(data, episodes[0])
    bad = [with_student_box(episodes[0], (0, 0, 5000, 5000)), *episodes[1:]]
    bad[-1] = with_student_box(bad[-1], (0, 0, 10, size_of(data, bad[-1])[1] + 1))
    with pytest.raises(DataError) as info:
        EpisodeDataset(bad, chat, data, num_teachers=0)
    message = info.value.message
    assert message.startswith("train: 2 box(es) outside their image, in 2 image(s): ")
    assert f"1 box(es) outside the {width}x{height} image {episodes[0].student.image}" in message
    assert "[0, 0, 5000, 5000]" in message and "bbu inspect" in info.value.hint


def test_a_teacher_pool_box_past_its_image_is_refused_when_redrawing(data, chat):
    episodes = read_episodes(data / "bbu.jsonl")
    pool = [e.student for e in read_episodes(data / "bbu.teachers.jsonl")]
    bad_pool = [with_student_box(Episode(student=pool[0]), (0, 0, 5000, 10)).student, *pool[1:]]
    EpisodeDataset(episodes, chat, data, teacher_pool=bad_pool, resample=False)  # never drawn
    with pytest.raises(DataError, match="1 box"):
        EpisodeDataset(episodes, chat, data, teacher_pool=bad_pool, resample=True)


def test_a_box_ending_on_the_image_edge_is_inside(data, chat):
    episodes = read_episodes(data / "bbu.jsonl")
    width, height = size_of(data, episodes[0])
    edge = [with_student_box(episodes[0], (0, 0, width, height)), *episodes[1:]]
    dataset = EpisodeDataset(edge, chat, data, num_teachers=0)
    assert len(dataset) == len(edge)
