"""A LoRA run's checkpoint files (`bbucli.model.lora` holds the adapter itself): the adapter in
peft's format and the trained merger instead of qwen/, and the base rebuilt from bbu.json's
`lora` record when loading."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bbucli.errors import ModelError
from bbucli.model.checkpoint_io import quiet_transformers, save_state
from bbucli.model.checkpoint_layout import MERGER_FILE, META_FILE
from bbucli.model.lora import LoraRecord, load_adapter, save_adapter

if TYPE_CHECKING:
    import torch

    from bbucli.model.bbu_model import BBUModel


def save_lora(model: BBUModel, lora: LoraRecord, folder: Path) -> None:
    """The adapter in peft's format, and the merger's weights when it trained."""
    save_adapter(model.qwen, lora.spec, folder, lora.base)
    if lora.merger_trained:
        save_state(model.qwen.model.visual.merger, folder / MERGER_FILE)


def load_lora(
    folder: Path,
    record: Any,
    dtype: torch.dtype | str | None,
    attn_implementation: str | None,
    hint: str,
) -> Any:
    """The base Qwen model of a LoRA checkpoint (`lora.base`, loaded as training loaded it) with
    its adapter (and trained merger) loaded."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from bbucli.model.loading import load_model

    try:
        lora = LoraRecord.from_dict(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{folder / META_FILE}: bad lora record: {exc}", hint=hint) from exc
    if lora.base != "tiny" and not Path(lora.base).is_dir():
        raise ModelError(
            f"checkpoint {folder} is a LoRA adapter of {lora.base}, which does not exist",
            hint="put the base Qwen2.5-VL folder the run trained on back at that path",
        )
    with quiet_transformers():
        qwen = load_model(
            lora.base, dtype=dtype, attn_implementation=attn_implementation, seed=lora.seed
        )
    load_adapter(qwen, lora.spec, folder, lora.base)
    if lora.merger_trained:
        file = folder / MERGER_FILE
        try:
            state = load_file(str(file))
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"cannot read {file}: {exc}", hint=hint) from exc
        merger = qwen.model.visual.merger
        try:
            merger.load_state_dict(
                {k: v.to(next(merger.parameters()).dtype) for k, v in state.items()}
            )
        except RuntimeError as exc:
            raise ModelError(
                f"{file} does not fit the base model's merger: {exc}", hint=hint
            ) from exc
    return qwen
