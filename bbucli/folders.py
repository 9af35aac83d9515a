"""Keeping what a folder holds when bbu replaces it: hard links (copies where links are refused).

`bbu convert` replacing a dataset's images folder and `save_checkpoint` replacing a checkpoint
folder both build the new folder beside the old one and swap it in; entries of the old folder
that the new one does not write (a Trainer's optimizer.pt, images another JSONL still uses) are
linked into the new folder first, so the swap loses nothing and copies no bytes where links work.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path


def link_missing(source: Path, dest: Path, *, skip: Collection[str] = ()) -> None:
    """Hard-link (or copy, where links are refused) every entry of `source` that `dest` lacks,
    folders recursively, symlinks as symlinks; names in `skip` are left out."""
    for entry in sorted(source.iterdir()):
        target = dest / entry.name
        if entry.name in skip or target.exists() or target.is_symlink():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=link_or_copy)
        else:
            link_or_copy(entry, target)


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """`dst` as a hard link to `src`, a copy where the file system refuses links, or a symlink
    with the same target when `src` is one."""
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
