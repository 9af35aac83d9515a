"""The flag conventions every `bbu` command keeps, checked by walking every command (a new one is
checked too): `-h` is `--help`; a flag shows no `<bool>` value placeholder; what a command writes
is named by `--out/-o` (its main output) or `--render` (a folder of pictures), and a positional
output only survives as the documented older spelling of --out; a score threshold is
range-checked before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main
from typer.core import TyperArgument, TyperOption
from typer.testing import CliRunner

from bbucli.cli.app import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "raw"
runner = CliRunner()
GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)


def help_of(*args: str) -> str:
    result = runner.invoke(app, [*args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_walked():
    assert {"convert", "inspect", "train", "eval", "predict", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize(
    "command", [[], *[[name] for name in COMMANDS]], ids=lambda c: c[0] if c else "bbu"
)
def test_dash_h_is_help_and_flags_show_no_placeholder(command):
    long = help_of(*command, "--help")
    assert help_of(*command, "-h") == long
    assert "<bool>" not in long
    assert "-h" in long


@pytest.mark.parametrize("name", COMMANDS)
def test_outputs_are_named_by_out_or_render(name):
    params = GROUP.commands[name].params
    for param in params:
        if isinstance(param, TyperOption) and "--out" in param.opts:
            assert "-o" in param.opts, f"{name} --out lacks -o"
        if isinstance(param, TyperOption) and "--render" in param.opts:
            assert param.help.lower().startswith("folder"), f"{name} --render must name a folder"
        if isinstance(param, TyperArgument) and param.name.startswith("out"):
            assert "older spelling of --out" in param.help, f"{name}: a positional output"
            assert any("--out" in p.opts for p in params if isinstance(p, TyperOption))


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--threshold", "2"], "--threshold 2 is out of range: head scores lie in [0, 1]"),
        (["--threshold", "-0.1"], "--threshold -0.1 is out of range: head scores lie in [0, 1]"),
        (
            ["--source", "lm", "--threshold", "0.5"],
            "--threshold 0.5 is out of range: lm scores lie <= 0",
        ),
        (["-t", "nan"], "--threshold nan is out of range"),
    ],
)
def test_predict_threshold_out_of_range_is_refused_before_loading(tmp_path, args, why):
    image = tmp_path / "a.jpeg"
    image.write_bytes(b"not read: the check comes first")
    result = runner.invoke(
        app, ["predict", str(tmp_path), str(image), *args], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {why}")


def test_eval_checkpoint_threshold_out_of_range_is_refused(tmp_path):
    result = runner.invoke(
        app, ["eval", str(tmp_path), "--threshold", "1.5"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2, result.output
    assert "error: --threshold 1.5 is out of range: head scores lie in [0, 1]" in result.output


def test_convert_takes_out_as_an_option_and_still_as_an_argument(tmp_path):
    out = tmp_path / "bbu.jsonl"
    for args in (["--out", str(out)], ["-o", str(out)], [str(out)]):
        result = runner.invoke(
            app, ["convert", str(EXAMPLES), *args, "--dry-run"], env={"COLUMNS": "200"}
        )
        assert result.exit_code == 0, result.output
        assert "dry run" in result.output
    for args in ([], [str(out), "--out", str(out)]):
        result = runner.invoke(
            app, ["convert", str(EXAMPLES), *args, "--dry-run"], env={"COLUMNS": "200"}
        )
        assert result.exit_code == 2, result.output
        [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert "name the train JSONL to write once, with --out OUT.jsonl" in line
    assert not out.exists()
