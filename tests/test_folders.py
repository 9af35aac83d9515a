"""`bbucli.folders.link_missing`: what a replaced folder keeps, linked rather than copied."""

from __future__ import annotations

import os

from bbucli.folders import link_missing


def test_link_missing_links_what_dest_lacks(tmp_path) -> None:
    source, dest = tmp_path / "old", tmp_path / "new"
    (source / "sub").mkdir(parents=True)
    dest.mkdir()
    (source / "optimizer.pt").write_bytes(b"state")
    (source / "sub" / "shard.pt").write_bytes(b"zero")
    (source / "owned.json").write_text("old")
    (source / "kept.json").write_text("old")
    (dest / "kept.json").write_text("new")
    os.symlink("optimizer.pt", source / "alias")

    link_missing(source, dest, skip={"owned.json"})

    assert sorted(p.name for p in dest.iterdir()) == ["alias", "kept.json", "optimizer.pt", "sub"]
    assert os.path.samefile(source / "optimizer.pt", dest / "optimizer.pt")  # a link, no copy
    assert os.path.samefile(source / "sub" / "shard.pt", dest / "sub" / "shard.pt")
    assert (dest / "kept.json").read_text() == "new"  # what dest has wins
    assert os.readlink(dest / "alias") == "optimizer.pt"  # a symlink stays one
