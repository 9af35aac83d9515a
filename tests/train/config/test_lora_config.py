"""`model.lora` validation: a target that names no module is listed with every valid target, and
adapters in a group whose learning rate is 0 are refused."""

from __future__ import annotations

from pathlib import Path

from bbucli.model.lora import valid_targets
from bbucli.train.config.loading import load_config
from tests.train.config.config_files import minimal, problems_of, write


def test_a_target_that_names_no_module_lists_the_valid_ones(tmp_path: Path, data_dir: Path):
    body = minimal(model={"lora": {"targets": ["q_proj", "qkv_proj"]}})
    problems = problems_of(write(tmp_path, body), target="cpu")
    message = problems["model.lora.targets"]
    assert "qkv_proj" in message and "q_proj," not in message.split(";")[0]
    for name in valid_targets():
        assert name in message
    assert "visual.qkv" in valid_targets() and "gate_proj" in valid_targets()


def test_adapters_in_a_frozen_group_are_refused(tmp_path: Path, data_dir: Path):
    body = minimal(model={"lora": {"targets": ["q_proj", "visual.qkv"]}})
    problems = problems_of(write(tmp_path, body), target="cpu")  # optim.lrs.vision is 0
    assert "optim.lrs.vision" in problems and "optim.lrs.llm" not in problems
    cfg = load_config(write(tmp_path, minimal(model={"lora": {"r": 2}})), target="cpu")
    assert cfg.model.lora is not None and cfg.model.lora.targets[0] == "q_proj"
