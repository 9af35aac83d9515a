"""What every config section is built from: strict scalar types and the section base model."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Strict

# Strict scalars: YAML `true` is not an int, `1` is not a bool, `"2e-5"` is not a float.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, Strict()]  # ints are accepted
Str = Annotated[str, Strict()]


class Section(BaseModel):
    """A YAML section: unknown keys are errors, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
