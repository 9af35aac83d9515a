"""Benchmark: what only a GPU can show, on the real Qwen2.5-VL-3B shape with the shipped head.

    python benchmarks/gpu.py [--device cuda|cpu] [--tiny] [--out PATH] [--steps N] [--warmup N]
                             [--sizes 3b[,7b]] [--images N] [--max-new-tokens N]
                             [--time-budget S]

The model: Qwen2.5-VL with the published 3B architecture (`bbucli.model.loading.REAL_CONFIGS`:
36 decoder layers, the 32-block vision tower), random weights built directly on the device (no
download), `use_cache: true` in its text config as the real checkpoint has, `sdpa_varlen`
attention (what `model.attn: auto` picks without flash-attn, which the GPU machine lacks), bf16 on CUDA (fp32 on CPU), plus the detection head, caption
vocabulary, loss, learning rates and DeepSpeed JSON of configs/3b.yaml, read through
`load_config`. The data: examples/raw converted at the config's pixel limits (one teacher per
student), episodes rendered by the real `ChatProcessor`. `--tiny` swaps in the tiny Qwen2.5-VL
(`tiny_config`, also with `use_cache: true`) and smaller images and rows (`TINY_OVERRIDES`):
how this script is tested on a CPU.

Sections, each in its own try/except (an error is recorded and the next section runs), in this
order; the JSON is rewritten after every section, so a timeout still leaves the numbers so far,
and a section that would start after --time-budget seconds (300) is skipped:
  setup       conversion, config, samples, loss, and the model built on the device (seconds).
  packed_equals_padded  A few samples as one padded batch (`StandardDataCollator`) and as one
      packed row (`PackedDataCollator`), through `BBUModel` in eval mode: max abs diff of the LM
      logits at supervised positions and of the head outputs (every decoder layer's logits and
      boxes, query states, token logits), against `TOLERANCE` of the dtype; beside it the noise
      floor (padded batch vs each sample alone: a change that is exact in maths too). Leak test:
      the first sample's system-prompt tokens changed in the packed row; the later samples'
      hidden states and head outputs must not move (the first must: the test can see), and the
      same change through the Qwen model with a KV cache (what packing must avoid) as a control.
  train_step_<size>  forward + multi-task loss + backward + grad clipping + AdamW step as the
      Trainer runs it without DeepSpeed: Qwen weights in bf16, head in fp32, bf16 autocast,
      torch AdamW (fused, the Trainer's default `adamw_torch_fused`) over the five parameter
      groups, activation checkpointing as configured. The row: the fullest bin of the samples
      under data.max_tokens_per_batch (first-fit decreasing, as training packs), under
      sdpa_varlen and under plain sdpa's dense packed mask; the padded batch: the same samples
      (same real tokens). Median of --steps (3) timed steps after --warmup
      (1) untimed ones.
  inference   `Inference` (built in memory over the model) per image, batch size 1, median over
      --images (3) after a warm-up image, with the training prompt (one teacher): the head path
      and the LM path, generation capped at --max-new-tokens (64) new tokens (random weights
      write garbage; only the latency counts), the tokens generated counted.
  zero2       `deepspeed.initialize` on the one device (process group of one: nccl on CUDA, gloo on
      CPU) with configs/deepspeed/zero2.json ("auto" filled in, bf16 on CUDA) and a torch AdamW
      client optimizer (DeepSpeed's own FusedAdam is not built on the GPU machine): step time and
      peak memory on the packed row. "deepspeed unavailable: ..." when it does not import.
  7B (`--sizes 3b,7b`): train_step_7b only, after everything else.

FLOPs per step (model FLOPs: activation checkpointing's recomputation is not counted):
  llm       6 * P_layers * T + 6 * L * d * sum_i S_i^2 + 6 * d * V * N_sup: decoder-layer
            parameters (embeddings and lm_head out) over the T real tokens, causal attention
            within each sample of S_i tokens (L layers, d = heads * head_dim), and the lm_head at
            the N_sup supervised positions only (the loss never forms other logits).
  vision    6 * P_blocks+patch_embed * patches + 6 * P_merger * patches / 4 + 12 * d_v * (sum
            over full-attention blocks of sum_img p^2 + over windowed blocks of sum_windows w^2),
            the windows of Qwen2.5-VL's `get_window_index` (4 x 4 merged cells).
  Not counted: the detection head, the Hungarian matcher and the loss (well under 1%).
  MFU = FLOPs / step time / `PEAK_TFLOPS` (the H200's measured bf16 matmul rate; a CPU run's MFU
  against it is only a number).

Results: --out (default benchmarks/results/gpu.json): machine, versions, date, config, and every
figure with its unit in its key (`_s`, `_ms`, `_gib`, `_tflop`, `_per_s`); and a short table.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bbucli.chat.processor import ChatProcessorOutput
from bbucli.convert.pipeline import ConvertOptions, convert_dataset
from bbucli.data.collators import PackedDataCollator, StandardDataCollator
from bbucli.inspection.batching import packed_bins
from bbucli.model.bbu_model import BBUModel
from bbucli.model.param_groups import build_param_groups
from bbucli.model.varlen_attention import ATTN_VARLEN, ATTN_WINDOWS, register_varlen_attention
from bbucli.schema import Sample, read_episodes
from bbucli.train.build import attach_head, build_loss, build_vocabulary, learning_rates
from bbucli.train.build_data import build_conversation
from bbucli.train.config.loading import BbuConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "3b.yaml"
EXAMPLES = REPO / "examples" / "raw"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu.json"
PEAK_TFLOPS = 790.0
EQUIVALENCE_SAMPLES = 3
PROCESSED_SAMPLES = 8
# The processor is built offline ("tiny" = the real Qwen2.5 vocabulary and chat template); the
# Qwen weights are built here, so model.path is never read.
OVERRIDES = ("model.path=tiny",)
# --tiny on a CPU: images of <= 64 vision tokens, two samples per row, 32 scored answer tokens
# (the 151k-word lm_head is most of a tiny step) and 16 queries keep it to seconds.
TINY_OVERRIDES = (
    "model.max_pixels=50176",
    "data.max_tokens=1024",
    "data.max_tokens_per_batch=2048",
    "loss.lm_max_tokens=32",
    "detection.max_queries=16",
)
# Max abs diff allowed between packed and padded outputs. bf16: 36 layers of rounding in other
# kernel shapes (about 16 bf16 ulps at magnitude 1); fp32: as the CPU tests.
TOLERANCE = {torch.bfloat16: 0.0625, torch.float32: 1e-4}
GIB = 2**30
# --tiny: LM logits compared at this many supervised positions per sample (a 151k-word lm_head).
TINY_LOGIT_POSITIONS = 64
DATA_FILES = {"train": "bbu.jsonl", "val": "bbu.val.jsonl", "teachers": "bbu.teachers.jsonl"}


# ---- set-up ---------------------------------------------------------------------------------------


def load_bench_config(tiny: bool, data: Path | None = None) -> BbuConfig:
    """configs/3b.yaml as shipped (validated for a GPU run, the model path not checked), with
    data.train / val / teachers pointing at the files `convert_examples` wrote into `data`."""
    overrides = [*OVERRIDES, *(TINY_OVERRIDES if tiny else ())]
    if data is not None:
        overrides += [f"data.{key}={data / name}" for key, name in DATA_FILES.items()]
    return load_config(CONFIG, overrides, target="gpu", check_paths=False)


def qwen_config(size: str, tiny: bool) -> Any:
    """The Qwen2.5-VL config: published 3B/7B, or the tiny one; text use_cache on in both."""
    import copy

    from transformers import Qwen2_5_VLConfig

    from bbucli.model.loading import REAL_CONFIGS, tiny_config

    config = (
        tiny_config(use_cache=True)
        if tiny
        else Qwen2_5_VLConfig(**copy.deepcopy(REAL_CONFIGS[size]))
    )
    config.text_config.use_cache = True
    return config


def build_bbu(
    cfg: BbuConfig,
    config: Any,
    vocab: Any,
    device: torch.device,
    weights: str = "fp32",
    vision_attn: str = "windows",
) -> BBUModel:
    """Qwen2.5-VL with random weights (`weights` fp32: what `bbu train` holds without DeepSpeed,
    fp32 master weights under bf16 autocast; bf16: half weights, what DeepSpeed's bf16 engine
    runs; always fp32 on CPU) + the configured head (fp32), built on `device`; parameter groups
    with lr 0 frozen, as `build_model` does. `vision_attn` "windows": the vision tower's windows
    batched per length (`ATTN_WINDOWS`, what `load_model` sets); "sdpa": one call per window."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    half = device.type == "cuda" and weights == "bf16"
    dtype = torch.bfloat16 if half else torch.float32
    torch.manual_seed(cfg.model.seed)
    with device:
        register_varlen_attention()
        qwen = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=ATTN_VARLEN
        )
        vision = ATTN_WINDOWS if vision_attn == "windows" else "sdpa"
        qwen.set_attn_implementation({"vision_config": vision})
        bbu = attach_head(cfg, qwen, vocab)
    build_param_groups(bbu, learning_rates(cfg), cfg.optim.weight_decay)
    return bbu


