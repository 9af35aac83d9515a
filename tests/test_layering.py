"""Imports point one way:

    cli -> train / infer / inspection / demo -> model / loss / data -> chat
        -> convert / evaluation -> geometry / schema / taxonomy / teachers / folders -> errors

A module may import its own part, any part of a lower layer, or a sibling part of its own layer as
long as the siblings form no cycle. Only `bbucli/cli/` may import Typer or Rich.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import bbucli

PACKAGE = Path(bbucli.__file__).parent

# The layer of each top-level part of the package (higher imports lower).
LAYERS = {
    "errors": 0,
    "geometry": 1, "schema": 1, "taxonomy": 1, "teachers": 1, "resources": 1, "folders": 1,
    "convert": 2, "evaluation": 2,
    "chat": 3,
    "model": 4, "loss": 4, "data": 4,
    "train": 5, "infer": 5, "inspection": 5, "demo": 5,
    "cli": 6,
}  # fmt: skip
UI_PACKAGES = {"typer", "rich", "click"}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else module


def _imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _own_part(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def violations(path: Path, source: str) -> list[str]:
    """Layering problems of one module of bbucli, as readable strings."""
    rel = path.relative_to(PACKAGE)
    own = _own_part(path)
    if own in {"__init__", "__main__"}:
        return []
    own_layer = LAYERS.get(own)
    if own_layer is None:
        return [f"{rel}: part {own!r} has no layer; add it to LAYERS"]
    found = []
    for line, name in _imports(source):
        root = name.split(".")[0]
        if root in UI_PACKAGES and own != "cli":
            found.append(f"{rel}:{line}: imports {name} outside bbucli/cli")
        if root == "bbucli" and name != "bbucli":
            target = _part(name)
            layer = LAYERS.get(target)
            if layer is None:
                found.append(f"{rel}:{line}: imports unknown part {name}")
            elif layer > own_layer:
                found.append(f"{rel}:{line}: {own} (layer {own_layer}) imports {name} (layer {layer})")
    return found


def sibling_cycles(sources: dict[Path, str]) -> list[str]:
    """Cycles among parts of one layer (`a -> b -> a`), each as `a -> b -> a`."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path, source in sources.items():
        own = _own_part(path)
        for _, name in _imports(source):
            target = _part(name) if name.startswith("bbucli.") else None
            if target not in (None, own) and LAYERS.get(target, -1) == LAYERS.get(own):
                edges[own].add(target)
    cycles = []

    def walk(node: str, trail: list[str]) -> None:
        for nxt in sorted(edges[node]):
            if nxt == trail[0]:
                cycles.append(" -> ".join([*trail, nxt]))
            elif nxt not in trail and nxt > trail[0]:  # report each cycle once, from its least part
                walk(nxt, [*trail, nxt])

    for start in sorted(edges):
        walk(start, [start])
    return cycles


def _package_sources() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))}


def test_package_respects_layers():
    problems = []
    for path, source in _package_sources().items():
        problems += violations(path, source)
    assert problems == []


def test_no_cycles_between_sibling_parts():
    assert sibling_cycles(_package_sources()) == []


def test_checker_catches_violations():
    # The checker itself must be able to fail: a library module importing rich or a higher layer.
    fake = PACKAGE / "geometry.py"
    assert violations(fake, "import rich.console\n") == [
        "geometry.py:1: imports rich.console outside bbucli/cli"
    ]
    assert violations(fake, "from bbucli.cli.app import app\n") == [
        "geometry.py:1: geometry (layer 1) imports bbucli.cli.app (layer 6)"
    ]
    assert violations(PACKAGE / "chat" / "processor.py", "from bbucli.data.collators import x\n") == [
        "chat/processor.py:1: chat (layer 3) imports bbucli.data.collators (layer 4)"
    ]
    assert violations(PACKAGE / "cli" / "app.py", "import typer\nfrom bbucli.geometry import smart_resize\n") == []


def test_checker_catches_sibling_cycles():
    sources = {
        PACKAGE / "model" / "a.py": "from bbucli.loss.b import x\n",
        PACKAGE / "loss" / "b.py": "from bbucli.model.a import y\n",
        PACKAGE / "data" / "c.py": "from bbucli.model.a import y\n",
    }
    assert sibling_cycles(sources) == ["loss -> model -> loss"]
