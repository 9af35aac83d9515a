"""What a bbu checkpoint folder holds, and the checks a folder passes before anything loads:
required files, the `bbu.json` description and its format version, the head's parameter names and
shapes (on the meta device), the saved config. `checkpoint.py` writes and loads; this file only
names and checks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bbucli.errors import ModelError
from bbucli.model.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

if TYPE_CHECKING:
    import torch

    from bbucli.model.head import HeadConfig

FORMAT = "bbu-checkpoint"
FORMAT_VERSION = 1
META_FILE = "bbu.json"
HEAD_FILE = "head.safetensors"
QWEN_DIR = "qwen"
PROCESSOR_DIR = "processor"
CONFIG_FILE = "config.yaml"
TAXONOMY_FILE = "taxonomy.yaml"
TEACHERS_DIR = "teachers"
# A LoRA run's checkpoint holds the adapter (peft's files) and the merger instead of qwen/.
MERGER_FILE = "merger.safetensors"
#: What a checkpoint folder owns; anything else in a folder being replaced is carried over.
OWNED = frozenset(
    {
        META_FILE,
        HEAD_FILE,
        QWEN_DIR,
        PROCESSOR_DIR,
        CONFIG_FILE,
        TAXONOMY_FILE,
        TEACHERS_DIR,
        ADAPTER_CONFIG,
        ADAPTER_WEIGHTS,
        MERGER_FILE,
    }
)
REQUIRED = (META_FILE, HEAD_FILE, f"{QWEN_DIR}/config.json", PROCESSOR_DIR)
REQUIRED_LORA = (META_FILE, HEAD_FILE, ADAPTER_CONFIG, ADAPTER_WEIGHTS, PROCESSOR_DIR)
RETRAIN_HINT = "save it again (`bbu train ... train.resume=true` writes a fresh checkpoint)"


def missing_files(folder: Path) -> list[str]:
    """The required files `folder` lacks (a LoRA checkpoint, marked by its adapter_config.json,
    needs the adapter in place of qwen/)."""
    if (folder / ADAPTER_CONFIG).exists():
        return [name for name in REQUIRED_LORA if not (folder / name).exists()]
    missing = [name for name in REQUIRED if not (folder / name).exists()]
    qwen = folder / QWEN_DIR
    if qwen.is_dir() and not any(qwen.glob("*.safetensors")) and not any(qwen.glob("*.bin")):
        missing.append(f"{QWEN_DIR}/model.safetensors")
    return missing


def check_folder(folder: Path) -> None:
    if not folder.exists():
        raise ModelError(
            f"checkpoint folder {folder} does not exist",
            hint="pass a folder written by `bbu train` (one holding bbu.json, qwen/, processor/, head.safetensors)",
        )
    if not folder.is_dir():
        raise ModelError(
            f"{folder} is a file, not a checkpoint folder",
            hint="pass the checkpoint folder written by `bbu train`",
        )
    missing = missing_files(folder)
    if not missing:
        return
    interrupted = list(folder.parent.glob(f".{folder.name}.tmp-*"))
    partial = "is not a checkpoint" if len(missing) == len(REQUIRED) else "is a partial checkpoint"
    hint = (
        f"a save into it was interrupted ({interrupted[0].name} is left beside it); {RETRAIN_HINT}"
        if interrupted
        else "pass the checkpoint folder written by `bbu train` (e.g. runs/tiny/checkpoint-100)"
    )
    raise ModelError(f"{folder} {partial}: it lacks {', '.join(missing)}", hint=hint)


def read_meta(folder: Path) -> dict[str, Any]:
    file = folder / META_FILE
    hint = f"{file} is damaged or not written by bbu; {RETRAIN_HINT}"
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {file}: {exc}", hint=hint) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{file} is not a {FORMAT} description", hint=hint)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{file}: checkpoint format version {meta.get('format_version')!r} is not "
            f"{FORMAT_VERSION} (written by bbucli {meta.get('bbucli_version')})",
            hint="load it with the bbucli version that wrote it",
        )
    return meta


def check_head_state(
    state: Mapping[str, torch.Tensor], config: HeadConfig, file: Path, hint: str
) -> None:
    """ModelError unless `state` has exactly the names and shapes of a head built from `config`
    (checked on the meta device, before any weight loads)."""
    import torch

    from bbucli.model.head import DetectionHead

    with torch.device("meta"):
        expected = DetectionHead(config).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} (config: {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        raise ModelError(
            f"{file} does not fit the head config in {META_FILE}: missing {few_names(missing)}; "
            f"unexpected {few_names(unexpected)}; other shapes {few_names(mismatched)}",
            hint=hint,
        )


def parse_config(text: str | None, folder: Path) -> Mapping[str, Any]:
    if text is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelError(f"{folder / CONFIG_FILE} is not valid YAML: {exc}") from exc
    return data if isinstance(data, dict) else {}


def few_names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit]) or "none"
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
