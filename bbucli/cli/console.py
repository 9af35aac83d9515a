"""The CLI's consoles and the one place a `BbuError` becomes a red `error:` line and an exit code."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from bbucli.errors import BbuError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

P = ParamSpec("P")
R = TypeVar("R")


def report_error(exc: BbuError) -> None:
    """Render a library error once: `error: message` in red, then the hint, on stderr."""
    err.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]hint:[/] {escape(exc.hint)}", markup=True, soft_wrap=True)


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Wrap a Typer command: BbuError -> one error line + exit code (1, or 2 for usage/config).

    Set BBU_DEBUG=1 to get the full traceback instead.
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except BbuError as exc:
            if os.environ.get("BBU_DEBUG") == "1":
                raise
            report_error(exc)
            raise typer.Exit(exc.exit_code) from None

    return wrapper
