"""The `bbu` command: one Typer app, one sub-command per stage, each in its own module."""

from __future__ import annotations

import typer

from bbucli import __version__

app = typer.Typer(
    name="bbu",
    help=(
        "Fine-tune Qwen2.5-VL to inspect BBU cabinets.\n\n"
        "Stages: convert (raw exports -> JSONL), inspect (tokens, tensors, packing), "
        "train (Qwen2.5-VL + detection head), eval (COCO AP/AR)."
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
    from bbucli.cli import inspect as _inspect  # noqa: F401
    from bbucli.cli import predict as _predict  # noqa: F401
    from bbucli.cli import train as _train  # noqa: F401


_register()
