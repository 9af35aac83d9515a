"""The tiny Qwen2.5-VL trains on a real processed image, is seeded, round-trips through a folder;
the meta skeletons carry the real 3B/7B parameter names; bad paths are ModelErrors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from bbucli.chat.loading import load_processor
from bbucli.errors import ModelError
from bbucli.model.loading import load_model, meta_skeleton, tiny_config
from bbucli.model.varlen_attention import ATTN_VARLEN


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    """One user(image+text)/assistant sample: input_ids (1, S), labels, pixel_values, grid."""
    processor = load_processor()
    pixels = np.random.default_rng(0).integers(0, 256, size=(84, 112, 3), dtype=np.uint8)
    vision = processor.process_images([Image.fromarray(pixels)])
    n_tokens = int(vision["image_grid_thw"].prod()) // processor.merge_size**2
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Find every screw."}],
        },
        {"role": "assistant", "content": '[{"bbox_2d": [12, 34, 56, 78], "label": "screw"}]'},
    ]
    text = processor.apply_chat_template(messages).replace(
        "<|image_pad|>", "<|image_pad|>" * n_tokens
    )
    input_ids = processor.tokenizer(text, return_tensors="pt").input_ids
    labels = input_ids.masked_fill(input_ids == processor.image_token_id, -100)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": processor.mm_token_type_ids(input_ids),
        "pixel_values": vision["pixel_values"],
        "image_grid_thw": vision["image_grid_thw"],
        "labels": labels,
    }


def test_tiny_config_matches_the_real_ids_and_stays_small():
    config = tiny_config()
    text, vision = config.text_config, config.vision_config
    assert text.vocab_size == 151936 and text.hidden_size == 128 and text.num_hidden_layers == 2
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim == 32 and sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)
    assert (text.bos_token_id, text.eos_token_id) == (151643, 151645)
    assert text.use_cache is False  # packed rows leak across samples with a cache
    assert vision.depth == 2 and vision.hidden_size == 64 and vision.out_hidden_size == 128
    wider = tiny_config(hidden_size=256, num_hidden_layers=3, vision_config={"depth": 1})
    assert (wider.text_config.hidden_size, wider.text_config.num_hidden_layers) == (256, 3)
    assert (wider.vision_config.depth, wider.vision_config.out_hidden_size) == (1, 256)


def test_tiny_forward_backward_on_a_real_image(batch):
    model = load_model()
    assert (
        next(model.parameters()).dtype == torch.float32
        and model.config._attn_implementation == ATTN_VARLEN
    )
    start = time.perf_counter()
    out = model(**batch)
    out.loss.backward()
    elapsed = time.perf_counter() - start
    assert out.logits.shape == (*batch["input_ids"].shape, 151936)
    assert torch.isfinite(out.loss) and 10.0 < out.loss.item() < 14.0  # ~ln(151936) = 11.9 at init
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert (
        grads["model.visual.patch_embed.proj.weight"].abs().sum() > 0
    )  # the image reached the loss
    # mm_token_type_ids made the model use 3-D mRoPE: 12 vision tokens on a 3x4 grid span 4 positions.
    assert model.model.rope_deltas.tolist() == [[4 - 12]]
    print(f"tiny forward+backward {elapsed * 1000:.0f} ms, S={batch['input_ids'].shape[1]}")


def test_tiny_weights_follow_the_seed(batch):
    rng_before = torch.random.get_rng_state()
    first, again, other = load_model(seed=0), load_model(seed=0), load_model(seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is untouched
    a, b, c = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["model.visual.merger.mlp.0.weight"], c["model.visual.merger.mlp.0.weight"]
    )
    with torch.no_grad():
        assert first(**batch).loss.item() == again(**batch).loss.item()


def test_local_folder_round_trip(batch, tmp_path):
    model = load_model(seed=3)
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, dtype="fp32")
    assert loaded.training and loaded.config._attn_implementation == ATTN_VARLEN
    assert "sdpa_varlen" not in (tmp_path / "config.json").read_text()  # plain transformers loads it
    assert loaded.config.text_config.use_cache is False
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits)


EXPECTED_PREFIXES = {
    # (top-level prefix, number of decoder layers, embedding shape)
    "3b": ({"model.visual", "model.language_model"}, 36, (151936, 2048)),
    "7b": ({"model.visual", "model.language_model", "lm_head"}, 28, (152064, 3584)),
}


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_meta_skeleton_has_the_real_parameter_names(size):
    model = meta_skeleton(size)
    params = dict(model.named_parameters())
    prefixes, n_layers, embed_shape = EXPECTED_PREFIXES[size]
    top = {
        name.split(".")[0] if name.startswith("lm_head") else ".".join(name.split(".")[:2])
        for name in params
    }
    assert top == prefixes
    second = {".".join(name.split(".")[:3]) for name in params if name.startswith("model.")}
    assert second == {
        "model.visual.patch_embed",
        "model.visual.blocks",
        "model.visual.merger",
        "model.language_model.embed_tokens",
        "model.language_model.layers",
        "model.language_model.norm",
    }
    assert all(p.device.type == "meta" for p in params.values())
    assert params["model.language_model.embed_tokens.weight"].shape == embed_shape
    assert params["model.visual.patch_embed.proj.weight"].shape == (1280, 3, 2, 14, 14)
    assert f"model.language_model.layers.{n_layers - 1}.mlp.down_proj.weight" in params
    assert "model.visual.blocks.31.attn.qkv.weight" in params
    # 3B ties lm_head to the embedding: one parameter, two state_dict names.
    assert "lm_head.weight" in model.state_dict()
    billions = sum(p.numel() for p in params.values()) / 1e9
    assert billions == pytest.approx({"3b": 3.75, "7b": 8.29}[size], abs=0.01)


def test_bad_paths_and_options_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist") as info:
        load_model(tmp_path / "Qwen2.5-VL-3B-Instruct")
    assert "local Qwen2.5-VL" in info.value.hint
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    with pytest.raises(ModelError, match="cannot load the model"):
        load_model(tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="flash_attention_2 needs"):
            load_model(attn_implementation="flash_attention_2")
    with pytest.raises(ModelError, match="unknown attn_implementation"):
        load_model(attn_implementation="xformers")
    with pytest.raises(ModelError, match="unknown model size"):
        meta_skeleton("72b")  # type: ignore[arg-type]
