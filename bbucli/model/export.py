"""`export_checkpoint`: a bbu checkpoint as a folder plain transformers loads without bbu.

    out/
      config.json, model.safetensors, generation_config.json
                          the Qwen2.5-VL: `Qwen2_5_VLForConditionalGeneration.from_pretrained(out)`
                          (a LoRA checkpoint: merged with its adapter, or the base with the
                          trained merger when not merged)
      tokenizer and preprocessor files (the processor: `AutoProcessor.from_pretrained(out)`)
      adapter/            a LoRA checkpoint exported without merging: peft's adapter_config.json
                          + adapter_model.safetensors (`PeftModel.from_pretrained(qwen, out/adapter)`)
      head.safetensors    the detection head, as in the checkpoint
      bbu.json            the checkpoint's description (head config, caption vocabulary, prompts,
                          classes), with `export` saying what was done

Serving engines that read transformers folders take `out` as it is; the head needs bbu.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from bbucli.errors import ModelError
from bbucli.model.checkpoint_layout import HEAD_FILE, META_FILE

if TYPE_CHECKING:
    from torch import nn

ADAPTER_DIR = "adapter"


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, merge: bool = True) -> Path:
    """Write checkpoint folder `checkpoint` as a transformers folder at `out` (see the module
    doc), in the dtype the checkpoint's Qwen part trained in. merge: fold a LoRA adapter into
    the weights (else it goes to out/adapter/); a checkpoint without LoRA ignores it.
    Raises ModelError when `out` exists and is not empty, or the checkpoint does not load."""
    from bbucli.model.checkpoint import load_checkpoint
    from bbucli.model.lora import LoraRecord, save_adapter

    folder, target = Path(checkpoint), Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ModelError(
            f"{target} exists and is not an empty folder", hint="pass a new folder to --out"
        )
    # sdpa: the exported config must name an attention kernel plain transformers knows.
    loaded = load_checkpoint(folder, dtype=loaded_dtype(folder), attn_implementation="sdpa")
    qwen = loaded.model.qwen
    record = loaded.meta.get("lora")
    target.mkdir(parents=True, exist_ok=True)
    if record is not None:
        lora = LoraRecord.from_dict(record)
        if not merge:
            (target / ADAPTER_DIR).mkdir()
            save_adapter(qwen, lora.spec, target / ADAPTER_DIR, str(target.absolute()))
        unload_adapters(qwen, merge=merge)
    qwen.save_pretrained(target)
    loaded.processor.save_pretrained(target)
    shutil.copyfile(folder / HEAD_FILE, target / HEAD_FILE)
    meta = {k: v for k, v in loaded.meta.items() if k not in ("lora", "files")}
    meta["export"] = {
        "from": str(folder.absolute()),
        "lora": record,
        "merged": bool(record is not None and merge),
        "adapter": ADAPTER_DIR if record is not None and not merge else None,
    }
    text = json.dumps(meta, ensure_ascii=False, indent=2) + "\n"
    (target / META_FILE).write_text(text, encoding="utf-8")
    return target


def loaded_dtype(folder: Path) -> str:
    """The dtype bbu.json records for the checkpoint's Qwen part ("float32" when absent)."""
    from bbucli.model.checkpoint_layout import read_meta

    return str(read_meta(folder).get("qwen_dtype") or "float32")


def unload_adapters(qwen: nn.Module, *, merge: bool) -> None:
    """Replace every peft layer of `qwen` by the Linear it wraps, after folding the adapter into
    that Linear's weight when `merge` (peft's `merge`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in qwen.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        if merge:
            layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = qwen.get_submodule(parent_name) if parent_name else qwen
        setattr(parent, child, layer.get_base_layer())
