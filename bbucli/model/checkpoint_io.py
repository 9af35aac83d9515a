"""Small file helpers of checkpoint writing and loading: module states as safetensors, and
transformers kept quiet while it saves or loads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def save_state(module: nn.Module, file: Path) -> None:
    """`module`'s state dict as a safetensors file (names relative to the module)."""
    from safetensors.torch import save_file

    # Clones: safetensors refuses tensors sharing storage, and views must be contiguous.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(file), metadata={"format": "pt"})


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No tqdm bars from transformers while saving or loading (the library never prints)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
