"""Imports point one way (DESIGN 7): cli -> train/inspection/evaluation -> model/loss/data/chat ->
convert/geometry/schema/taxonomy -> errors. Only `bbucli/cli/` may import Typer or Rich."""

from __future__ import annotations

import ast
from pathlib import Path

import bbucli

PACKAGE = Path(bbucli.__file__).parent

# The layer of each top-level part of the package; a module may import its own layer or lower.
LAYERS = {
    "errors": 0,
    "geometry": 1, "schema": 1, "taxonomy": 1, "convert": 1, "synthetic": 1, "resources": 1,
    "chat": 2, "data": 2, "model": 2, "loss": 2,
    "train": 3, "inspection": 3, "evaluation": 3, "demo": 3,
    "cli": 4,
}
UI_PACKAGES = {"typer", "rich", "click"}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else module


def violations(path: Path, source: str) -> list[str]:
    """Layering problems of one module of bbucli, as readable strings."""
    rel = path.relative_to(PACKAGE)
    own = rel.parts[0].removesuffix(".py")
    if own in {"__init__", "__main__"}:
        return []
    own_layer = LAYERS.get(own)
    if own_layer is None:
        return [f"{rel}: part {own!r} has no layer; add it to LAYERS"]
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            root = name.split(".")[0]
            if root in UI_PACKAGES and own != "cli":
                found.append(f"{rel}:{node.lineno}: imports {name} outside bbucli/cli")
            if root == "bbucli" and name != "bbucli":
                target = _part(name)
                layer = LAYERS.get(target)
                if layer is None:
                    found.append(f"{rel}:{node.lineno}: imports unknown part {name}")
                elif layer > own_layer:
                    found.append(f"{rel}:{node.lineno}: {own} (layer {own_layer}) imports {name} (layer {layer})")
    return found


def test_package_respects_layers():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        problems += violations(path, path.read_text(encoding="utf-8"))
    assert problems == []


def test_checker_catches_violations():
    # The checker itself must be able to fail: a library module importing rich or a higher layer.
    fake = PACKAGE / "geometry.py"
    assert violations(fake, "import rich.console\n") == [
        "geometry.py:1: imports rich.console outside bbucli/cli"
    ]
    assert violations(fake, "from bbucli.cli.app import app\n") == [
        "geometry.py:1: geometry (layer 1) imports bbucli.cli.app (layer 4)"
    ]
    assert violations(PACKAGE / "cli" / "app.py", "import typer\nfrom bbucli.geometry import smart_resize\n") == []
