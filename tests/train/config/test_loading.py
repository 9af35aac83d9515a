"""Training configs: overrides are YAML-typed; paths resolve; the resolved YAML round-trips; a built
config validates and maps to TrainingArguments."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bbucli.train.config.loading import (
    BbuConfig,
    InvalidConfigError,
    build_config,
    describe_config,
    load_config,
    validate_config,
)
from bbucli.train.config.overrides import apply_overrides, dump_yaml, parse_override, parse_yaml
from tests.train.config.config_files import (
    CONFIGS,
    minimal,
    write,
)

# --- YAML typing and overrides ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("2e-5", 2e-5),
        ("1E4", 1e4),
        ("1.5e5", 1.5e5),
        ("-3e-2", -3e-2),
        ("1.0e-05", 1e-5),
        ("42", 42),
        ("0.5", 0.5),
        ("true", True),
        ("null", None),
        ("", None),
        ("[a, 1]", ["a", 1]),
        ("{a: 1}", {"a": 1}),
        ("sdpa", "sdpa"),
        ("1e", "1e"),
        ("e5", "e5"),
        ("no", "no"),
        ("off", "off"),
        ("2024-06-01", "2024-06-01"),
    ],  # YAML 1.1: False, False, a date
)
def test_yaml_values_are_typed(text: str, value):
    parsed, _ = parse_yaml(text)
    assert parsed == value and type(parsed) is type(value)


def test_dump_quotes_what_would_read_back_differently():
    data = {"a": "no", "b": "1e5", "c": "2024-06-01", "d": 2e-5, "e": True, "f": "12"}
    text = dump_yaml(data)
    assert parse_yaml(text)[0] == data and yaml.safe_load(text) == data


def test_exponent_floats_in_files_are_floats(tmp_path: Path, data_dir: Path):
    text = (
        yaml.safe_dump(minimal(), sort_keys=False)
        + "optim:\n  lrs:\n    llm: 2e-5\n    vision: 1e-6\n"
    )
    cfg = load_config(write(tmp_path, text), target="cpu")
    assert cfg.optim.lrs.llm == 2e-5 and cfg.optim.lrs.vision == 1e-6


def test_overrides(tmp_path: Path, data_dir: Path):
    path = write(tmp_path, minimal())
    cfg = load_config(
        path,
        [
            "optim.lrs.llm=2e-5",
            "data.packing=false",
            "data.val=null",
            "train.max_steps=7",
            "train.report_to=[tensorboard]",
            "train.resume=false",
            "detection.captions=false",
            "loss.caption_weight=0",
        ],
        target="cpu",
    )
    assert cfg.optim.lrs.llm == 2e-5
    assert cfg.data.packing is False and cfg.data.val is None
    assert cfg.train.model_extra == {"max_steps": 7, "report_to": ["tensorboard"]}
    assert cfg.detection.captions is False and cfg.loss.caption_weight == 0.0


def test_bad_overrides_are_all_reported(tmp_path: Path, data_dir: Path):
    with pytest.raises(InvalidConfigError) as info:
        load_config(
            write(tmp_path, minimal()),
            [
                "optim.lrs.llm",
                "a..b=1",
                "=3",
                "data.packing=[",
                "model.path.x=1",
                "optim.lrs.lmm=1e-5",
                "train.max_step=3",
            ],
            target="cpu",
        )
    found = [str(p) for p in info.value.problems]
    assert found[:5] == [
        "override: 'optim.lrs.llm': expected key=value (dotted key, YAML value), e.g. optim.lrs.llm=2e-5",
        "override: 'a..b=1': bad key 'a..b': use dotted names like train.max_steps",
        "override: '=3': bad key '': use dotted names like train.max_steps",
        "override: 'data.packing=[': value is not valid YAML (value:1:2: YAML syntax error: "
        "expected the node content, but found '<stream end>')",
        "override: 'model.path.x=1': model.path is 'tiny', not a mapping; override model.path as a whole",
    ]
    assert "optim.lrs.lmm: unknown key, did you mean 'llm'? (from an override)" in found
    assert "train.max_step: unknown key, did you mean 'max_steps'? (from an override)" in found


def test_apply_overrides_leaves_the_input_alone():
    data = {"optim": {"lrs": {"llm": 1e-5}}}
    new, applied, problems = apply_overrides(
        data, ["optim.lrs.llm=3e-5", "deepspeed.zero_optimization.stage=3"]
    )
    assert data == {"optim": {"lrs": {"llm": 1e-5}}} and not problems
    assert new == {
        "optim": {"lrs": {"llm": 3e-5}},
        "deepspeed": {"zero_optimization": {"stage": 3}},
    }
    assert applied == [("optim", "lrs", "llm"), ("deepspeed", "zero_optimization", "stage")]
    assert parse_override("train.report_to=[a, b]") == (("train", "report_to"), ["a", "b"])


# --- paths, round trip, helpers -------------------------------------------------------------


def test_relative_paths(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    body = minimal(
        data={"train": "../data/bbu.jsonl", "val": None, "teachers": None},
        train={"output_dir": "../runs/x"},
    )
    body["deepspeed"] = str(CONFIGS / "deepspeed/zero2.json")
    path = write(tmp_path, body, name="configs/run.yaml")
    cfg = load_config(path, target="cpu")
    assert cfg.data.train == data_dir / "bbu.jsonl"
    assert cfg.data.image_root == data_dir
    assert cfg.train.output_dir == tmp_path / "runs/x"
    # Overrides resolve against the working directory, as a shell user expects.
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        path, ["data.val=data/bbu.val.jsonl", "train.output_dir=elsewhere"], target="cpu"
    )
    assert cfg.data.val == data_dir / "bbu.val.jsonl"
    assert cfg.train.output_dir == tmp_path / "elsewhere"


@pytest.mark.parametrize("inline_ds", [False, True])
def test_to_yaml_round_trip(tmp_path: Path, data_dir: Path, inline_ds: bool):
    body = minimal(
        train={"num_train_epochs": 2, "lr_scheduler_type": "cosine", "warmup_steps": 0.1},
        optim={"lrs": {"llm": 2e-5}},
    )
    body["deepspeed"] = (
        {"zero_optimization": {"stage": 2}, "bf16": {"enabled": "auto"}} if inline_ds else None
    )
    cfg = load_config(write(tmp_path, body), target="cpu")
    text = cfg.to_yaml()
    again = load_config(write(tmp_path / "elsewhere", text), target="cpu")
    assert again == cfg
    assert again.to_yaml() == text
    resolved = yaml.safe_load(text)
    assert list(resolved) == ["model", "data", "detection", "loss", "optim", "train", "deepspeed"]
    assert list(resolved["train"])[:2] == ["output_dir", "resume"]
    assert resolved["data"]["train"] == str(data_dir / "bbu.jsonl")
    described = describe_config(cfg)
    assert described.startswith("# bbu ") and described.endswith(text)


def test_validate_config_of_a_built_config(tmp_path: Path, data_dir: Path):
    cfg = build_config(minimal(), base_dir=tmp_path, target="cpu")
    assert isinstance(cfg, BbuConfig)
    assert validate_config(cfg, target="cpu") == []
    assert [
        p.where
        for p in validate_config(
            cfg.model_copy(update={"deepspeed": tmp_path / "x.json"}), target="cpu"
        )
    ] == ["deepspeed"]


def test_training_arguments_mapping(tmp_path: Path, data_dir: Path):
    cfg = load_config(
        write(tmp_path, minimal(train={"max_steps": 3})), ["model.seed=5"], target="cpu"
    )
    kwargs = cfg.training_arguments()
    assert kwargs["output_dir"] == str(tmp_path / "out") and kwargs["max_steps"] == 3
    assert kwargs["seed"] == 5 and kwargs["per_device_train_batch_size"] == 1
    assert kwargs["adam_beta2"] == cfg.optim.betas[1] and kwargs["dataloader_num_workers"] == 0
    assert "resume" not in kwargs and "deepspeed" not in kwargs
