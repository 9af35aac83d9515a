"""The `bbu` entry point: help lists every stage, --version, and BbuError rendering."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner

from bbucli import __version__
from bbucli.cli.console import handle_errors
from bbucli.errors import ConfigError, DataError

runner = CliRunner()


def test_version_and_help():
    from bbucli.cli.app import app

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"bbu {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in ("convert", "inspect", "train", "eval", "predict", "demo"):
        assert stage in result.output


def _app_raising(exc: Exception) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @handle_errors
    def boom() -> None:
        raise exc

    return app


def test_bbu_error_is_one_red_line_with_hint_and_exit_code():
    result = runner.invoke(_app_raising(DataError("bad.json: truncated", hint="re-export it")))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[0] == "error: bad.json: truncated"
    assert lines[1] == "hint: re-export it"
    assert "Traceback" not in result.output
    result = runner.invoke(_app_raising(ConfigError("train.report_to=[tensorboard] is bad")))
    assert result.exit_code == 2
    assert result.output.strip() == "error: train.report_to=[tensorboard] is bad"


def test_debug_env_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("BBU_DEBUG", "1")
    result = runner.invoke(_app_raising(DataError("boom")))
    assert isinstance(result.exception, DataError)


def test_python_dash_m_runs_the_same_app():
    proc = subprocess.run([sys.executable, "-m", "bbucli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"bbu {__version__}"
