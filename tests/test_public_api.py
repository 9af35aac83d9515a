"""Every public name promised by `bbucli` resolves, without importing torch for `bbu --help`."""

from __future__ import annotations

import subprocess
import sys

import bbucli


def test_every_public_name_resolves():
    for name in bbucli.__all__:
        assert getattr(bbucli, name) is not None, name


def test_import_is_light():
    code = "import sys, bbucli, bbucli.cli.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