def convert_examples(cfg: BbuConfig, folder: Path) -> None:
    """examples/raw converted into `folder` at the config's pixel limits (`DATA_FILES`)."""
    options = ConvertOptions(
        teachers=cfg.data.num_teachers,
        val_ratio=0.25,
        min_pixels=cfg.model.min_pixels,
        max_pixels=cfg.model.max_pixels,
        lang=cfg.data.lang,
    )
    convert_dataset(EXAMPLES, folder / DATA_FILES["train"], options)


def prepare_data(cfg: BbuConfig, chat: Any, folder: Path) -> dict[str, Any]:
    """The processed train samples, their descs, the teacher pool and the val students (absolute
    paths) of the converted examples in `folder`."""
    train = read_episodes(folder / DATA_FILES["train"])
    samples = [chat.process_sample(e, folder) for e in train[:PROCESSED_SAMPLES]]
    pool = [absolute(e.student, folder) for e in read_episodes(folder / DATA_FILES["teachers"])]
    val = [absolute(e.student, folder) for e in read_episodes(folder / DATA_FILES["val"])]
    descs = {o.desc for e in train for s in e.samples for o in s.objects}
    descs |= {o.desc for s in pool for o in s.objects}
    return {
        "samples": [s for s in samples if s is not None],
        "descs": tuple(sorted(descs)),
        "teachers": pool[: cfg.data.num_teachers],
        "val_images": [s.image for s in val],
    }


