"""The image-only processor: round trip through save_pretrained, patch shapes, pixel limits, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from bbucli.chat.loading import VLProcessor, load_processor
from bbucli.chat.tokenizer import ADDED_TOKENS, FIRST_ADDED_ID, QWEN2_5_VL_CHAT_TEMPLATE
from bbucli.errors import ConfigError, ModelError
from bbucli.geometry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from tools.real_shape_checkpoint import PREPROCESSOR_CONFIG  # as published for 3B and 7B

MESSAGES = [
    {"role": "system", "content": "Find every screw."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Detect [x1, y1]."}]},
    {"role": "assistant", "content": '[{"bbox_2d": [12, 345, 67, 890], "label": "screw"}]'},
]


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def processor() -> VLProcessor:
    return load_processor()


def test_tiny_processor_defaults(processor):
    assert (processor.min_pixels, processor.max_pixels) == (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    assert (processor.image_token_id, processor.vision_start_id, processor.vision_end_id) == (
        151655,
        151652,
        151653,
    )
    assert (
        processor.patch_size,
        processor.merge_size,
        processor.image_processor.temporal_patch_size,
    ) == (14, 2, 2)
    text = processor.apply_chat_template(MESSAGES)
    assert (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Detect [x1, y1].<|im_end|>"
        in text
    )
    assert text.startswith("<|im_start|>system\nFind every screw.<|im_end|>\n")


def test_pixel_values_at_the_smart_resize_fixed_point(processor):
    # 112x84 is already a multiple of 28 inside the limits: no resize, a (1, 6, 8) patch grid.
    out = processor.process_images([noise_image(112, 84), noise_image(56, 56, seed=1)])
    assert out["image_grid_thw"].tolist() == [[1, 6, 8], [1, 4, 4]]
    assert out["image_grid_thw"].dtype == torch.int64
    assert tuple(out["pixel_values"].shape) == (
        1 * 6 * 8 + 1 * 4 * 4,
        1176,
    )  # 1176 = 3 * 2 * 14 * 14
    assert out["pixel_values"].dtype == torch.float32
    ids = processor.tokenizer(
        "<|image_pad|>" * (48 // processor.merge_size**2), return_tensors="pt"
    ).input_ids
    assert processor.mm_token_type_ids(ids).sum().item() == 12


@pytest.mark.parametrize(("width", "height"), [(20, 20), (30, 500), (3000, 2000), (1440, 1920)])
def test_min_and_max_pixels_are_respected(processor, width, height):
    grid = processor.process_images([noise_image(width, height)])["image_grid_thw"][0].tolist()
    pixels = grid[1] * 14 * grid[2] * 14
    assert processor.min_pixels <= pixels <= processor.max_pixels
    assert grid[1] % 2 == 0 and grid[2] % 2 == 0  # whole 28-pixel merge cells


def test_round_trip_through_save_pretrained(tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer

    original = load_processor(min_pixels=8 * 28 * 28, max_pixels=64 * 28 * 28)
    original.save_pretrained(tmp_path)
    assert {
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "chat_template.json",
    } <= {p.name for p in tmp_path.iterdir()}
    loaded = load_processor(tmp_path)
    assert (loaded.min_pixels, loaded.max_pixels) == (8 * 28 * 28, 64 * 28 * 28)
    assert loaded.chat_template == original.chat_template
    assert loaded.apply_chat_template(MESSAGES) == original.apply_chat_template(MESSAGES)
    text = original.apply_chat_template(MESSAGES)
    assert loaded.tokenizer(text).input_ids == original.tokenizer(text).input_ids
    image = noise_image(700, 500)
    for key, value in original.process_images([image]).items():
        assert loaded.process_images([image])[key].equal(value)

    # Plain transformers reads the same folder.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert tokenizer(text).input_ids == original.tokenizer(text).input_ids
    assert tokenizer.chat_template == original.chat_template
    image_processor = AutoImageProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert type(image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert (image_processor.size.shortest_edge, image_processor.size.longest_edge) == (
        8 * 28 * 28,
        64 * 28 * 28,
    )
    assert (
        json.loads((tmp_path / "chat_template.json").read_text())["chat_template"]
        == original.chat_template
    )


def real_tokenizer_config() -> dict:
    """Qwen/Qwen2.5-VL-7B-Instruct's tokenizer_config.json (written by transformers 4.x)."""
    added = {
        str(FIRST_ADDED_ID + i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": i < 14,
        }
        for i, token in enumerate(ADDED_TOKENS)
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": list(ADDED_TOKENS[1:14]),
        "bos_token": None,
        "chat_template": QWEN2_5_VL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def test_checkpoint_layout_keeps_its_own_limits_unless_overridden(processor, tmp_path):
    processor.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(real_tokenizer_config()))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    template = {"chat_template": processor.chat_template}
    (tmp_path / "chat_template.json").write_text(json.dumps(template))
    real = load_processor(tmp_path)
    assert (real.min_pixels, real.max_pixels) == (3136, 12845056)
    assert real.chat_template == processor.chat_template
    text = processor.apply_chat_template(MESSAGES)
    assert real.tokenizer(text).input_ids == processor.tokenizer(text).input_ids
    assert (real.tokenizer.eos_token_id, real.tokenizer.pad_token_id) == (151645, 151643)
    ids = real.tokenizer("<|im_start|>a<tool_call>").input_ids
    assert real.tokenizer.decode(ids, skip_special_tokens=True) == "a<tool_call>"
    capped = load_processor(tmp_path, max_pixels=DEFAULT_MAX_PIXELS)
    assert (capped.min_pixels, capped.max_pixels) == (3136, DEFAULT_MAX_PIXELS)
    grid = capped.process_images([noise_image(4000, 3000)])["image_grid_thw"][0]
    assert math.prod(grid.tolist()) * 196 <= DEFAULT_MAX_PIXELS


def test_missing_folder_or_files_are_model_errors(processor, tmp_path):
    with pytest.raises(ModelError, match="does not exist") as info:
        load_processor(tmp_path / "Qwen2.5-VL-7B-Instruct")
    assert "local Qwen2.5-VL" in info.value.hint
    with pytest.raises(ModelError, match="lacks tokenizer.json and preprocessor_config.json"):
        load_processor(tmp_path)
    processor.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="lacks preprocessor_config.json"):
        load_processor(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="no chat template"):
        load_processor(tmp_path)


def test_inconsistent_pixel_limits_are_config_errors():
    with pytest.raises(ConfigError, match="min_pixels <= max_pixels"):
        load_processor(min_pixels=64 * 28 * 28, max_pixels=8 * 28 * 28)
