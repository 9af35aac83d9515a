"""Training configs: every class of problem is reported with its YAML path, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bbucli.errors import ConfigError
from bbucli.train.config.loading import (
    InvalidConfigError,
    load_config,
)
from tests.train.config.config_files import (
    minimal,
    problems_of,
    write,
)

# --- problems, one class at a time --------------------------------------------------------


def test_unknown_keys_suggest_the_closest(tmp_path: Path, data_dir: Path):
    body = minimal(optim={"lrs": {"lmm": 2e-5}}, train={"learning_rat": 1e-4, "num_train_epoch": 3})
    body["modle"] = {}
    found = problems_of(write(tmp_path, body), target="cpu")
    assert found["optim.lrs.lmm"] == "unknown key, did you mean 'llm'?"
    assert found["train.learning_rat"].startswith("unknown key, did you mean 'learning_rate'?")
    assert "optim.lrs" in found["train.learning_rat"]  # it also says where LRs really go
    assert found["train.num_train_epoch"] == "unknown key, did you mean 'num_train_epochs'?"
    assert found["modle"] == "unknown key, did you mean 'model'?"


def test_keys_owned_by_other_sections_are_refused(tmp_path: Path, data_dir: Path):
    body = minimal(train={"learning_rate": 1e-4, "seed": 1, "deepspeed": "x.json"})
    found = problems_of(write(tmp_path, body), target="cpu")
    assert "optim.lrs" in found["train.learning_rate"]
    assert "model.seed" in found["train.seed"]
    assert "deepspeed section" in found["train.deepspeed"]


def test_wrong_types(tmp_path: Path, data_dir: Path):
    body = minimal(
        model={"attn": "spda", "seed": 1.5},
        data={"packing": "yes please", "max_tokens": "4096"},
        train={
            "num_train_epochs": "3",
            "bf16": 1,
            "report_to": ["tensorboard", 3],
            "lr_scheduler_type": "cosin",
        },
    )
    found = problems_of(write(tmp_path, body), target="cpu")
    assert "did you mean 'sdpa'" in found["model.attn"]
    assert "valid integer" in found["model.seed"]
    assert "valid boolean" in found["data.packing"]
    assert "valid integer" in found["data.max_tokens"] and "'4096'" in found["data.max_tokens"]
    assert found["train.num_train_epochs"] == "expected float, got str '3'"
    assert found["train.bf16"] == "expected bool, got int 1"
    assert "list of str" in found["train.report_to"]
    assert (
        found["train.lr_scheduler_type"] == "'cosin' is not a valid value, did you mean 'cosine'?"
    )


def test_out_of_range_values(tmp_path: Path, data_dir: Path):
    body = minimal(
        loss={"teacher_weight": -1},
        optim={"betas": [0.9, 1.5]},
        detection={"width": 250, "text_layer": 0},
        model={"min_pixels": 100},
    )
    found = problems_of(write(tmp_path, body), target="cpu")
    assert "greater than or equal to 0" in found["loss.teacher_weight"]
    assert "[0, 1)" in found["optim.betas[1]"]
    assert "divisible" in found["detection.width"]
    assert "1..2 or -2..-1" in found["detection.text_layer"]  # the tiny model has 2 layers
    assert "3136 <= min_pixels" in found["model.min_pixels"]


def test_missing_files(tmp_path: Path):
    body = minimal(model={"path": "no/such/model"}, train={"resume": "no/ckpt"})
    body["deepspeed"] = "no/zero2.json"
    found = problems_of(write(tmp_path, body), target="cpu")
    assert f"{tmp_path}/no/such/model does not exist" in found["model.path"]
    assert f"{tmp_path}/data/bbu.jsonl does not exist" in found["data.train"]
    assert "data.val" in found and "data.teachers" in found
    assert "no/zero2.json does not exist" in found["deepspeed"]
    assert "no/ckpt does not exist" in found["train.resume"]


def test_missing_required(tmp_path: Path):
    found = problems_of(
        write(tmp_path, {"model": {"path": "tiny"}, "train": {"num_train_epochs": 1}})
    )
    assert found["data"] == "required section is missing"
    assert found["train.output_dir"] == "required"


@pytest.mark.parametrize(
    "sections, overrides, target, path, words",
    [
        ({}, ["train.bf16=true"], "cpu", "train.bf16", "CPU-only run"),
        ({}, ["model.dtype=bf16"], "cpu", "model.dtype", "CPU-only run"),
        (
            {},
            ["model.attn=flash_attention_2", "model.dtype=bf16"],
            "gpu",
            "model.attn",
            "flash-attn",
        ),
        ({}, ["model.attn=flash_attention_2"], "cpu", "model.attn", "CUDA GPU"),
        (
            {},
            ["train.per_device_train_batch_size=2"],
            "cpu",
            "train.per_device_train_batch_size",
            "packing",
        ),
        ({}, ["data.batch_size=4"], "cpu", "data.batch_size", "packing"),
        (
            {},
            ["data.packing=false", "train.per_device_train_batch_size=2"],
            "cpu",
            "train.per_device_train_batch_size",
            "conflicts with data.batch_size",
        ),
        (
            {},
            ["data.max_tokens_per_batch=2048"],
            "cpu",
            "data.max_tokens_per_batch",
            "< data.max_tokens 4096",
        ),
        ({}, ["data.max_tokens=256"], "cpu", "data.max_tokens", "cannot hold one image"),
        (
            {},
            ["data.teachers=null", "data.teacher_resample=true"],
            "cpu",
            "data.teacher_resample",
            "teachers",
        ),
        (
            {},
            ["data.val=null", "train.eval_strategy=steps"],
            "cpu",
            "train.eval_strategy",
            "data.val",
        ),
        (
            {},
            ["optim.lrs={vision: 0, merger: 0, llm: 0, detection: 0, adapter: 0}"],
            "cpu",
            "optim.lrs",
            "nothing would train",
        ),
        ({}, ["model.dtype=bf16", "train.fp16=true"], "gpu", "model.dtype", "unscale"),
        (
            {"deepspeed": {"bf16": {"enabled": True}}},
            ["model.dtype=fp16", "train.bf16=true"],
            "gpu",
            "model.dtype",
            "fp16 weights",
        ),
        (
            {"deepspeed": {"bf16": {"enabled": "auto"}}},
            ["model.dtype=fp16", "train.bf16=true"],
            "gpu",
            "model.dtype",
            "DeepSpeed bf16",
        ),
        (
            {"deepspeed": {"bf16": {"enabled": True}}},
            [],
            "gpu",
            "deepspeed.bf16.enabled",
            "disagrees with train.bf16",
        ),
        ({}, ["train.resume=true"], "cpu", "train.resume", "holds no checkpoint-* folder"),
        (
            {"deepspeed": {"zero_optimization": {"stage": 4}}},
            [],
            "cpu",
            "deepspeed.zero_optimization.stage",
            "0, 1, 2 or 3",
        ),
        (
            {"deepspeed": {"optimizer": {"type": "AdamW"}}},
            [],
            "cpu",
            "deepspeed.optimizer",
            "optim.lrs",
        ),
    ],
)
def test_impossible_combinations(tmp_path, data_dir, sections, overrides, target, path, words):
    body = minimal()
    body.update(sections)
    found = problems_of(write(tmp_path, body), overrides, target=target)
    assert path in found, found
    assert words in found[path]


def test_use_cpu_makes_a_cpu_run_even_for_a_gpu_target(tmp_path: Path, data_dir: Path):
    found = problems_of(
        write(tmp_path, minimal(train={"use_cpu": True, "bf16": True})), target="gpu"
    )
    assert "CPU-only run" in found["train.bf16"]


def test_deepspeed_json_is_parsed(tmp_path: Path, data_dir: Path):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2,}}')
    body = minimal()
    body["deepspeed"] = "ds.json"
    found = problems_of(write(tmp_path, body), target="cpu")
    assert "ds.json:1:" in found["deepspeed"] and "invalid JSON" in found["deepspeed"]
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    assert load_config(tmp_path / "run.yaml", target="cpu").deepspeed == tmp_path / "ds.json"


def test_every_problem_in_one_error(tmp_path: Path):
    body = minimal(
        model={"attn": "spda"},
        optim={"lrs": {"llm": -1}},
        train={"learning_rat": 1e-4, "bf16": True, "per_device_train_batch_size": 2},
    )
    body["deepspeed"] = {"zero_optimization": {"stage": 7}}
    path = write(tmp_path, body)
    with pytest.raises(InvalidConfigError) as info:
        load_config(path, ["data.max_tokens_per_batch=16", "optim.weight_decya=0.1"], target="cpu")
    exc = info.value
    assert isinstance(exc, ConfigError) and exc.exit_code == 2
    paths = [p.where for p in exc.problems]
    assert paths == [
        "model.attn",
        "data.max_tokens_per_batch",
        "data.train",
        "data.val",
        "data.teachers",
        "optim.lrs.llm",
        "optim.weight_decya",
        "train.learning_rat",
        "train.bf16",
        "train.per_device_train_batch_size",
        "deepspeed.zero_optimization.stage",
    ]
    text = str(exc)
    assert text.startswith(f"invalid config {path} (11 problems):\n  model.attn: ")
    assert (
        "\n  optim.weight_decya: unknown key, did you mean 'weight_decay'? (from an override)"
        in text
    )
    assert "\n  train.learning_rat: unknown key, did you mean 'learning_rate'?" in text


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path):
    path = write(tmp_path, "model:\n  path: tiny\n  dtype: [fp32\ntrain:\n  output_dir: out\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.exit_code == 2
    assert info.value.message.startswith(f"{path}:4:6: YAML syntax error: expected ',' or ']'")


def test_duplicate_yaml_keys_are_reported(tmp_path: Path, data_dir: Path):
    text = yaml.safe_dump(minimal(), sort_keys=False) + "model:\n  path: tiny\n"
    line = text.count("\n") - 1
    found = problems_of(write(tmp_path, text), target="cpu")
    assert found == {f"line {line}": "duplicate key 'model' (only the last one would count)"}


def test_top_level_must_be_a_mapping(tmp_path: Path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