def absolute(sample: Sample, root: Path) -> Sample:
    return replace(sample, images=tuple(str((root / p).absolute()) for p in sample.images))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return {k: move(v) for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak since the last `reset_peak`: torch.cuda.max_memory_allocated on CUDA; on CPU the
    process's peak resident set (never reset)."""
    if device.type == "cuda":
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / GIB}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_gib": rss_kib * 1024 / GIB, "peak_memory_kind": "process max RSS (CPU)"}


def release(device: torch.device) -> None:
    """Give freed device memory back (tensors kept alive by reference cycles included)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """What accelerate wraps the Trainer's forward in for `bf16: true` (nothing on CPU: fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- FLOPs ----------------------------------------------------------------------------------------


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def window_sizes(grid_thw: torch.Tensor, vision: Any) -> list[int]:
    """Patches per attention window of every image, as Qwen2.5-VL's `get_window_index` cuts
    them (windows of window_size / patch / merge merged cells per side, clipped at the edges)."""
    merge = int(vision.spatial_merge_size)
    cells = int(vision.window_size) // merge // int(vision.patch_size)
    sizes = []
    for t, h, w in grid_thw.tolist():
        gh, gw = h // merge, w // merge
        for top in range(0, gh, cells):
            for left in range(0, gw, cells):
                merged = min(cells, gh - top) * min(cells, gw - left)
                sizes += [merged * merge * merge] * t
    return sizes


def step_flops(qwen: Any, samples: list[ChatProcessorOutput]) -> dict[str, float]:
    """Model FLOPs of one training step (forward + backward) over `samples` (module docstring)."""
    text, vision = qwen.config.text_config, qwen.config.vision_config
    inner = qwen.model
    lengths = [s.length for s in samples]
    tokens = sum(lengths)
    supervised = sum(int((s.labels[1:] != -100).sum()) for s in samples)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    attn_width = text.num_attention_heads * head_dim
    llm = 6 * count(inner.language_model.layers) * tokens
    llm += 6 * text.num_hidden_layers * attn_width * sum(n * n for n in lengths)
    llm += 6 * text.hidden_size * text.vocab_size * supervised

    grids = [s.image_grid_thw for s in samples if s.image_grid_thw.shape[0]]
    grid = torch.cat(grids) if grids else torch.zeros(0, 3, dtype=torch.long)
    per_image = grid.prod(-1).tolist()
    patches = sum(per_image)
    visual = inner.visual
    blocks = count(visual.blocks) + count(visual.patch_embed)
    vis = 6 * blocks * patches + 6 * count(visual.merger) * patches / 4
    full = set(vision.fullatt_block_indexes)
    windows = sum(w * w for w in window_sizes(grid, vision))
    squares = sum(p * p for p in per_image)
    per_block = [squares if i in full else windows for i in range(vision.depth)]
    vis += 12 * vision.hidden_size * sum(per_block)
    return {
        "real_tokens": tokens,
        "supervised_tokens": supervised,
        "vision_patches": patches,
        "llm_tflop": llm / 1e12,
        "vision_tflop": vis / 1e12,
    }


# ---- 1. packed == padded ----------------------------------------------------------------------------


