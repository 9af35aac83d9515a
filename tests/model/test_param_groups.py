"""Parameter groups: every parameter of the tiny BBUModel and of the real 3B/7B names (meta
skeletons, no weights) in exactly one group; per-group learning rates; lr 0 freezes; an unmatched
trainable parameter is an error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bbucli.model.bbu_model import BBUModel
from bbucli.model.head import DetectionHead, HeadConfig
from bbucli.model.loading import load_model, meta_skeleton
from bbucli.model.param_groups import (
    GROUPS,
    build_param_groups,
    group_counts,
    group_parameters,
    parameter_group,
)

LRS = {"vision": 1e-5, "merger": 2e-5, "llm": 3e-5, "detection": 1e-4, "adapter": 2e-4}


@pytest.fixture
def model() -> BBUModel:
    torch.manual_seed(0)
    return BBUModel.from_qwen(load_model("tiny", seed=0), width=32, layers=1, heads=4, ffn=64)


def real_named(size: str):
    """The 3B/7B parameter names as BBUModel holds them, with a default-sized head (captions on)."""
    qwen = meta_skeleton(size)
    with torch.device("meta"):
        head = DetectionHead(
            HeadConfig(llm_hidden=qwen.config.text_config.hidden_size, caption_vocab_size=300)
        )
    return [("qwen." + n, p) for n, p in qwen.named_parameters()] + [
        ("head." + n, p) for n, p in head.named_parameters()
    ]


def assert_partition(named) -> dict[str, tuple[int, int]]:
    groups = group_parameters(named)
    seen = [id(p) for members in groups.values() for _, p in members]
    assert len(seen) == len(set(seen)) == len({id(p) for _, p in named})
    assert all(groups[g] for g in GROUPS), {g: len(m) for g, m in groups.items()}
    return group_counts(named)


def test_tiny_model_parameters_fall_in_exactly_one_group(model) -> None:
    counts = assert_partition(list(model.named_parameters()))
    print("\ntiny:", counts)
    assert sum(n for _, n in counts.values()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_real_parameter_names_fall_in_exactly_one_group(size) -> None:
    named = real_named(size)
    counts = assert_partition(named)
    print(f"\n{size}:", counts)
    total = sum(n for _, n in counts.values())
    qwen_total = sum(p.numel() for n, p in named if n.startswith("qwen."))
    # Qwen2.5-VL-3B-Instruct has 3.75B parameters, 7B 8.29B (tied embeddings counted once in 3B).
    assert round(qwen_total / 1e9, 2) == {"3b": 3.75, "7b": 8.29}[size]
    assert total > qwen_total
    names = dict(named)
    assert parameter_group("qwen.model.visual.patch_embed.proj.weight") == "vision"
    assert parameter_group("qwen.model.visual.blocks.31.mlp.down_proj.weight") == "vision"
    assert parameter_group("qwen.model.visual.merger.mlp.2.weight") == "merger"
    assert parameter_group("qwen.model.language_model.embed_tokens.weight") == "llm"
    assert ("qwen.lm_head.weight" in names) == (size == "7b")  # 3B ties lm_head to embeddings


def test_head_parameters_follow_the_heads_rule(model) -> None:
    for name, _ in model.named_parameters():
        if name.startswith("head."):
            expected = "adapter" if "_adapter." in name else "detection"
            assert parameter_group(name) == expected, name


def test_build_param_groups_sets_rates_and_weight_decay(model) -> None:
    groups = build_param_groups(model, LRS, weight_decay=0.05)
    assert {g["group"] for g in groups} == set(GROUPS)
    for g in groups:
        assert g["lr"] == LRS[g["group"]]
        assert g["weight_decay"] == (0.0 if g["name"].endswith(".no_decay") else 0.05)
        assert all((p.ndim < 2) == g["name"].endswith(".no_decay") for p in g["params"])
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in model.parameters())
    torch.optim.AdamW(groups)  # torch accepts the extra "name"/"group" keys


def test_zero_learning_rate_freezes_the_group(model) -> None:
    groups = build_param_groups(model, {**LRS, "vision": 0.0, "llm": 0.0}, weight_decay=0.0)
    assert {g["group"] for g in groups} == {"merger", "detection", "adapter"}
    for name, param in model.named_parameters():
        frozen = parameter_group(name) in ("vision", "llm")
        assert param.requires_grad == (not frozen), name
    # Frozen parameters do not move when the rest trains.
    before = model.qwen.model.visual.blocks[0].mlp.up_proj.weight.clone()
    opt = torch.optim.AdamW(groups)
    loss = sum(p.float().sum() for g in groups for p in g["params"])
    loss.backward()
    opt.step()
    assert torch.equal(before, model.qwen.model.visual.blocks[0].mlp.up_proj.weight)


def test_unmatched_trainable_parameter_is_named(model) -> None:
    model.extra_scale = nn.Parameter(torch.ones(3))
    with pytest.raises(KeyError, match="extra_scale"):
        build_param_groups(model, LRS, weight_decay=0.0)
    model.extra_scale.requires_grad_(False)  # a frozen stray parameter is simply not trained
    groups = build_param_groups(model, LRS, weight_decay=0.0)
    assert all(p is not model.extra_scale for g in groups for p in g["params"])


def test_learning_rates_must_name_every_group(model) -> None:
    with pytest.raises(KeyError, match="missing: \\['adapter'\\]"):
        build_param_groups(model, {k: v for k, v in LRS.items() if k != "adapter"}, 0.0)
    with pytest.raises(KeyError, match="unknown: \\['decoder'\\]"):
        build_param_groups(model, {**LRS, "decoder": 1e-4}, 0.0)
    with pytest.raises(ValueError, match="negative"):
        build_param_groups(model, {**LRS, "llm": -1.0}, 0.0)
