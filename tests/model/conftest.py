"""Fixtures of the BBUModel tests (test_bbu_model.py, test_bbu_isolation.py): the tiny processor,
random images, processed episodes and the tiny model under sdpa and eager attention. What they are
built from: bbu_batches.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bbucli.chat.loading import load_processor
from bbucli.chat.processor import ChatProcessor, ChatProcessorOutput
from bbucli.model.bbu_model import BBUModel
from tests.model.bbu_batches import SIZES, build_model, episode


@pytest.fixture(scope="module")
def processor():
    return load_processor("tiny")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (w, h) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def chat(processor) -> ChatProcessor:
    return ChatProcessor(processor, system_prompt="Find objects.", instruction="Detect.")


@pytest.fixture(scope="module")
def samples(chat, root) -> dict[str, ChatProcessorOutput]:
    """one: a.png alone; two: b.png after teacher t.png; two_t2: the same with teacher t2.png
    (other pixels); one_a2: a.png swapped for a2.png (other pixels, same size)."""
    two_boxes = ((3, 4, 50, 50), (60, 5, 99, 44))
    return {
        "one": chat.process_sample(episode("a.png"), root),
        "one_a2": chat.process_sample(episode("a2.png"), root),
        "two": chat.process_sample(episode("b.png", "t.png", two_boxes), root),
        "two_t2": chat.process_sample(episode("b.png", "t2.png", two_boxes), root),
        "two_other_answer": chat.process_sample(episode("b.png", "t.png", ((7, 9, 11, 13),)), root),
    }


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, processor) -> BBUModel:
    return build_model(processor, request.param)
