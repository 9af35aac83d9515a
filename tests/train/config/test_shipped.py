"""Training configs: every shipped config (and DeepSpeed JSON) validates, and the schema mirrors
the code it configures (head config, loss weights and costs, parameter groups)."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import yaml

from bbucli.train.config.loading import (
    DetectionSection,
    LearningRates,
    LossSection,
    load_config,
)
from tests.train.config.config_files import (
    CONFIGS,
    REPO,
    SHIPPED,
    problems_of,
)

# --- shipped configs -----------------------------------------------------------------------


def test_configs_are_shipped():
    assert {p.name for p in SHIPPED} >= {"tiny.yaml", "3b.yaml", "7b.yaml"}
    assert (CONFIGS / "deepspeed/zero2.json").is_file() and (
        CONFIGS / "deepspeed/zero3.json"
    ).is_file()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path):
    # Model folders and converted data live outside the repo: check_paths=False skips their
    # existence (the DeepSpeed JSON is still read). A mixed-precision config is meant for a GPU
    # node and validates "as if on a GPU"; test_gpu_config_on_cpu_reports_bf16 covers the rest.
    train = yaml.safe_load(path.read_text())["train"]
    target = "gpu" if train.get("bf16") or train.get("fp16") else "cpu"
    cfg = load_config(path, target=target, check_paths=False)
    assert cfg.train.output_dir.is_absolute() and cfg.data.train.is_absolute()
    assert cfg.data.image_root == cfg.data.train.parent
    assert load_config(path, target="gpu", check_paths=False) == cfg  # a CPU config runs on GPU too


def test_tiny_config_with_data_validates_fully(data_dir: Path):
    overrides = [
        f"data.{k}={data_dir / f}"
        for k, f in [
            ("train", "bbu.jsonl"),
            ("val", "bbu.val.jsonl"),
            ("teachers", "bbu.teachers.jsonl"),
        ]
    ]
    cfg = load_config(CONFIGS / "tiny.yaml", overrides, target="cpu")
    assert cfg.model.path == "tiny" and cfg.model.dtype == "fp32" and cfg.data.packing
    assert cfg.deepspeed is None


def test_tiny_config_without_data_names_the_convert_step(tmp_path: Path):
    # Pointed at an empty folder: runs/data/ exists wherever `bbu convert` already ran.
    overrides = [
        f"data.{k}={tmp_path / f}"
        for k, f in [
            ("train", "bbu.jsonl"),
            ("val", "bbu.val.jsonl"),
            ("teachers", "bbu.teachers.jsonl"),
        ]
    ]
    found = problems_of(CONFIGS / "tiny.yaml", overrides, target="cpu")
    assert set(found) == {"data.train", "data.val", "data.teachers"}
    assert f"{tmp_path}/bbu.jsonl does not exist" in found["data.train"]
    assert "bbu convert" in found["data.train"]
    assert (
        load_config(CONFIGS / "tiny.yaml", check_paths=False).data.train
        == REPO / "runs/data/bbu.jsonl"
    )


@pytest.mark.parametrize("name", ["3b.yaml", "7b.yaml"])
def test_gpu_config_on_cpu_reports_bf16(name: str):
    found = problems_of(CONFIGS / name, target="cpu", check_paths=False)
    assert "CPU-only run" in found["train.bf16"]
    assert "CPU-only run" in found["model.dtype"]


@pytest.mark.parametrize("name", ["3b.yaml", "7b.yaml"])
def test_gpu_config_structure(name: str):
    cfg = load_config(CONFIGS / name, target="gpu", check_paths=False)
    assert cfg.model.path.startswith("/models/Qwen2.5-VL-")
    assert cfg.model.dtype == "bf16" and cfg.model.attn == "auto"
    assert cfg.deepspeed == CONFIGS / "deepspeed/zero2.json"
    assert cfg.train.model_extra["bf16"] is True
    assert cfg.train.model_extra["activation_checkpointing"] is True
    lrs = cfg.optim.lrs
    assert lrs.llm == 1e-5 and lrs.detection == 1e-4 and lrs.vision <= 2e-6
    # Without check_paths=False the absent model folder is reported.
    found = problems_of(CONFIGS / name, target="gpu")
    assert "Qwen2.5-VL" in found["model.path"] and "does not exist" in found["model.path"]


@pytest.mark.parametrize("name, stage", [("zero2.json", 2), ("zero3.json", 3)])
def test_deepspeed_jsons(name: str, stage: int):
    ds = json.loads((CONFIGS / "deepspeed" / name).read_text())
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["bf16"]["enabled"] == "auto" and ds["train_micro_batch_size_per_gpu"] == "auto"
    assert "optimizer" not in ds  # bbu builds the optimizer (per-group learning rates)


# --- the schema mirrors the code ----------------------------------------------------------


def test_detection_section_mirrors_head_config():
    from bbucli.model.head import HeadConfig

    defaults = {f.name: f.default for f in dataclasses.fields(HeadConfig)}
    section = DetectionSection()
    for name, value in section.model_dump(
        exclude={"text_layer", "captions", "vision_source"}
    ).items():
        assert defaults[name] == value, name
    head = section.head_config(llm_hidden=128, caption_vocab_size=40)
    assert head.llm_hidden == 128 and head.caption_vocab_size == 40
    assert DetectionSection(captions=False).head_config(128, 40).caption_vocab_size == 0


def test_loss_section_mirrors_the_multitask_loss():
    multitask = pytest.importorskip("bbucli.loss.multitask")
    weights = {f.name: f.default for f in dataclasses.fields(multitask.LossWeights)}
    section = LossSection().model_dump()
    assert {name: section[name] for name in weights} == weights
    matcher = pytest.importorskip("bbucli.loss.matcher").HungarianMatcher
    costs = {f.name: f.default for f in dataclasses.fields(matcher)}
    assert {name: section[name] for name in costs} == costs
    kwargs = inspect.signature(multitask.MultiTaskLoss).parameters
    for name in ("aux", "token_aux"):
        assert section[name] == kwargs[name].default, name


def test_learning_rates_name_the_parameter_groups():
    param_groups = pytest.importorskip("bbucli.model.param_groups")
    assert tuple(LearningRates.model_fields) == param_groups.GROUPS


@pytest.mark.parametrize("name", ["3b.yaml", "7b.yaml"])
def test_gpu_configs_carry_the_small_object_recipe_the_demo_measured(name: str):
    """BBU screws on a 1024-token photo are 15-25 px, the size on which the demo measured the
    pixel stem (AP50 0.2 -> 0.68): the GPU configs run the demo's recipe, and say how to run
    themselves."""
    from bbucli.demo.run import DEMO_OVERRIDES

    cfg = load_config(CONFIGS / name, target="gpu", check_paths=False)
    assert cfg.detection.stem_width > 0 and cfg.detection.token_boxes and cfg.loss.cost_center > 0
    for key, value in (
        ("detection.stem_width", cfg.detection.stem_width),
        ("detection.token_boxes", "true"),
        ("loss.cost_center", f"{cfg.loss.cost_center:g}"),
    ):
        assert f"{key}={value}" in DEMO_OVERRIDES
    assert f"bbu train configs/{name} " in (CONFIGS / name).read_text()