def supervised_logits(
    qwen: Any,
    hidden: torch.Tensor,
    samples: list[ChatProcessorOutput],
    starts: list[tuple[int, int]],
    cap: int | None,
) -> list[torch.Tensor]:
    """Per sample, the LM logits (fp32) at the positions whose next label is supervised (the
    first `cap` of them; None: all). starts[i] = (row, first column) of sample i in `hidden`."""
    out = []
    for s, (row, col) in zip(samples, starts, strict=True):
        positions = torch.nonzero(s.labels[1:] != -100).flatten()[:cap].to(hidden.device) + col
        out.append(qwen.lm_head(hidden[row, positions]).float())
    return out


def head_tensors(out: Any, row: int) -> dict[str, torch.Tensor]:
    """Everything the head returns for one of its rows, padding queries dropped."""
    h = out.head
    n = int(h.query_mask[row].sum())
    tensors = {f"logits{k}": x[row, :n].float() for k, x in enumerate(h.logits)}
    tensors.update({f"boxes{k}": x[row, :n].float() for k, x in enumerate(h.boxes)})
    tensors["hidden"] = h.hidden[row, :n].float()
    tensors["token_logits"] = h.token_logits[row, : int(h.token_mask[row].sum())].float()
    return tensors


def max_diff(a: list[torch.Tensor] | dict, b: list[torch.Tensor] | dict) -> float:
    if isinstance(a, dict):
        a, b = list(a.values()), [b[k] for k in a]
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def perturbed(sample: ChatProcessorOutput) -> ChatProcessorOutput:
    """The same sample with five system-prompt tokens after <|im_start|> replaced (same length)."""
    ids = sample.input_ids.clone()
    ids[1:6] = torch.tensor([9707, 1879, 11, 1045, 13])
    return replace(sample, input_ids=ids)


@torch.no_grad()
def packed_equals_padded(
    bbu: BBUModel,
    samples: list[ChatProcessorOutput],
    pad_id: int,
    device: torch.device,
    cap: int | None = None,
) -> dict[str, Any]:
    """Module docstring; cap: LM logits compared at the first `cap` supervised positions of each
    sample (None: all)."""
    bbu.eval()
    dtype = bbu.qwen.dtype
    standard, packer = StandardDataCollator(pad_id), PackedDataCollator()

    def run(batch: dict[str, Any]) -> Any:
        return bbu(to_device(batch, device))

    cu = packer(samples)["cu_seqlens"].tolist()
    padded, packed = run(standard(samples)), run(packer(samples))
    singles = [run(standard([s])) for s in samples]
    padded_starts = [(i, 0) for i in range(len(samples))]
    packed_starts = [(0, c) for c in cu[:-1]]
    lm_padded = supervised_logits(bbu.qwen, padded.hidden_states, samples, padded_starts, cap)
    lm_packed = supervised_logits(bbu.qwen, packed.hidden_states, samples, packed_starts, cap)
    lm_single = [
        supervised_logits(bbu.qwen, o.hidden_states, [s], [(0, 0)], cap)[0]
        for o, s in zip(singles, samples, strict=True)
    ]
    rows = range(len(samples))
    head_padded = [head_tensors(padded, i) for i in rows]
    head_packed = [head_tensors(packed, i) for i in rows]
    head_single = [head_tensors(o, 0) for o in singles]
    same_queries = all(
        torch.equal(padded.head.query_index[i], packed.head.query_index[i]) for i in rows
    )
    tol = TOLERANCE.get(dtype, TOLERANCE[torch.bfloat16])
    result: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."),
        "samples": len(samples),
        "sample_tokens": [s.length for s in samples],
        "lm_positions_per_sample": cap or "all supervised",
        "lm_logits_max_abs_diff": max_diff(lm_padded, lm_packed),
        "head_max_abs_diff": max(
            max_diff(a, b) for a, b in zip(head_padded, head_packed, strict=True)
        ),
        "noise_floor_lm_logits_max_abs_diff": max_diff(lm_padded, lm_single),
        "noise_floor_head_max_abs_diff": max(
            max_diff(a, b) for a, b in zip(head_padded, head_single, strict=True)
        ),
        "lm_logits_max_abs": max(float(x.abs().max()) for x in lm_padded),
        "head_query_sets_equal": same_queries,
        "tolerance": tol,
    }
    result["within_tolerance"] = (
        result["lm_logits_max_abs_diff"] <= tol and result["head_max_abs_diff"] <= tol
    )

    # Leak test: change the first sample, watch the others in the packed row.
    changed_batch = packer([perturbed(samples[0]), *samples[1:]])
    changed = run(changed_batch)
    first = cu[1]
    later_hidden = float(
        (packed.hidden_states[0, first:] - changed.hidden_states[0, first:]).abs().max()
    )
    later_head = max(max_diff(head_packed[i], head_tensors(changed, i)) for i in rows[1:])
    own = float((packed.hidden_states[0, :first] - changed.hidden_states[0, :first]).abs().max())
    with_cache = leak_with_kv_cache(bbu, packer(samples), changed_batch, first, device)
    result.update(
        {
            "leak_later_samples_hidden_max_abs_diff": later_hidden,
            "leak_later_samples_head_max_abs_diff": later_head,
            "leak_changed_sample_hidden_max_abs_diff": own,
            "leak_control_kv_cache_hidden_max_abs_diff": with_cache,
            "leak_free": max(later_hidden, later_head) <= tol and own > tol,
        }
    )
    return result


