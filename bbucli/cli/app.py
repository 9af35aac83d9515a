"""The `bbu` command: one Typer app, one sub-command per stage, each in its own module.

Flag conventions every command keeps (tests/cli/test_conventions.py walks every --help):
inputs are positional arguments; what a command writes is named by an option, `--out/-o` for its
main output and `--render DIR` for a folder of pictures; `-h` is `--help`; a flag shows no value
placeholder; a score threshold is range-checked.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from bbucli import __version__


def _flags_take_no_value(params: list[Any]) -> list[Any]:
    """typer's Rich help prints a `<bool>` type beside every flag (`--help` too), as if it took a
    value: an empty metavar leaves the column blank."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class BbuCommand(TyperCommand):
    """A `bbu` sub-command: flags without a `<bool>` placeholder in --help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_take_no_value(super().get_params(ctx))


class BbuGroup(TyperGroup):
    """The `bbu` group: flags without a `<bool>` placeholder in --help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_take_no_value(super().get_params(ctx))


app = typer.Typer(
    name="bbu",
    cls=BbuGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "Fine-tune Qwen2.5-VL to inspect BBU cabinets.\n\n"
        "Stages: convert (raw exports -> JSONL), inspect (tokens, tensors, packing), "
        "train (Qwen2.5-VL + detection head), eval (COCO AP/AR).\n\n"
        "Every command takes its inputs as arguments and names what it writes with options: "
        "--out/-o for its main output (train: train.output_dir in the config), --render DIR for a "
        "folder of pictures. -h is --help."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bbu {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    # `deepspeed --module bbucli train ...` runs `python -m bbucli --local_rank=N train ...`: the
    # flag lands before the sub-command. Accepted and ignored: the rank is in LOCAL_RANK.
    local_rank: int | None = typer.Option(None, "--local_rank", "--local-rank", hidden=True),
) -> None:
    """Fine-tune Qwen2.5-VL to inspect BBU cabinets."""


def _register() -> None:
    # Each stage lives in its own module; importing it adds its command to `app`.
    from bbucli.cli import convert  # noqa: F401
    from bbucli.cli import demo as _demo  # noqa: F401
    from bbucli.cli import eval as _eval  # noqa: F401
    from bbucli.cli import export as _export  # noqa: F401
    from bbucli.cli import inspect as _inspect  # noqa: F401
    from bbucli.cli import predict as _predict  # noqa: F401
    from bbucli.cli import train as _train  # noqa: F401

    for command in app.registered_commands:  # a command added later follows the conventions too
        if command.cls in (None, TyperCommand):
            command.cls = BbuCommand


_register()
