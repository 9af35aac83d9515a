"""What the schema alone cannot check: per-section rules, combinations, files, devices.

`semantic_problems` finds combinations that cannot run (bf16 on a CPU-only run, packing with more
than one row per device, flash-attention without flash-attn, fp16 weights with DeepSpeed bf16,
max_tokens_per_batch < max_tokens, ...), missing files and a bad DeepSpeed JSON. Each check runs
when the sections it reads validated, so one pass lists every problem. The `train` section's
pass-through keys are checked in `bbucli.train.config.passthrough`, the DeepSpeed JSON in
`bbucli.train.config.deepspeed_checks`. Everything returns `Problem`s;
`InvalidConfigError` carries them all in one exit-code-2 error.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from bbucli.geometry import PIXELS_PER_TOKEN
from bbucli.loss.weights import LossWeights
from bbucli.schema import Problem
from bbucli.train.config.deepspeed_checks import deepspeed_problems, effective_dtype

Target = Literal["auto", "cpu", "gpu"]


def semantic_problems(
    sections: Mapping[str, Any], *, target: Target = "auto", check_paths: bool = True
) -> list[Problem]:
    """Problems beyond the schema. `sections`: name -> validated section (`deepspeed`: None, a
    Path or a dict); absent names failed validation and their checks are skipped."""
    model, data, detection = sections.get("model"), sections.get("data"), sections.get("detection")
    loss, optim, train = sections.get("loss"), sections.get("optim"), sections.get("train")
    has_ds = "deepspeed" in sections
    args = dict(train.model_extra or {}) if train is not None else {}
    gpu = _on_gpu(target, args)
    problems: list[Problem] = []

    if model is not None:
        problems += _model_problems(model, gpu, check_paths)
    if data is not None:
        problems += _data_problems(data, check_paths)
    if detection is not None:
        problems += _detection_problems(detection, model, check_paths)
    if loss is not None and all(getattr(loss, w) == 0 for w in LossWeights.__dataclass_fields__):
        problems.append(Problem("loss", "every loss weight is 0: nothing would be learned"))
    if optim is not None:
        if all(v == 0 for v in optim.lrs.model_dump().values()):
            problems.append(
                Problem(
                    "optim.lrs", "every group has learning rate 0 (frozen): nothing would train"
                )
            )
        for i, beta in enumerate(optim.betas):
            if not 0.0 <= beta < 1.0:
                problems.append(Problem(f"optim.betas[{i}]", f"must be in [0, 1), got {beta}"))
    if train is not None:
        problems += _train_problems(train, args, gpu, check_paths)
    if model is not None and data is not None:
        image_tokens = model.max_pixels // PIXELS_PER_TOKEN
        if image_tokens >= data.max_tokens:
            problems.append(
                Problem(
                    "data.max_tokens",
                    f"{data.max_tokens} cannot hold one image at model.max_pixels ({image_tokens} vision "
                    "tokens): every full-size student would be skipped",
                )
            )
    if model is not None and model.lora is not None:
        problems += _lora_problems(model.lora, optim)
    if model is not None and train is not None:
        problems += _precision_problems(model, args, gpu)
        if has_ds and sections["deepspeed"] is None:
            problems += _master_weight_problems(model, args, gpu)
    if data is not None and train is not None:
        problems += _batch_problems(data, args)
    if has_ds and sections["deepspeed"] is not None:
        problems += deepspeed_problems(sections["deepspeed"], model, train, args, gpu)
    return problems


def _on_gpu(target: Target, args: Mapping[str, Any]) -> bool:
    if args.get("use_cpu") is True or target == "cpu":
        return False
    if target == "gpu":
        return True
    import torch

    return torch.cuda.is_available()


def _model_problems(model: Any, gpu: bool, check_paths: bool) -> list[Problem]:
    problems = []
    if model.min_pixels < PIXELS_PER_TOKEN * 4 or model.min_pixels > model.max_pixels:
        problems.append(
            Problem(
                "model.min_pixels",
                f"need {4 * PIXELS_PER_TOKEN} <= min_pixels <= max_pixels, got {model.min_pixels} and {model.max_pixels}",
            )
        )
    if not gpu and model.dtype in ("bf16", "fp16"):
        problems.append(
            Problem(
                "model.dtype",
                f"{model.dtype} on a CPU-only run: use fp32 on CPU (bf16 is 17-28x slower there)",
            )
        )
    if model.attn == "flash_attention_2":
        if not gpu:
            problems.append(
                Problem("model.attn", "flash_attention_2 needs a CUDA GPU; use sdpa on CPU")
            )
        elif importlib.util.find_spec("flash_attn") is None:
            problems.append(
                Problem(
                    "model.attn",
                    "flash_attention_2 but the flash-attn package is not installed "
                    "(pip install 'bbucli[gpu]', or use attn auto/sdpa: the packed path is exact with sdpa)",
                )
            )
        elif model.dtype == "fp32":
            problems.append(
                Problem(
                    "model.attn",
                    "flash_attention_2 runs in bf16/fp16 only, but model.dtype is fp32",
                )
            )
    if check_paths and model.path != "tiny":
        folder = Path(model.path)
        if not folder.is_dir():
            problems.append(
                Problem(
                    "model.path",
                    f"{folder} does not exist: use 'tiny' or a local Qwen2.5-VL-3B/7B-Instruct folder (nothing is downloaded)",
                )
            )
        elif not (folder / "config.json").is_file():
            problems.append(
                Problem(
                    "model.path",
                    f"{folder} has no config.json: not a Hugging Face checkpoint folder",
                )
            )
    return problems


def _lora_problems(lora: Any, optim: Any) -> list[Problem]:
    """Targets that name no module (listing the valid ones), and adapters in a frozen group."""
    from bbucli.model.lora import VISION_TARGET_PREFIX, unknown_targets, valid_targets

    problems = []
    unknown = unknown_targets(lora.targets)
    if unknown:
        problems.append(
            Problem(
                "model.lora.targets",
                f"{', '.join(unknown)} name no module of Qwen2.5-VL; valid targets: "
                f"{', '.join(valid_targets())}",
            )
        )
    if optim is not None:
        vision = any(t.startswith(VISION_TARGET_PREFIX) for t in lora.targets)
        llm = any(not t.startswith(VISION_TARGET_PREFIX) for t in lora.targets)
        for group, used in (("llm", llm), ("vision", vision)):
            if used and getattr(optim.lrs, group) == 0:
                problems.append(
                    Problem(
                        f"optim.lrs.{group}",
                        f"0 freezes the {group} group, so model.lora's adapters there would "
                        f"never train; set a learning rate (1e-4 is usual for LoRA) or drop "
                        "those targets",
                    )
                )
    return problems


def _data_problems(data: Any, check_paths: bool) -> list[Problem]:
    problems = []
    if data.teacher_resample and data.teachers is None:
        problems.append(
            Problem("data.teacher_resample", "needs data.teachers (the teacher pool JSONL)")
        )
    if data.packing:
        if data.batch_size > 1:
            problems.append(
                Problem(
                    "data.batch_size",
                    "packing makes one row per step itself: size it with data.max_tokens_per_batch",
                )
            )
        if data.max_tokens_per_batch < data.max_tokens:
            problems.append(
                Problem(
                    "data.max_tokens_per_batch",
                    f"{data.max_tokens_per_batch} < data.max_tokens {data.max_tokens}: a full-length sample would not fit a packed row",
                )
            )
    if not check_paths:
        return problems
    hint = "make it with `bbu convert RAW_DIR OUT.jsonl`"
    for name in ("train", "val", "teachers"):
        path = getattr(data, name)
        if path is not None and not path.is_file():
            problems.append(Problem(f"data.{name}", f"{path} does not exist ({hint})"))
    # The default image_root is train's folder, which exists when train does: not reported twice.
    if data.image_root != data.train.parent and not data.image_root.is_dir():
        problems.append(Problem("data.image_root", f"{data.image_root} is not a folder"))
    if data.taxonomy is not None and not data.taxonomy.is_file():
        problems.append(Problem("data.taxonomy", f"{data.taxonomy} does not exist"))
    return problems


def _detection_problems(detection: Any, model: Any, check_paths: bool) -> list[Problem]:
    problems = []
    if detection.width % 4 or detection.width % detection.heads:
        problems.append(
            Problem(
                "detection.width",
                f"{detection.width} must be divisible by 4 and by detection.heads ({detection.heads})",
            )
        )
    layers = _llm_layers(model, check_paths) if model is not None else None
    layer = detection.text_layer
    if layers is not None and not (1 <= layer <= layers or -layers <= layer <= -1):
        problems.append(
            Problem(
                "detection.text_layer",
                f"{layer} is not a decoder layer of the {layers}-layer model: "
                f"use 1..{layers} or -{layers}..-1 (-1: the final output)",
            )
        )
    return problems


def _llm_layers(model: Any, check_paths: bool) -> int | None:
    """Decoder layers of the configured model, from its config.json (None when unknown)."""
    if model.path == "tiny":
        from bbucli.model.loading import tiny_config

        return int(tiny_config().text_config.num_hidden_layers)
    if not check_paths:
        return None
    try:
        config = json.loads((Path(model.path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    layers = config.get("text_config", {}).get("num_hidden_layers", config.get("num_hidden_layers"))
    return layers if isinstance(layers, int) else None


def _train_problems(
    train: Any, args: Mapping[str, Any], gpu: bool, check_paths: bool
) -> list[Problem]:
    problems = []
    for flag in ("bf16", "fp16"):
        if args.get(flag) is True and not gpu:
            problems.append(
                Problem(
                    f"train.{flag}",
                    f"{flag} mixed precision on a CPU-only run (torch.cuda.is_available() is False "
                    "or train.use_cpu): train in fp32 on CPU",
                )
            )
    if args.get("bf16") is True and args.get("fp16") is True:
        problems.append(Problem("train.fp16", "bf16 and fp16 are both on: choose one"))
    if args.get("load_best_model_at_end") is True and str(args.get("eval_strategy", "no")) == "no":
        problems.append(
            Problem("train.load_best_model_at_end", "needs train.eval_strategy steps or epoch")
        )
    if check_paths and isinstance(train.resume, Path) and not train.resume.is_dir():
        problems.append(Problem("train.resume", f"checkpoint folder {train.resume} does not exist"))
    if (
        check_paths
        and train.resume is True
        and not any(Path(train.output_dir).glob("checkpoint-*"))
    ):
        problems.append(
            Problem("train.resume", f"true, but {train.output_dir} holds no checkpoint-* folder")
        )
    return problems


def _batch_problems(data: Any, args: Mapping[str, Any]) -> list[Problem]:
    problems = []
    strategy = str(args.get("eval_strategy", "no"))
    if strategy != "no" and data.val is None:
        problems.append(
            Problem("train.eval_strategy", f"{strategy!r} needs data.val (a validation JSONL)")
        )
    if data.teacher_resample and data.num_workers > 0 and args.get("dataloader_persistent_workers"):
        # Each epoch's re-draw happens in the main process; persistent workers keep the dataset
        # copy of the first epoch, so they would train on its teachers (and its lengths) forever.
        problems.append(
            Problem(
                "train.dataloader_persistent_workers",
                "true with data.teacher_resample and data.num_workers > 0: the workers would keep "
                "the first epoch's teachers; set it false, or data.teacher_resample=false",
            )
        )
    per_device = args.get("per_device_train_batch_size")
    if isinstance(per_device, int) and not isinstance(per_device, bool):
        if data.packing and per_device > 1:
            problems.append(
                Problem(
                    "train.per_device_train_batch_size",
                    f"{per_device} with data.packing: packing makes one row per step itself "
                    "(size it with data.max_tokens_per_batch, or set data.packing=false)",
                )
            )
        elif not data.packing and per_device != data.batch_size:
            problems.append(
                Problem(
                    "train.per_device_train_batch_size",
                    f"{per_device} conflicts with data.batch_size {data.batch_size}: set data.batch_size only",
                )
            )
    return problems


def _precision_problems(model: Any, args: Mapping[str, Any], gpu: bool) -> list[Problem]:
    dtype = effective_dtype(model, gpu)
    problems = []
    if args.get("bf16") is True and dtype == "fp16":
        problems.append(
            Problem("model.dtype", "fp16 weights with train.bf16 mixed precision: use bf16 or fp32")
        )
    if args.get("fp16") is True and dtype == "bf16":
        problems.append(
            Problem(
                "model.dtype",
                f"{model.dtype} (bf16 weights) with train.fp16: fp16 loss scaling cannot unscale bf16 gradients; "
                "use model.dtype fp32 with train.fp16, or train.bf16",
            )
        )
    return problems


def _master_weight_problems(model: Any, args: Mapping[str, Any], gpu: bool) -> list[Problem]:
    """Half weights without DeepSpeed train as fp32 master weights under autocast
    (`BbuConfig.autocast`): train.bf16/fp16 set false would turn that into plain fp32."""
    dtype = effective_dtype(model, gpu)
    if dtype not in ("bf16", "fp16") or args.get(dtype) is not False:
        return []
    return [
        Problem(
            f"train.{dtype}",
            f"false, but model.dtype {model.dtype} without DeepSpeed trains fp32 master weights "
            f"under {dtype} autocast (train.{dtype} true); set train.{dtype}=true, or "
            "model.dtype=fp32 for plain fp32 training",
        )
    ]