def leak_with_kv_cache(
    bbu: BBUModel, batch: dict[str, Any], changed: dict[str, Any], first: int, device: torch.device
) -> float:
    """The leak check through the Qwen model with a KV cache under plain sdpa (what the config's
    use_cache: true would do without BBUModel's use_cache=False): the later samples do move.
    sdpa_varlen takes its boundaries from the row and does not leak even there."""
    states = []
    text_config = bbu.qwen.config.text_config
    attention, text_config._attn_implementation = text_config._attn_implementation, "sdpa"
    for b in (batch, changed):
        b = to_device(b, device)
        out = bbu.qwen.model(
            input_ids=b["input_ids"],
            position_ids=b["position_ids"],
            pixel_values=b["pixel_values"],
            image_grid_thw=b["image_grid_thw"],
            use_cache=True,
        )
        states.append(out.last_hidden_state[0, first:])
    text_config._attn_implementation = attention
    return float((states[0] - states[1]).abs().max())


# ---- 2. training step -----------------------------------------------------------------------------


def training_bin(samples: list[ChatProcessorOutput], budget: int) -> list[ChatProcessorOutput]:
    """The fullest bin training would pack from `samples` (first-fit decreasing)."""
    bins = packed_bins([s.length for s in samples], budget)
    fitting = [b for b in bins if sum(samples[i].length for i in b) <= budget] or bins
    best = max(fitting, key=lambda b: sum(samples[i].length for i in b))
    return [samples[i] for i in sorted(best)]


def timed_steps(
    step: Callable[[int], None], steps: int, warmup: int, device: torch.device
) -> list[float]:
    """`warmup` untimed steps, then `steps` timed ones (seconds each)."""
    times = []
    for k in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        step(k)
        sync(device)
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return times


def rates(times: list[float], flops: dict[str, float]) -> dict[str, float]:
    median = statistics.median(times)
    total = flops["llm_tflop"] + flops["vision_tflop"]
    return {
        "step_s": median,
        "step_times_s": times,
        "tokens_per_s": flops["real_tokens"] / median,
        "tflop_per_s": total / median,
        "mfu_llm": flops["llm_tflop"] / median / PEAK_TFLOPS,
        "mfu_llm_plus_vision": total / median / PEAK_TFLOPS,
    }


