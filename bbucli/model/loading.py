"""Building and loading Qwen2.5-VL: the random-weight tiny model, local checkpoints, meta skeletons.

Owns `tiny_config`, `load_model` and `meta_skeleton`, plus the published Qwen2.5-VL-3B/7B-Instruct
configs (written out here so tests can see real parameter names and shapes without weights).
Nothing here downloads: a checkpoint is a local folder, loaded with `local_files_only=True`.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bbucli.errors import ModelError
from bbucli.model.varlen_attention import ATTN_VARLEN, ATTN_WINDOWS, register_varlen_attention

if TYPE_CHECKING:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

ATTN_IMPLEMENTATIONS = (ATTN_VARLEN, "sdpa", "eager", "flash_attention_2")

# Text decoder of the tiny model: real vocabulary and special ids, toy widths. head_dim is
# hidden/heads = 32, so mrope_section must sum to 16. use_cache is off: with a cache the mask
# builder stops detecting packed rows and attention leaks across packed samples.
_TINY_TEXT: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "use_cache": False,
    "use_sliding_window": False,
    "max_window_layers": 2,
    "attention_dropout": 0.0,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 1000000.0,
        "mrope_section": [4, 6, 6],
    },
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
_TINY_VISION: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "hidden_act": "silu",
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
}
_SPECIAL_IDS: dict[str, int] = {
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
}

# config.json of Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct as published (flat layout of 4.x).
_VISION_3B_7B: dict[str, Any] = {
    "depth": 32,
    "hidden_act": "silu",
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_chans": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "spatial_patch_size": 14,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "temporal_patch_size": 2,
}
_COMMON_3B_7B: dict[str, Any] = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}
REAL_CONFIGS: dict[str, dict[str, Any]] = {
    "3b": {
        **_COMMON_3B_7B,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "max_window_layers": 70,
        "num_attention_heads": 16,
        "num_hidden_layers": 36,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        "vocab_size": 151936,
        "vision_config": {**_VISION_3B_7B, "out_hidden_size": 2048},
    },
    "7b": {
        **_COMMON_3B_7B,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "max_window_layers": 28,
        "num_attention_heads": 28,
        "num_hidden_layers": 28,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
        "vocab_size": 152064,
        "vision_config": {**_VISION_3B_7B, "out_hidden_size": 3584},
    },
}


def tiny_config(**overrides: Any) -> Qwen2_5_VLConfig:
    """A random-weight-sized Qwen2.5-VL config with the real vocabulary and special token ids.

    Keyword overrides: `vision_config={...}` updates the vision tower; names of top-level fields
    (`image_token_id`, `tie_word_embeddings`, ...) set those; any other name updates the text
    decoder (`num_hidden_layers=4`, `hidden_size=256`, ...). The vision `out_hidden_size` follows
    the text `hidden_size` unless given. Defaults: hidden 128, 2 layers, 4 heads, 2 KV heads,
    head_dim 32, vision depth 2 / hidden 64, tied embeddings (like 3B), text use_cache False.
    """
    from transformers import Qwen2_5_VLConfig

    overrides = dict(overrides)
    vision = {**_TINY_VISION, **overrides.pop("vision_config", {})}
    top = {"tie_word_embeddings": True, **_SPECIAL_IDS}
    for key in list(overrides):
        if key in top or key in ("dtype", "torch_dtype"):
            top[key] = overrides.pop(key)
    text = {**copy.deepcopy(_TINY_TEXT), **overrides}
    vision.setdefault("out_hidden_size", text["hidden_size"])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **top)


def load_model(
    path: str | Path = "tiny",
    *,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> Qwen2_5_VLForConditionalGeneration:
    """The Qwen2.5-VL model of `path`: "tiny" or a local checkpoint folder, in train mode.

    "tiny": `tiny_config()` with random weights drawn from `seed` (same seed, same weights; the
    global RNG is left untouched), fp32 on CPU unless `dtype` says otherwise. A folder: loaded with
    `from_pretrained(local_files_only=True)`, `dtype` default bf16 when CUDA is available else fp32,
    on CPU (the caller places it). `attn_implementation` default: "flash_attention_2" when
    flash_attn is importable, CUDA is available and the dtype is bf16/fp16; else "sdpa_varlen"
    (`bbucli.model.varlen_attention`: sdpa with per-sample attention in packed rows). With
    "sdpa" or "sdpa_varlen" the vision tower runs `ATTN_WINDOWS` (all its windows of one length
    in one sdpa call).
    """
    import torch

    resolved_dtype = _resolve_dtype(dtype, default=torch.float32 if str(path) == "tiny" else None)
    attn = _resolve_attention(attn_implementation, resolved_dtype)
    if str(path) == "tiny":
        from transformers import Qwen2_5_VLForConditionalGeneration

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2_5_VLForConditionalGeneration._from_config(
                tiny_config(), dtype=resolved_dtype, attn_implementation=attn
            )
    else:
        model = _load_folder(Path(path), resolved_dtype, attn)
    if attn in ("sdpa", ATTN_VARLEN):
        # The vision tower's windows batched per length (`ATTN_WINDOWS`); the text model keeps `attn`.
        model.set_attn_implementation({"vision_config": ATTN_WINDOWS})
    model.train()
    return model


def meta_skeleton(size: Literal["3b", "7b"] = "3b") -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL-3B/7B-Instruct built on the meta device: real names and shapes, no memory, no weights."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if size not in REAL_CONFIGS:
        raise ModelError(
            f"unknown model size {size!r}", hint=f"use one of {', '.join(REAL_CONFIGS)}"
        )
    config = Qwen2_5_VLConfig(**copy.deepcopy(REAL_CONFIGS[size]))
    with torch.device("meta"):
        return Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        )


def flash_attention_available() -> bool:
    """flash_attn importable and a CUDA device present."""
    import torch

    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def _load_folder(folder: Path, dtype: torch.dtype, attn: str) -> Qwen2_5_VLForConditionalGeneration:
    from transformers import Qwen2_5_VLForConditionalGeneration

    hint = "model.path must be 'tiny' or a local Qwen2.5-VL-3B/7B-Instruct folder (nothing is downloaded)"
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist", hint=hint)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} has no config.json", hint=hint)
    try:
        return Qwen2_5_VLForConditionalGeneration.from_pretrained(
            folder, local_files_only=True, dtype=dtype, attn_implementation=attn
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load the model in {folder}: {exc}", hint=hint) from exc


def _resolve_dtype(dtype: torch.dtype | str | None, default: torch.dtype | None) -> torch.dtype:
    import torch

    if dtype is None:
        if default is not None:
            return default
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype not in names:
        raise ModelError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(names)}")
    return names[dtype]


def _resolve_attention(requested: str | None, dtype: torch.dtype) -> str:
    import torch

    register_varlen_attention()
    if requested is None:
        half = dtype in (torch.bfloat16, torch.float16)
        return "flash_attention_2" if half and flash_attention_available() else ATTN_VARLEN
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ModelError(
            f"unknown attn_implementation {requested!r}",
            hint=f"use one of {', '.join(ATTN_IMPLEMENTATIONS)}",
        )
    if requested == "flash_attention_2" and not flash_attention_available():
        raise ModelError(
            "flash_attention_2 needs the flash-attn package and a CUDA GPU",
            hint="install flash-attn on the GPU node, or use attn_implementation=sdpa",
        )
    return requested
