"""A dataset replaced whole or not at all: `convert` writes every output into a hidden staging
folder beside OUT, and moves it into place only once everything is written.

    OUT_DIR/.bbu.jsonl.staging-XXXX/  images/, bbu.jsonl, bbu.val.jsonl, bbu.teachers.jsonl,
                                      bbu.report.json

It is made before any input is read, so an unwritable OUT fails at once. Until `commit`, the previous dataset in OUT_DIR is untouched: an error or a Ctrl-C (KeyboardInterrupt)
anywhere before it leaves OUT_DIR as it was, and the staging folder is removed on the way out.

`commit` first hard-links into the staged `images/` every entry of the existing `OUT_DIR/images/`
that this run does not rewrite (nothing is copied, and another dataset sharing the folder keeps
its images), then swaps: `images/` by two renames, each file by a backup hard link and
`os.replace`. An `OSError` in the swap puts back what was already moved. The swap is a few renames
(milliseconds) and runs with SIGINT deferred, so a Ctrl-C cannot cut it in half; a Ctrl-C that
lands in it lets it finish (the dataset is then complete). A power cut could still.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bbucli.errors import BbuError
from bbucli.folders import link_missing

_PREVIOUS = ".previous"


class Staging:
    """Staging folders for the outputs `targets` (`{key: final path}`), all in one folder; the
    key "images" names the images folder, every other key a file. An images folder that is a link
    is staged beside the folder it names (a rename cannot cross file systems), and that folder is
    swapped: the link stays."""

    def __init__(self, targets: Mapping[str, Path]) -> None:
        self.targets = dict(targets)
        images = self.targets["images"]
        folder = images.parent
        if images.is_symlink():
            self.targets["images"] = images.resolve()
        name = next(p.name for k, p in self.targets.items() if k != "images")
        # Folders this creates, deepest first: `discard` removes them again when left empty.
        self._created = [p for p in (folder, *folder.parents) if not p.exists()]
        self._roots: dict[Path, Path] = {}  # folder of a target -> its staging folder there
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for target in self.targets.values():
                if target.parent not in self._roots:
                    staging = tempfile.mkdtemp(prefix=f".{name}.staging-", dir=target.parent)
                    self._roots[target.parent] = Path(staging)
        except OSError as exc:
            self.discard()
            raise BbuError(
                f"cannot write into the output folder {folder}: {exc.strerror or exc}",
                hint="pick an OUT in a folder you can write",
            ) from exc

    def path(self, key: str) -> Path:
        """Where the output `key` is written before the swap."""
        target = self.targets[key]
        return self._roots[target.parent] / target.name

    def discard(self) -> None:
        """Remove the staging folders and everything in them, and the output folders this
        created that are still empty: the outputs stay as they were."""
        for root in self._roots.values():
            shutil.rmtree(root, ignore_errors=True)
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break

    def commit(self) -> None:
        """Move every staged output into place (module docstring); the staging folders are gone
        after."""
        images, staged_images = self.targets["images"], self.path("images")
        staged_images.mkdir(exist_ok=True)
        try:
            if images.is_dir():
                link_missing(images, staged_images)
            for root in self._roots.values():
                (root / _PREVIOUS).mkdir()
            with _sigint_deferred():
                self._swap()
        except OSError as exc:
            raise BbuError(
                f"cannot move the new dataset into {images.parent}: {exc.strerror or exc}",
                hint="check the output folder's permissions and free space; the previous dataset was kept",
            ) from exc
        finally:
            self.discard()

    def _swap(self) -> None:
        done: list[tuple[Path, Path, Path | None]] = []  # (staged, target, backup)
        try:
            for key, target in sorted(self.targets.items(), key=lambda kv: kv[0] != "images"):
                staged = self.path(key)
                backup = self._roots[target.parent] / _PREVIOUS / target.name
                has_old = target.exists()
                if key == "images":  # a folder cannot be replaced in one step: two renames
                    if has_old:
                        os.rename(target, backup)
                    done.append((staged, target, backup if has_old else None))
                    os.rename(staged, target)
                    continue
                if has_old:
                    os.link(target, backup)
                done.append((staged, target, backup if has_old else None))
                os.replace(staged, target)
        except OSError:
            for staged, target, backup in reversed(done):
                _undo(staged, target, backup)
            raise


def _undo(staged: Path, target: Path, backup: Path | None) -> None:
    """Put `target` back as it was before the swap moved `staged` onto it (best effort)."""
    try:
        if target.is_dir() and not target.is_symlink():
            if not staged.exists():
                os.rename(target, staged)
        elif backup is None:
            target.unlink(missing_ok=True)
        if backup is not None and backup.exists():
            os.replace(backup, target)
    except OSError:
        pass


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ignore SIGINT for the block (main thread only: elsewhere Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # a handler installed outside Python: leave it alone
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