def train_step(
    bbu: BBUModel,
    cfg: BbuConfig,
    loss_fn: Any,
    row: list[ChatProcessorOutput],
    pad_id: int,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """The training step on `row` packed, then padded (module docstring)."""
    bbu.train()
    checkpointing = bool((cfg.train.model_extra or {}).get("activation_checkpointing"))
    if checkpointing:
        bbu.activation_checkpointing_enable()
    groups = build_param_groups(bbu, learning_rates(cfg), cfg.optim.weight_decay)
    optimizer = torch.optim.AdamW(
        groups, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, fused=True
    )
    max_norm = float((cfg.train.model_extra or {}).get("max_grad_norm", 1.0))
    params = [p for g in groups for p in g["params"]]
    flops = step_flops(bbu.qwen, row)
    result: dict[str, Any] = {
        "activation_checkpointing": checkpointing,
        "optimizer": "torch.optim.AdamW(fused=True)",
        "weights": f"qwen {str(bbu.qwen.dtype).removeprefix('torch.')}, head fp32",
        "autocast": "bf16" if device.type == "cuda" else "none (fp32)",
        "params_qwen": count(bbu.qwen),
        "params_head": count(bbu.head),
        "samples": len(row),
        "flops": flops,
    }
    text_config = bbu.qwen.config.text_config
    for name, batch, attention in (
        ("packed", PackedDataCollator()(row), ATTN_VARLEN),
        ("packed_sdpa_mask", PackedDataCollator()(row), "sdpa"),
        ("padded", StandardDataCollator(pad_id)(row), ATTN_VARLEN),
    ):
        batch = to_device(batch, device)
        text_config._attn_implementation = attention

        def step(k: int, batch: dict[str, Any] = batch) -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                out = bbu(batch)
                total = loss_fn(bbu, out, batch, step=k + 1).total
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()

        release(device)
        reset_peak(device)
        times = timed_steps(step, args.steps, args.warmup, device)
        result[name] = {
            "attention": attention,
            "row_slots": int(batch["input_ids"].numel()),
            **rates(times, flops),
            **peak_memory(device),
        }
    text_config._attn_implementation = ATTN_VARLEN
    optimizer.zero_grad(set_to_none=True)  # the gradients' memory goes with the optimizer's
    return result


# ---- 3. ZeRO-2 ------------------------------------------------------------------------------------


@contextlib.contextmanager
def single_process_group(device: torch.device) -> Iterator[None]:
    """A process group of one (the launcher's environment set here, restored afterwards)."""
    import torch.distributed as dist

    from bbucli.train.launch import free_port

    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    started = not dist.is_initialized()
    try:
        if started:
            if device.type == "cuda":
                torch.cuda.set_device(device.index or 0)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        yield
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def zero2_config(cfg: BbuConfig, device: torch.device) -> dict[str, Any]:
    """configs/deepspeed/zero2.json with its "auto" values filled in for one device and one row."""
    path = cfg.deepspeed
    ds = json.loads(Path(path).read_text()) if isinstance(path, Path) else dict(path)
    extra = cfg.train.model_extra or {}
    ds.update(
        train_batch_size=1,
        train_micro_batch_size_per_gpu=1,
        gradient_accumulation_steps=1,
        gradient_clipping=float(extra.get("max_grad_norm", 1.0)),
    )
    ds["bf16"] = {"enabled": device.type == "cuda"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": False}
    return ds


def zero2(
    bbu: BBUModel,
    cfg: BbuConfig,
    loss_fn: Any,
    row: list[ChatProcessorOutput],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """ZeRO-2 steps on the packed `row` (module docstring); the model stays wrapped in bf16."""
    try:
        import deepspeed
    except Exception as exc:  # noqa: BLE001 - any import failure means the same here
        return {"status": f"deepspeed unavailable: {type(exc).__name__}: {exc}"}
    bbu.train()
    bbu.zero_grad(set_to_none=True)
    flops = step_flops(bbu.qwen, row)
    batch = to_device(PackedDataCollator()(row), device)
    ds_config = zero2_config(cfg, device)
    release(device)
    reset_peak(device)
    with single_process_group(device):
        groups = build_param_groups(bbu, learning_rates(cfg), cfg.optim.weight_decay)
        optimizer = torch.optim.AdamW(groups, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
        engine, *_ = deepspeed.initialize(model=bbu, optimizer=optimizer, config=ds_config)

        def step(k: int) -> None:
            out = engine(batch)
            total = loss_fn(bbu, out, batch, step=k + 1).total
            engine.backward(total)
            engine.step()

        try:
            times = timed_steps(step, args.steps, args.warmup, device)
        finally:
            engine.destroy()
        result = {
            "status": "ok",
            "deepspeed": deepspeed.__version__,
            "zero_stage": ds_config["zero_optimization"]["stage"],
            "bf16": ds_config["bf16"]["enabled"],
            "optimizer": "torch.optim.AdamW (client optimizer)",
            "flops": flops,
            **rates(times, flops),
            **peak_memory(device),
        }
    return result


# ---- 4. inference ---------------------------------------------------------------------------------


def inference(
    bbu: BBUModel,
    conversation: Any,
    cfg: BbuConfig,
    data: dict[str, Any],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """`Inference.predict` per image (batch size 1, the first image a warm-up); the LM path's
    decode steps counted as `lm_head` calls (one per generated token)."""
    from bbucli.infer.inference import Inference

    engine = Inference(
        bbu,
        conversation.processor,
        conversation.prompts,
        batch_size=1,
        device=device,
        max_tokens=cfg.data.max_tokens,
        class_descs=data["descs"],
    )
    val = data["val_images"]
    images = [val[k % len(val)] for k in range(args.images + 1)]  # repeats when val is short
    teachers = data["teachers"]
    calls = [0]
    hook = bbu.qwen.lm_head.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    result: dict[str, Any] = {"batch_size": 1, "images": len(images) - 1, "teachers": len(teachers)}
    try:
        for source in ("head", "lm"):
            latencies, generated = [], []
            for k, image in enumerate(images):
                calls[0] = 0
                sync(device)
                start = time.perf_counter()
                [found] = engine.predict(
                    [image],
                    teachers=teachers,
                    sources=(source,),
                    max_new_tokens=args.max_new_tokens,
                )[source]
                sync(device)
                if k:
                    latencies.append(1000 * (time.perf_counter() - start))
                    generated.append(calls[0])
            result[source] = {
                "latency_ms": statistics.median(latencies),
                "latencies_ms": latencies,
                "prompt_tokens": found.prompt_tokens,
            }
            if source == "lm":
                result[source]["max_new_tokens"] = args.max_new_tokens
                result[source]["generated_tokens_mean"] = statistics.mean(generated)
    finally:
        hook.remove()
        bbu.train()
    return result


# ---- the run -------------------------------------------------------------------------------------


def machine(device: torch.device) -> dict[str, Any]:
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "device": str(device),
        "name": name or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


class Report:
    """The results dict, written to `path` after every section."""

    def __init__(self, path: Path, head: dict[str, Any], started: float) -> None:
        self.path = path
        self.data: dict[str, Any] = {**head, "sections": {}}
        self.started = started
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = time.perf_counter() - self.started
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.path)

    def section(self, name: str, budget_s: float, fn: Callable[[], dict[str, Any]]) -> None:
        """Run one section: its result, or its error string, into the JSON (then written)."""
        elapsed = time.perf_counter() - self.started
        if elapsed > budget_s:
            result = {"error": f"skipped: {elapsed:.0f} s used of the {budget_s:.0f} s budget"}
        else:
            start = time.perf_counter()
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - recorded, and the next section runs
                result = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=6),
                }
            result["section_s"] = time.perf_counter() - start
        self.data["sections"][name] = result
        self.write()
        print(f"[{time.perf_counter() - self.started:6.1f} s] {name}: {summary(name, result)}")


def summary(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return "ERROR " + r["error"].splitlines()[0][:200]
    if name == "setup":
        return (
            f"model built in {r['build_model_s']:.1f} s, {r['params_qwen'] / 1e9:.2f}B + head "
            f"{r['params_head'] / 1e6:.1f}M params, row {r['train_row_tokens']}"
        )
    if name == "packed_equals_padded":
        return (
            f"lm diff {r['lm_logits_max_abs_diff']:.3g}, head diff {r['head_max_abs_diff']:.3g} "
            f"(tol {r['tolerance']:g}, noise {r['noise_floor_lm_logits_max_abs_diff']:.3g} / "
            f"{r['noise_floor_head_max_abs_diff']:.3g}); leak {r['leak_later_samples_hidden_max_abs_diff']:.3g} "
            f"(kv-cache control {r['leak_control_kv_cache_hidden_max_abs_diff']:.3g})"
        )
    if name.startswith("train_step"):
        return " | ".join(
            f"{k} {r[k]['step_s']:.3f} s, {r[k]['tokens_per_s']:,.0f} tok/s, MFU "
            f"{100 * r[k]['mfu_llm_plus_vision']:.1f}%, {r[k]['peak_memory_gib']:.1f} GiB"
            for k in ("packed", "packed_sdpa_mask", "padded")
        )
    if name == "zero2":
        if r.get("status") != "ok":
            return r["status"]
        return (
            f"{r['step_s']:.3f} s, {r['tokens_per_s']:,.0f} tok/s, MFU "
            f"{100 * r['mfu_llm_plus_vision']:.1f}%, {r['peak_memory_gib']:.1f} GiB"
        )
    if name == "inference":
        return (
            f"head {r['head']['latency_ms']:.0f} ms/image, lm {r['lm']['latency_ms']:.0f} ms/image "
            f"({r['lm']['generated_tokens_mean']:.0f} tokens generated)"
        )
    return json.dumps(r)[:200]


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    sizes = [s.strip() for s in args.sizes.split(",")]
    report = Report(
        args.out,
        {
            "benchmark": "benchmarks/gpu.py",
            "machine": machine(device),
            "model": "tiny" if args.tiny else "Qwen2.5-VL real shape, random weights",
            "config": str(CONFIG.relative_to(REPO)),
            "overrides": [*OVERRIDES, *(TINY_OVERRIDES if args.tiny else ())],
            "attention": f"{ATTN_VARLEN} (packed rows sample by sample; train_step also times "
            "packed rows under plain sdpa's dense mask)",
            "peak_tflops_bf16": PEAK_TFLOPS,
            "weights": args.weights,
            "steps": args.steps,
            "warmup_steps": args.warmup,
        },
        args.started,
    )
    budget = args.time_budget
    parts: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        report.section("setup", budget, lambda: setup(args, Path(tmp), sizes[0], device, parts))
        if "bbu" not in parts:
            print(table(report.data))
            return report.data
        cfg, conversation, data, loss_fn = (
            parts[k] for k in ("cfg", "conversation", "data", "loss_fn")
        )
        samples, row, pad_id = data["samples"], data["row"], data["pad_id"]
        logit_cap = TINY_LOGIT_POSITIONS if args.tiny else None

        def bbu() -> BBUModel:
            return parts["bbu"]

        wanted = [w.strip() for w in args.sections.split(",")]

        def section(name: str, budget: float, fn: Callable[[], dict[str, Any]]) -> None:
            if "all" in wanted or any(name.startswith(w) for w in wanted):
                report.section(name, budget, fn)

        section(
            "packed_equals_padded",
            budget,
            lambda: packed_equals_padded(
                bbu(), samples[:EQUIVALENCE_SAMPLES], pad_id, device, cap=logit_cap
            ),
        )
        section(
            f"train_step_{sizes[0]}",
            budget,
            lambda: train_step(bbu(), cfg, loss_fn, row, pad_id, args, device),
        )
        section(
            "inference", budget, lambda: inference(bbu(), conversation, cfg, data, args, device)
        )
        section("zero2", budget, lambda: zero2(bbu(), cfg, loss_fn, row, args, device))
        parts.pop("bbu")  # the 3B model's memory goes before a bigger one is built
        release(device)
        for size in sizes[1:]:

            def bigger(size: str = size) -> dict[str, Any]:
                model = build_bbu(
                    parts["cfg"],
                    qwen_config(size, args.tiny),
                    parts["vocab"],
                    device,
                    args.weights,
                    args.vision_attn,
                )
                return train_step(model, cfg, loss_fn, row, pad_id, args, device)

            section(f"train_step_{size}", budget, bigger)
    print(table(report.data))
    return report.data


def setup(
    args: argparse.Namespace, folder: Path, size: str, device: torch.device, parts: dict[str, Any]
) -> dict[str, Any]:
    """Convert the examples, load the config, build the conversation, samples, loss and model
    into `parts`; returns what the JSON records of them."""
    convert_examples(load_bench_config(args.tiny), folder)
    cfg = load_bench_config(args.tiny, folder)
    conversation = build_conversation(cfg)
    processor = conversation.processor
    data = prepare_data(cfg, conversation.chat, folder)
    data["row"] = training_bin(data["samples"], cfg.data.max_tokens_per_batch)
    data["pad_id"] = int(processor.tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    vocab = build_vocabulary(cfg, processor, data["descs"])
    parts.update(
        cfg=cfg,
        conversation=conversation,
        data=data,
        vocab=vocab,
        loss_fn=build_loss(cfg, processor, vocab),
    )
    start = time.perf_counter()
    bbu = build_bbu(
        cfg, qwen_config(size, args.tiny), vocab, device, args.weights, args.vision_attn
    )
    sync(device)
    parts["bbu"] = bbu
    return {
        "build_model_s": time.perf_counter() - start,
        "params_qwen": count(bbu.qwen),
        "params_head": count(bbu.head),
        "use_cache_in_text_config": bool(bbu.qwen.config.text_config.use_cache),
        "vision_attn": args.vision_attn,
        "tokens_per_row": cfg.data.max_tokens_per_batch,
        "max_pixels": cfg.model.max_pixels,
        "sample_tokens": [s.length for s in data["samples"]],
        "train_row_tokens": [s.length for s in data["row"]],
        "descs": len(data["descs"]),
    }


def table(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"{m['name']} | torch {m['torch']} | transformers {m['transformers']} | {data['model']}",
        f"{'section':<22} {'result'}",
    ]
    for name, r in data["sections"].items():
        lines.append(f"{name:<22} {summary(name, r)}")
    lines.append(f"total {data['elapsed_s']:.0f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny Qwen2.5-VL (CPU tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--sizes", default="3b", help="3b, or 3b,7b (7b: train step only)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--images", type=int, default=3, help="timed images per inference path")
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="generation cap of the LM path"
    )
    parser.add_argument(
        "--weights",
        choices=("fp32", "bf16"),
        default="fp32",
        help="Qwen weights on CUDA: fp32 master weights under bf16 autocast (bbu train without "
        "DeepSpeed) or bf16 (DeepSpeed's bf16 engine)",
    )
    parser.add_argument(
        "--vision-attn",
        choices=("windows", "sdpa"),
        default="windows",
        help="the vision tower's attention: its windows batched per length (what bbu runs) or "
        "transformers' one sdpa call per window (before bbu 0.2)",
    )
    parser.add_argument(
        "--sections",
        default="all",
        help="comma-separated sections to run after setup (packed_equals_padded, train_step, "
        "inference, zero2), or all",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=300.0,
        help="seconds after which the sections not yet started are skipped",
    )
    args = parser.parse_args(argv)
    args.started = time.perf_counter()
    sizes = [s.strip() for s in args.sizes.split(",")]
    if not sizes or sizes[0] != "3b" or any(s not in ("3b", "7b") for s in sizes):
        parser.error("--sizes must be 3b or 3b,7b")
    if min(args.steps, args.images, args.max_new_tokens) < 1 or args.warmup < 0:
        parser.error("--steps, --images and --max-new-tokens must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
