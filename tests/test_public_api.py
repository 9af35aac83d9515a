"""Every public name promised by `bbucli` resolves, without importing torch for `bbu --help`."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import bbucli


def test_every_public_name_is_exported():
    assert set(bbucli._PUBLIC) <= set(bbucli.__all__)
    assert set(bbucli.__all__) == {"__version__", *bbucli._PUBLIC}


@pytest.mark.parametrize("name,module", sorted(bbucli._PUBLIC.items()))
def test_every_public_name_resolves(name: str, module: str):
    """The lazy map points at a module that exists and defines (or re-exports) the name."""
    source = importlib.import_module(module)
    assert name in vars(source), f"{module} has no {name}: fix bbucli._PUBLIC"
    assert getattr(bbucli, name) is vars(source)[name]
    assert name in dir(bbucli)


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        bbucli.NoSuchName  # noqa: B018


def test_import_is_light():
    code = "import sys, bbucli, bbucli.cli.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
