"""LoRA adapters (peft) on the Qwen2.5-VL part of `BBUModel`: target names, injection, the
adapter's files.

A target names Linear modules by their last name: in the language model's decoder layers
(`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`), or with a
`visual.` prefix in the ViT blocks (`visual.qkv`, `visual.proj`, `visual.gate_proj`, ...).
`valid_targets` lists them, read from the real Qwen2.5-VL class (built on the meta device).

peft injects its layers in place (`inject_adapter_in_model`), so parameter names stay under the
module they wrap: `qwen.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight` is
in the `llm` group, a ViT block's adapter in `vision` (`bbucli.model.param_groups`). Injection
freezes every Qwen weight; only the adapters train (kept fp32 when the base is half).

On disk the adapter is peft's own format, `adapter_config.json` + `adapter_model.safetensors`,
with keys as `PeftModel.save_pretrained` writes them (`base_model.model.<name in Qwen>`), so
`PeftModel.from_pretrained(qwen, folder)` loads it too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bbucli.errors import ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

ADAPTER_NAME = "default"
ADAPTER_CONFIG = "adapter_config.json"  # peft.utils.CONFIG_NAME
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft.utils.SAFETENSORS_WEIGHTS_NAME
VISION_TARGET_PREFIX = "visual."
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Where targets live, relative to Qwen2_5_VLForConditionalGeneration.
_LLM_LAYERS = "model.language_model.layers."
_VISION_BLOCKS = "model.visual.blocks."
# What peft's PeftModel puts before every name in adapter_model.safetensors.
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter: rank `r`, scale `alpha / r`, dropout on the adapter's input, and the
    `targets` (names from `valid_targets`)."""

    r: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]

    def peft_config(self, base: str | None = None) -> Any:
        """The `peft.LoraConfig` of this spec; `base` is recorded as base_model_name_or_path."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=target_pattern(self.targets),
            bias="none",
            base_model_name_or_path=base,
        )


@dataclass(frozen=True)
class LoraRecord:
    """What a checkpoint keeps of a LoRA run (bbu.json `lora`): the adapter's `spec`, the base
    model it adapts (`base`: "tiny" or a folder, the run's model.path, and `seed`, the tiny
    model's weights) and whether the merger's weights were trained (then saved beside it)."""

    spec: LoraSpec
    base: str
    seed: int
    merger_trained: bool

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "r": spec.r,
            "alpha": spec.alpha,
            "dropout": spec.dropout,
            "targets": list(spec.targets),
            "base": self.base,
            "seed": self.seed,
            "merger_trained": self.merger_trained,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> LoraRecord:
        """KeyError/TypeError/ValueError for a record `to_dict` did not write."""
        spec = LoraSpec(
            r=int(record["r"]),
            alpha=float(record["alpha"]),
            dropout=float(record["dropout"]),
            targets=tuple(str(t) for t in record["targets"]),
        )
        return cls(spec, str(record["base"]), int(record["seed"]), bool(record["merger_trained"]))


@functools.lru_cache(maxsize=1)
def valid_targets() -> tuple[str, ...]:
    """Every LoRA target name: the Linear modules of the LLM decoder layers, then those of the
    ViT blocks with the `visual.` prefix, from the Qwen2.5-VL class on the meta device (the names
    are the same for every size)."""
    import torch
    from torch import nn
    from transformers import Qwen2_5_VLForConditionalGeneration

    from bbucli.model.loading import tiny_config

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(tiny_config())
    llm: dict[str, None] = {}
    vision: dict[str, None] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if name.startswith(_LLM_LAYERS):
            llm[leaf] = None
        elif name.startswith(_VISION_BLOCKS):
            vision[VISION_TARGET_PREFIX + leaf] = None
    return (*llm, *vision)


def unknown_targets(targets: Sequence[str]) -> list[str]:
    """The names of `targets` that are not in `valid_targets()`."""
    valid = set(valid_targets())
    return [t for t in targets if t not in valid]


def target_pattern(targets: Sequence[str]) -> str:
    """The regular expression peft full-matches against module names (relative to the Qwen
    model) for `targets`: LLM names only inside decoder layers, `visual.*` only in ViT blocks."""
    llm = sorted({t for t in targets if not t.startswith(VISION_TARGET_PREFIX)})
    vision = sorted(
        {
            t.removeprefix(VISION_TARGET_PREFIX)
            for t in targets
            if t.startswith(VISION_TARGET_PREFIX)
        }
    )
    parts = []
    if llm:
        parts.append(rf"{re.escape(_LLM_LAYERS)}\d+\.\w+\.(?:{'|'.join(llm)})")
    if vision:
        parts.append(rf"{re.escape(_VISION_BLOCKS)}\d+\.\w+\.(?:{'|'.join(vision)})")
    return "|".join(f"(?:{p})" for p in parts)


def apply_lora(qwen: nn.Module, spec: LoraSpec, base: str | None = None) -> None:
    """Inject `spec`'s adapters into `qwen` (a Qwen2_5_VLForConditionalGeneration) in place.
    Every existing weight of `qwen` is frozen; the adapters are trainable and fp32 (a half base
    would otherwise round their small updates away). Adapter A follows peft's kaiming init from
    the global RNG, B starts at zero, so the model's output is unchanged until a step."""
    from peft import inject_adapter_in_model

    bad = unknown_targets(spec.targets)
    if bad or not spec.targets:
        raise ModelError(
            f"LoRA targets {bad or '(none)'} name no module of Qwen2.5-VL",
            hint=f"use some of {', '.join(valid_targets())}",
        )
    inject_adapter_in_model(spec.peft_config(base), qwen, adapter_name=ADAPTER_NAME)
    for name, param in qwen.named_parameters():
        if is_adapter_parameter(name):
            param.data = param.data.float()
            param.requires_grad_(True)
        else:
            param.requires_grad_(False)


def is_adapter_parameter(name: str) -> bool:
    """True for a LoRA weight (`...lora_A.default.weight`, `...lora_B.default.weight`)."""
    return ".lora_A." in name or ".lora_B." in name


def adapter_state(qwen: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of `qwen` as peft saves them: `base_model.model.<name>` without the
    adapter name, on the CPU, contiguous copies."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(qwen, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
    return {_PEFT_PREFIX + k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_adapter(qwen: nn.Module, spec: LoraSpec, folder: Path, base: str | None) -> None:
    """Write `adapter_config.json` (peft's `LoraConfig.save_pretrained`) and
    `adapter_model.safetensors` of `qwen`'s adapter into `folder` (which exists)."""
    from safetensors.torch import save_file

    spec.peft_config(base).save_pretrained(str(folder))
    save_file(adapter_state(qwen), str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def load_adapter(qwen: nn.Module, spec: LoraSpec, folder: Path, base: str | None = None) -> None:
    """Inject `spec`'s adapter into `qwen` and load its weights from `folder`'s
    adapter_model.safetensors; every key must fit (ModelError naming the file otherwise)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = folder / ADAPTER_WEIGHTS
    hint = "the checkpoint is damaged; save it again from its run"
    try:
        saved = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read {file}: {exc}", hint=hint) from exc
    apply_lora(qwen, spec, base)
    expected = set(adapter_state(qwen))
    if set(saved) != expected:
        raise ModelError(
            f"{file} does not fit the LoRA config in bbu.json: missing "
            f"{sorted(expected - set(saved))[:3]}, unexpected {sorted(set(saved) - expected)[:3]}",
            hint=hint,
        )
    state = {k.removeprefix(_PEFT_PREFIX): v for k, v in saved.items()}
    set_peft_model_state_dict(qwen, state, adapter_name=ADAPTER_NAME)
