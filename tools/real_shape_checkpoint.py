"""A local folder laid out like a downloaded Qwen2.5-VL-3B/7B-Instruct, at the real widths but with
few layers and random weights, for tests and benchmarks that must see the real shapes without the
real download (nothing is fetched; the tokenizer is the offline Qwen2.5 one of `bbucli`).

    python -m tools.real_shape_checkpoint OUT [--size 3b|7b] [--layers 1] [--vision-depth 1]

What the folder holds, file by file as in the published repositories:
- `config.json`: the published config (`bbucli.model.loading.REAL_CONFIGS`), flat transformers-4.x
  layout, `use_cache: true`, `torch_dtype: bfloat16`, with `num_hidden_layers` = `layers` and
  vision `depth` = `vision_depth` (the full-attention block indexes kept where they fall inside
  the cut tower; otherwise its last block, as the real tower ends with one);
- `model-0000K-of-0000N.safetensors` + `model.safetensors.index.json`: bf16 weights under the
  published (pre-5.x) parameter names, `model.layers.*`, `model.embed_tokens.*`, `visual.*`,
  `lm_head.weight` only when the embeddings are untied (7B), so loading goes through the
  key renaming of transformers as a real download does;
- `generation_config.json` (sampling and a 1.05 repetition penalty, as shipped);
- `tokenizer.json`, `tokenizer_config.json` (transformers' `save_pretrained` of the Qwen2.5
  tokenizer: the real 151,643-token vocabulary and the 22 added tokens at their ids),
  `chat_template.json`, `preprocessor_config.json` (max_pixels 12845056, as shipped).

3B at one layer and one vision block: about 450M parameters (the 151936 x 2048 embedding is 311M),
about 0.9 GB on disk, written in about 15 s and 1.9 GB of RAM on two CPU cores.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from bbucli.chat.tokenizer import QWEN2_5_VL_CHAT_TEMPLATE, load_tokenizer
from bbucli.model.loading import REAL_CONFIGS

__all__ = [
    "GENERATION_CONFIG",
    "PREPROCESSOR_CONFIG",
    "real_shape_config",
    "write_real_shape_folder",
]

#: preprocessor_config.json of Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct as published.
PREPROCESSOR_CONFIG: dict[str, Any] = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}
#: generation_config.json as published: sampling settings a greedy decoder must override.
GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05,
    "temperature": 0.1,
    "top_p": 0.001,
    "top_k": 1,
    "transformers_version": "4.49.0",
}
# Parameter-name prefixes of transformers 5.x -> the published checkpoints' (transformers 4.49).
_PUBLISHED_PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."))
_SHARD_BYTES = 400 * 1024 * 1024


def real_shape_config(
    size: str = "3b", *, layers: int = 1, vision_depth: int = 1
) -> dict[str, Any]:
    """config.json of Qwen2.5-VL-`size`-Instruct with `layers` decoder layers and a vision tower of
    `vision_depth` blocks; every width, id and flag as published."""
    if size not in REAL_CONFIGS:
        raise ValueError(f"unknown size {size!r}: use one of {', '.join(REAL_CONFIGS)}")
    if layers < 1 or vision_depth < 1:
        raise ValueError(f"layers and vision_depth must be >= 1, got {layers}, {vision_depth}")
    config = copy.deepcopy(REAL_CONFIGS[size])
    config["num_hidden_layers"] = layers
    vision = config["vision_config"]
    full = [i for i in vision["fullatt_block_indexes"] if i < vision_depth]
    vision["depth"] = vision_depth
    vision["fullatt_block_indexes"] = full or [vision_depth - 1]
    config["transformers_version"] = "4.41.2"
    return config


def write_real_shape_folder(
    path: str | Path,
    size: str = "3b",
    layers: int = 1,
    vision_depth: int = 1,
    *,
    seed: int = 0,
) -> Path:
    """Write the folder described in the module docstring into `path` (created; files there are
    overwritten) and return it. Weights are drawn from `seed` (the global RNG is left as it was)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = real_shape_config(size, layers=layers, vision_depth=vision_depth)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            Qwen2_5_VLConfig(**copy.deepcopy(config)), dtype=torch.bfloat16
        )
    _write_weights(folder, model.state_dict(), tied=bool(config["tie_word_embeddings"]))
    del model
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", GENERATION_CONFIG)
    _write_json(folder / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    _write_json(folder / "chat_template.json", {"chat_template": QWEN2_5_VL_CHAT_TEMPLATE})
    tokenizer = load_tokenizer("qwen")
    tokenizer.chat_template = None  # the published folders keep it in chat_template.json only
    tokenizer.save_pretrained(folder)
    return folder


def _write_weights(folder: Path, state: dict[str, Any], *, tied: bool) -> None:
    """Shards of at most `_SHARD_BYTES` (a larger tensor gets its own) and their index, under the
    published names; a tied lm_head is not stored, as in the published 3B files."""
    from safetensors.torch import save_file

    tensors = {}
    for name, tensor in state.items():
        if tied and name == "lm_head.weight":
            continue
        for new, old in _PUBLISHED_PREFIXES:
            if name.startswith(new):
                name = old + name[len(new) :]
                break
        tensors[name] = tensor.contiguous()
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > _SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    weight_map = {}
    for k, shard in enumerate(shards, start=1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(
        folder / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )


def _write_json(file: Path, payload: dict[str, Any]) -> None:
    file.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tools.real_shape_checkpoint",
        description="Write a Qwen2.5-VL-Instruct-like folder: real widths, few layers, random weights.",
    )
    parser.add_argument("out", type=Path, help="folder to write (created)")
    parser.add_argument("--size", choices=sorted(REAL_CONFIGS), default="3b")
    parser.add_argument("--layers", type=int, default=1, help="decoder layers (default 1)")
    parser.add_argument("--vision-depth", type=int, default=1, help="vision blocks (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = write_real_shape_folder(
        args.out, args.size, layers=args.layers, vision_depth=args.vision_depth, seed=args.seed
    )
    files = sorted(p.name for p in folder.iterdir())
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    print(f"{folder}: {len(files)} files, {size / 1e9:.2f} GB ({', '.join(files)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
