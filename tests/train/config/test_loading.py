"""Training configs: every shipped config validates; every class of problem is reported with its
YAML path, all at once; overrides are YAML-typed; paths resolve; the resolved YAML round-trips."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import yaml

from bbucli.errors import ConfigError
from bbucli.train.config.loading import (
    BbuConfig,
    DetectionSection,
    InvalidConfigError,
    LearningRates,
    LossSection,
    build_config,
    describe_config,
    load_config,
    validate_config,
)
from bbucli.train.config.overrides import apply_overrides, dump_yaml, parse_override, parse_yaml

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A folder with the three JSONL files `bbu convert` writes (contents are not read here)."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("bbu.jsonl", "bbu.val.jsonl", "bbu.teachers.jsonl"):
        (folder / name).write_text("", encoding="utf-8")
    return folder


def write(tmp_path: Path, body: dict | str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    text = body if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def minimal(**sections) -> dict:
    """A valid CPU config with data/bbu*.jsonl next to the YAML, updated per section."""
    cfg = {
        "model": {"path": "tiny", "dtype": "fp32", "attn": "sdpa"},
        "data": {
            "train": "data/bbu.jsonl",
            "val": "data/bbu.val.jsonl",
            "teachers": "data/bbu.teachers.jsonl",
        },
        "train": {"output_dir": "out"},
    }
    for name, values in sections.items():
        cfg[name] = values if not isinstance(cfg.get(name), dict) else {**cfg[name], **values}
    return cfg


def problems_of(path: Path, overrides=(), **kwargs) -> dict[str, str]:
    with pytest.raises(InvalidConfigError) as info:
        load_config(path, overrides, **kwargs)
    return {p.path: p.message for p in info.value.problems}


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
    overrides = [f"data.{k}={data_dir / f}" for k, f in
                 [("train", "bbu.jsonl"), ("val", "bbu.val.jsonl"), ("teachers", "bbu.teachers.jsonl")]]  # fmt: skip
    cfg = load_config(CONFIGS / "tiny.yaml", overrides, target="cpu")
    assert cfg.model.path == "tiny" and cfg.model.dtype == "fp32" and cfg.data.packing
    assert cfg.deepspeed is None


def test_tiny_config_without_data_names_the_convert_step(tmp_path: Path):
    # Pointed at an empty folder: runs/data/ exists wherever `bbu convert` already ran.
    overrides = [f"data.{k}={tmp_path / f}" for k, f in
                 [("train", "bbu.jsonl"), ("val", "bbu.val.jsonl"), ("teachers", "bbu.teachers.jsonl")]]  # fmt: skip
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
        train={"num_train_epochs": "3", "bf16": 1, "report_to": ["tensorboard", 3],
               "lr_scheduler_type": "cosin"},
    )  # fmt: skip
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
        ({}, ["model.attn=flash_attention_2", "model.dtype=bf16"], "gpu", "model.attn", "flash-attn"),
        ({}, ["model.attn=flash_attention_2"], "cpu", "model.attn", "CUDA GPU"),
        ({}, ["train.per_device_train_batch_size=2"], "cpu", "train.per_device_train_batch_size", "packing"),
        ({}, ["data.batch_size=4"], "cpu", "data.batch_size", "packing"),
        ({}, ["data.packing=false", "train.per_device_train_batch_size=2"], "cpu",
         "train.per_device_train_batch_size", "conflicts with data.batch_size"),
        ({}, ["data.max_tokens_per_batch=2048"], "cpu", "data.max_tokens_per_batch", "< data.max_tokens 4096"),
        ({}, ["data.max_tokens=256"], "cpu", "data.max_tokens", "cannot hold one image"),
        ({}, ["data.teachers=null", "data.teacher_resample=true"], "cpu", "data.teacher_resample", "teachers"),
        ({}, ["data.val=null", "train.eval_strategy=steps"], "cpu", "train.eval_strategy", "data.val"),
        ({}, ["optim.lrs={vision: 0, merger: 0, llm: 0, detection: 0, adapter: 0}"], "cpu", "optim.lrs", "nothing would train"),
        ({}, ["model.dtype=bf16", "train.fp16=true"], "gpu", "model.dtype", "unscale"),
        ({"deepspeed": {"bf16": {"enabled": True}}}, ["model.dtype=fp16", "train.bf16=true"], "gpu",
         "model.dtype", "fp16 weights"),
        ({"deepspeed": {"bf16": {"enabled": "auto"}}}, ["model.dtype=fp16", "train.bf16=true"], "gpu",
         "model.dtype", "DeepSpeed bf16"),
        ({"deepspeed": {"bf16": {"enabled": True}}}, [], "gpu", "deepspeed.bf16.enabled", "disagrees with train.bf16"),
        ({}, ["train.resume=true"], "cpu", "train.resume", "holds no checkpoint-* folder"),
        ({"deepspeed": {"zero_optimization": {"stage": 4}}}, [], "cpu", "deepspeed.zero_optimization.stage", "0, 1, 2 or 3"),
        ({"deepspeed": {"optimizer": {"type": "AdamW"}}}, [], "cpu", "deepspeed.optimizer", "optim.lrs"),
    ],
)  # fmt: skip
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
    paths = [p.path for p in exc.problems]
    assert paths == [
        "model.attn",
        "data.max_tokens_per_batch", "data.train", "data.val", "data.teachers",
        "optim.lrs.llm", "optim.weight_decya",
        "train.learning_rat", "train.bf16", "train.per_device_train_batch_size",
        "deepspeed.zero_optimization.stage",
    ]  # fmt: skip
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


# --- YAML typing and overrides ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [("2e-5", 2e-5), ("1E4", 1e4), ("1.5e5", 1.5e5), ("-3e-2", -3e-2), ("1.0e-05", 1e-5),
     ("42", 42), ("0.5", 0.5), ("true", True), ("null", None), ("", None), ("[a, 1]", ["a", 1]),
     ("{a: 1}", {"a": 1}), ("sdpa", "sdpa"), ("1e", "1e"), ("e5", "e5"),
     ("no", "no"), ("off", "off"), ("2024-06-01", "2024-06-01")],  # YAML 1.1: False, False, a date
)  # fmt: skip
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
        ["optim.lrs.llm=2e-5", "data.packing=false", "data.val=null", "train.max_steps=7",
         "train.report_to=[tensorboard]", "train.resume=false", "detection.captions=false",
         "loss.caption_weight=0"],
        target="cpu",
    )  # fmt: skip
    assert cfg.optim.lrs.llm == 2e-5
    assert cfg.data.packing is False and cfg.data.val is None
    assert cfg.train.model_extra == {"max_steps": 7, "report_to": ["tensorboard"]}
    assert cfg.detection.captions is False and cfg.loss.caption_weight == 0.0


def test_bad_overrides_are_all_reported(tmp_path: Path, data_dir: Path):
    with pytest.raises(InvalidConfigError) as info:
        load_config(
            write(tmp_path, minimal()),
            ["optim.lrs.llm", "a..b=1", "=3", "data.packing=[", "model.path.x=1",
             "optim.lrs.lmm=1e-5", "train.max_step=3"],
            target="cpu",
        )  # fmt: skip
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
    body = minimal(data={"train": "../data/bbu.jsonl", "val": None, "teachers": None},
                   train={"output_dir": "../runs/x"})  # fmt: skip
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
    body = minimal(train={"num_train_epochs": 2, "lr_scheduler_type": "cosine", "warmup_steps": 0.1},
                   optim={"lrs": {"llm": 2e-5}})  # fmt: skip
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
        p.path
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


def test_detection_section_mirrors_head_config():
    from bbucli.model.head import HeadConfig

    defaults = {f.name: f.default for f in dataclasses.fields(HeadConfig)}
    section = DetectionSection()
    for name, value in section.model_dump(exclude={"text_layer", "captions", "vision_source"}).items():
        assert defaults[name] == value, name
    head = section.head_config(llm_hidden=128, caption_vocab_size=40)
    assert head.llm_hidden == 128 and head.caption_vocab_size == 40
    assert DetectionSection(captions=False).head_config(128, 40).caption_vocab_size == 0


def test_loss_section_mirrors_the_multitask_loss():
    multitask = pytest.importorskip("bbucli.loss.multitask")
    weights = {f.name: f.default for f in dataclasses.fields(multitask.LossWeights)}
    section = LossSection().model_dump()
    assert {name: section[name] for name in weights} == weights
    kwargs = inspect.signature(multitask.MultiTaskLoss).parameters
    for name in (
        "cost_obj",
        "cost_bbox",
        "cost_giou",
        "cost_center",
        "focal_alpha",
        "focal_gamma",
        "aux",
        "token_aux",
    ):
        assert section[name] == kwargs[name].default, name


def test_learning_rates_name_the_parameter_groups():
    param_groups = pytest.importorskip("bbucli.model.param_groups")
    assert tuple(LearningRates.model_fields) == param_groups.GROUPS
