"""Output paths checked before the work: a folder or a file that cannot be written is refused with a
`UsageError` naming it, before a model is loaded or an image is predicted, so that no result is
computed only to be lost at the end.

A check creates the folder (and its parents) and writes and removes a probe file in it: what is
refused is what would fail, whoever runs it (a permission check alone lets root through, and misses
a parent that is a regular file). `writable_dir(..., create=False)` leaves no trace: it probes the
nearest folder that exists, where the missing ones would be created.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bbucli.errors import UsageError


def _probe(folder: Path) -> str | None:
    """Why files cannot be written into `folder` (created with its parents), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".bbu-probe-"):
            pass
    except FileExistsError:
        return f"{folder} is a file"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _probe_nearest(folder: Path) -> str | None:
    """Why `folder` could not be created and written, or None; creates nothing."""
    for candidate in (folder, *folder.absolute().parents):
        if candidate.is_dir():
            return _probe(candidate)
        if candidate.exists():
            return f"{candidate} is a file"
    return None


def writable_dir(folder: str | Path, what: str = "output folder", *, create: bool = True) -> Path:
    """Create `folder` (with its parents) and probe that files can be written in it; with
    create=False, probe where it would be created and leave nothing behind."""
    folder = Path(folder)
    reason = _probe(folder) if create else _probe_nearest(folder)
    if reason is not None:
        raise UsageError(f"cannot write the {what} {folder}: {reason}", hint=f"pass a {what} that can be created and written")
    return folder


def writable_file(path: str | Path, what: str = "output file", *, create: bool = True) -> Path:
    """Check that `path` can be written (created or replaced): its folder is created and probed
    (create=False: probed where it would be created, nothing left behind); the file itself is not
    touched."""
    path = Path(path)
    probe = _probe if create else _probe_nearest
    reason = f"{path} is a folder" if path.is_dir() else probe(path.parent)
    if reason is not None:
        raise UsageError(f"cannot write the {what} {path}: {reason}", hint=f"pass a path where the {what} can be written")
    return path
