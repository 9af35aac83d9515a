"""Scoring stays light: no module of `bbucli.evaluation` imports torch or transformers, directly
or through anything it imports (checked in a fresh interpreter, where nothing is loaded yet)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import bbucli.evaluation

HEAVY = ("torch", "transformers")


def test_evaluation_modules_load_without_torch_or_transformers():
    modules = ["bbucli.evaluation"] + [
        f"bbucli.evaluation.{m.name}" for m in pkgutil.iter_modules(bbucli.evaluation.__path__)
    ]
    assert "bbucli.evaluation.writers" in modules  # the walk found the package's files
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m for m in sys.modules if m.split('.')[0] in {HEAVY!r}}})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(done.stdout) == []
