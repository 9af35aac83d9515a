"""Optimizer parameter groups of BBUModel, each with its own learning rate.

Groups, by parameter name relative to `BBUModel`:
- `vision`: `qwen.model.visual.patch_embed.*`, `qwen.model.visual.blocks.*` (the ViT);
- `merger`: `qwen.model.visual.merger.*` (the patch merger, vision -> LLM width);
- `llm`: `qwen.model.language_model.*` (embeddings, decoder layers, final norm), `qwen.lm_head.*`;
- `adapter` / `detection`: `head.*`, split by `DetectionHead`'s own `parameter_group`.
The rules are exact prefixes: a parameter under none of them (a transformers release that renames
a module, a module added to BBUModel without a rule) is an error, never silently left out of the
optimizer. Tied embeddings (3B, tiny) are one parameter: `named_parameters` yields it once, as
`qwen.model.language_model.embed_tokens.weight`.
LoRA adapters (`bbucli.model.lora`) are injected in place, so their names stay under the module
they wrap (`qwen.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight`) and the
same rules put them in that module's group; the frozen base weights are left out of the optimizer
like any parameter without gradients.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from bbucli.model.head import parameter_group as head_parameter_group

GROUPS = ("vision", "merger", "llm", "detection", "adapter")

_QWEN_RULES: tuple[tuple[str, str], ...] = (
    ("qwen.model.visual.merger.", "merger"),
    ("qwen.model.visual.patch_embed.", "vision"),
    ("qwen.model.visual.blocks.", "vision"),
    ("qwen.model.language_model.", "llm"),
    ("qwen.lm_head.", "llm"),
)
_HEAD_PREFIX = "head."


def parameter_group(name: str) -> str | None:
    """The group of a parameter name relative to `BBUModel`, None when no rule matches."""
    for prefix, group in _QWEN_RULES:
        if name.startswith(prefix):
            return group
    if name.startswith(_HEAD_PREFIX):
        return head_parameter_group(name[len(_HEAD_PREFIX) :])
    return None


def group_parameters(
    named: Iterable[tuple[str, nn.Parameter]],
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Every (name, parameter) under its group (all of `GROUPS` as keys, possibly empty).

    Raises KeyError naming the first parameter that needs gradients and matches no group;
    unmatched frozen parameters are left out."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in GROUPS}
    for name, param in named:
        group = parameter_group(name)
        if group is None:
            if param.requires_grad:
                raise KeyError(
                    f"trainable parameter {name!r} matches no parameter group "
                    f"({', '.join(GROUPS)}); add a rule in bbucli/model/param_groups.py"
                )
            continue
        groups[group].append((name, param))
    return groups


def build_param_groups(
    model: nn.Module, lrs: Mapping[str, float], weight_decay: float
) -> list[dict[str, Any]]:
    """Parameter groups for a torch optimizer over `model` (a `BBUModel`).

    lrs: a learning rate for every group in `GROUPS` (KeyError for a missing or unknown name).
    A group with lr 0 is frozen: its parameters get `requires_grad = False` and are left out.
    Each trained group gives up to two dicts, `name` "<group>" (matrices, `weight_decay`) and
    "<group>.no_decay" (biases, norms, 1-D parameters: weight decay 0, as the transformers Trainer
    does), each with `group`, `lr`, `weight_decay` and `params`. Empty dicts are left out.
    """
    unknown = sorted(set(lrs) - set(GROUPS))
    missing = [g for g in GROUPS if g not in lrs]
    if unknown or missing:
        raise KeyError(
            f"learning rates must name exactly the groups {', '.join(GROUPS)}; "
            f"unknown: {unknown}, missing: {missing}"
        )
    for group, lr in lrs.items():
        if lr < 0:
            raise ValueError(f"learning rate of group {group!r} is negative: {lr}")
    out: list[dict[str, Any]] = []
    for group, members in group_parameters(model.named_parameters()).items():
        lr = float(lrs[group])
        if lr == 0.0:
            for _, param in members:
                param.requires_grad_(False)
            continue
        trainable = [p for _, p in members if p.requires_grad]
        decay = [p for p in trainable if p.ndim >= 2]
        no_decay = [p for p in trainable if p.ndim < 2]
        for suffix, params, wd in (("", decay, weight_decay), (".no_decay", no_decay, 0.0)):
            if params:
                out.append(
                    {
                        "name": group + suffix,
                        "group": group,
                        "lr": lr,
                        "weight_decay": wd,
                        "params": params,
                    }
                )
    return out


def group_counts(named: Iterable[tuple[str, nn.Parameter]]) -> dict[str, tuple[int, int]]:
    """(tensors, elements) per group of `named` parameters (e.g. `model.named_parameters()`)."""
    return {
        group: (len(members), sum(p.numel() for _, p in members))
        for group, members in group_parameters(named).items()
    }
