"""The wheel carries everything the package reads at runtime: `bbu demo` must run from a
`pip install .` in any folder, with no clone beside it.

The wheel is built offline (`pip wheel --no-deps --no-build-isolation`) from a copy of the sources,
so the checkout gets no build/ folder. Its listing must hold every data file under bbucli/
(the packaged taxonomy and tiny config among them); unpacked alone and imported from an empty
folder, every module imports and the resources resolve inside the unpacked package. The copies in
configs/ that users read must equal the packaged ones.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import bbucli

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(bbucli.__file__).parent
RESOURCES = ("bbucli/resources/configs/tiny.yaml", "bbucli/resources/taxonomy/bbu.yaml")
# (copy for users in the clone, packaged file the library reads)
COPIES = (
    ("configs/tiny.yaml", "bbucli/resources/configs/tiny.yaml"),
    ("configs/taxonomy/bbu.yaml", "bbucli/resources/taxonomy/bbu.yaml"),
)

# Run in a fresh interpreter whose only bbucli is the unpacked wheel, from an empty folder.
PROBE = """
import importlib, json, pkgutil, sys
import bbucli
modules = sorted(m.name for m in pkgutil.walk_packages(bbucli.__path__, "bbucli."))
for name in modules:
    importlib.import_module(name)
from bbucli.demo.run import tiny_config
from bbucli.taxonomy import Taxonomy, default_path
from bbucli.train.config.loading import load_config
cfg = load_config(tiny_config(), check_paths=False)
print(json.dumps({
    "package": bbucli.__file__, "modules": len(modules), "tiny": str(tiny_config()),
    "taxonomy": str(default_path()), "classes": len(Taxonomy.load().classes),
    "model": str(cfg.model.path),
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(PACKAGE, src / "bbucli", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run(
        [*build, "-q", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = dist.glob("bbucli-*.whl")
    return found


def test_the_wheel_holds_every_data_file_of_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(RESOURCES) <= names
    data = {
        p.relative_to(PACKAGE.parent).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc")
    }
    assert data >= set(RESOURCES) and data <= names, sorted(data - names)
    assert {n for n in names if n.endswith(".py")} == {
        p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*.py")
    }
    assert not {n for n in names if n.startswith(("configs/", "examples/", "tests/", "tools/"))}


def test_the_unpacked_wheel_runs_alone_from_an_empty_folder(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=empty, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(seen["package"]).is_relative_to(site)
    assert seen["modules"] >= 50 and seen["classes"] > 0 and seen["model"] == "tiny"
    for key in ("tiny", "taxonomy"):
        assert Path(seen[key]).is_relative_to(site / "bbucli" / "resources"), seen[key]
    assert not any(empty.iterdir())


def test_no_module_reaches_outside_the_package_through_its_own_path():
    """Runtime files are found with importlib.resources, never `__file__` (whose parents are the
    clone in a checkout, and site-packages in an installed wheel)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name) and node.id == "__file__":
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


@pytest.mark.parametrize(("copy", "packaged"), COPIES)
def test_the_clone_copy_equals_the_packaged_file(copy, packaged):
    assert (REPO / copy).read_bytes() == (REPO / packaged).read_bytes(), (
        f"{copy} and {packaged} diverged: edit one, copy it over the other"
    )
