"""Errors the library raises. Every one carries a hint that names the user's next step.

The CLI renders a `BbuError` as one red `error:` line (plus the hint) on stderr and exits with
`exit_code`; nothing in the library prints or exits.
"""

from __future__ import annotations


class BbuError(Exception):
    """Base of every error bbu raises on purpose. `exit_code` 1: the input or the run failed."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class UsageError(BbuError):
    """The command line asked for something impossible (exit code 2)."""

    exit_code = 2


class ConfigError(BbuError):
    """A config file or a taxonomy file is invalid (exit code 2)."""

    exit_code = 2


class DataError(BbuError):
    """Input data (annotation exports, JSONL, images) cannot be used as given."""


class SchemaError(DataError):
    """A JSONL record is not a valid episode; the message names the file and line."""


class ModelError(BbuError):
    """A model or processor cannot be built or loaded."""
