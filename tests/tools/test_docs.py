"""The README stays short and every relative link of the README and docs/ points at a real file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PAGES = [README, REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    """The link targets of a Markdown page that are files of this repository (anchors cut off)."""
    targets = [t.split("#")[0] for t in LINK.findall(page.read_text(encoding="utf-8"))]
    return [t for t in targets if t and "://" not in t and not t.startswith("mailto:")]


def test_readme_is_under_10_kb():
    assert README.stat().st_size < 10_000


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page: Path):
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert missing == [], f"{page.name} links to files that do not exist"


def test_readme_links_every_doc_page():
    linked = {(README.parent / t).resolve() for t in relative_links(README)}
    pages = set((REPO / "docs").glob("*.md"))
    assert pages and {p.resolve() for p in pages} <= linked


def test_link_pattern_finds_a_broken_link(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("see [a](docs/a.md#x), [b](https://example.org) and ![c](c.png)\n")
    assert relative_links(page) == ["docs/a.md", "c.png"]
    assert not (tmp_path / "docs/a.md").exists()
