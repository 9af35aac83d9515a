"""The weights a Trainer checkpoint of a run without DeepSpeed keeps for resuming
(`checkpoint-N/model.safetensors`): what trains and the buffers. Frozen parameters (a LoRA run's
base, groups with learning rate 0, parameters the loss never reaches) never change; the resumed
run rebuilds them from `model.path` and the seed, and the Trainer's loader accepts their absence
because the model lists them in `_keys_to_ignore_on_save` (3B with LoRA: adapters, merger and
head, a few hundred MB, without the 7.5 GB base)."""

from __future__ import annotations

import torch


def frozen_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the parameters that do not train (tied names included)."""
    return sorted(
        name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad
    )


def resume_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on the CPU without the frozen parameters (`_keys_to_ignore_on_save`), tied
    tensors (embeddings and lm_head) stored once each (safetensors refuses shared storage)."""
    state, seen = {}, set()
    skip = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    for key, value in model.state_dict().items():
        if key in skip:
            continue
        value = value.detach().to("cpu").contiguous()
        ptr = value.untyped_storage().data_ptr()
        state[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    return state
