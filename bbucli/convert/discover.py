"""Find every annotation file under a folder, read it with the reader its keys call for, and pair
each annotated image with its image file.

Walks `raw_dir` recursively in sorted order (hidden entries skipped), so results are deterministic.
Every `*.json` is decoded and detected as vendor (`markResult`/`dataList`), Labelme (`shapes`) or
COCO (`images` + `annotations`). Pairing: vendor by stem beside the JSON; Labelme by `imagePath`
(relative to the JSON, `\\` accepted) then by stem; COCO by `file_name` relative to the JSON's
folder or its `images/`; all of them finally by a stem unique in the whole tree. A reference is
normalised (`../img/x.jpeg`, `..\\img\\x.jpeg`) to the file the walk found, so it counts as
annotated; one that leaves the input folder (`../../`, an absolute path) is read from there and
reported as `outside_input`. Annotated images that share a stem in different folders (two
cameras' `DSC_0001`) are all kept, each stored as `<stem>-<6 hex digits>`, a hash of its path
relative to the input folder; an image annotated twice keeps the first annotation in path order
(`duplicate_image`). Folder links are followed, each real folder once, so a symlink loop neither
repeats files nor hangs the walk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bbucli.convert.coco import is_coco, read_coco
from bbucli.convert.labelme import is_labelme, read_labelme
from bbucli.convert.raw import Issue, RawImage, ReadResult, text_name
from bbucli.convert.vendor import is_vendor, read_vendor
from bbucli.errors import DataError
from bbucli.schema import Progress

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Discovery:
    """Annotated images paired with their image files, in deterministic order, and the issues.
    `root` is the resolved input folder every relative name is relative to."""

    root: Path
    images: tuple[RawImage, ...]
    issues: tuple[Issue, ...]
    annotation_files: int
    formats: dict[str, int] = field(default_factory=dict)
    images_found: int = 0


def rel_name(path: Path, root: Path) -> str:
    """`path` relative to `root`, posix style, as valid text (`text_name`): what reports and
    `meta.source` show."""
    try:
        return text_name(path.relative_to(root).as_posix())
    except ValueError:
        return text_name(path.name)


def _walk(root: Path, exclude: frozenset[Path]) -> tuple[list[Path], list[Path]]:
    """(json files, image files) under root, sorted, hidden and excluded entries skipped.

    Folder links are followed, but each real folder (device, inode) is read once, the first time
    the sorted walk reaches it: a link back up the tree (a loop) or a second way into a folder
    adds nothing, instead of repeating its files until the OS gives up on the path length. A
    link that cannot be resolved (one that points at itself) is skipped."""
    jsons: list[Path] = []
    images: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
            entries = sorted(folder.iterdir(), key=lambda p: p.name)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.resolve() in exclude:
                    continue
                is_dir = entry.is_dir()
            except (OSError, RuntimeError):  # RuntimeError: Path.resolve on a symlink loop
                continue
            if is_dir:
                subdirs.append(entry)
            elif entry.suffix.lower() == ".json":
                jsons.append(entry)
            elif entry.suffix.lower() in IMAGE_SUFFIXES:
                images.append(entry)
        stack.extend(reversed(subdirs))
    return sorted(jsons), sorted(images)


# A JSON `\uD800`-`\uDFFF` escape: it may decode to a lone surrogate, which no UTF-8 output takes.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _valid_text(data: Any) -> Any:
    """`data` (decoded JSON) with every string, keys too, passed through `text_name`."""
    if isinstance(data, str):
        return text_name(data)
    if isinstance(data, list):
        return [_valid_text(v) for v in data]
    if isinstance(data, dict):
        return {text_name(k): _valid_text(v) for k, v in data.items()}
    return data


def read_annotation(path: Path, rel: str) -> ReadResult:
    """Decode one JSON file and read it with the matching reader; problems become issues. A
    string holding a lone surrogate (`"\\ud800"`) is escaped (`text_name`), so a label or an image
    path can always be printed and written."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
        data = json.loads(text)
        if _SURROGATE_ESCAPE.search(text):
            data = _valid_text(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return ReadResult(issues=(Issue("corrupt_json", rel, str(exc)[:120]),))
    except OSError as exc:
        return ReadResult(issues=(Issue("corrupt_json", rel, f"cannot read: {exc.strerror}"),))
    for detect, read in ((is_vendor, read_vendor), (is_labelme, read_labelme), (is_coco, read_coco)):
        if detect(data):
            return read(data, path, rel)
    keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
    return ReadResult(issues=(Issue("unknown_format", rel, f"top-level keys {keys}"),))


class _ImageIndex:
    """Image files of the tree, looked up by folder and stem, or by a stem unique in the tree."""

    def __init__(self, images: Iterable[Path]) -> None:
        self.by_folder: dict[tuple[Path, str], list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        self.by_real: dict[Path, Path] = {}  # resolved path -> the path the walk found
        self.files: set[Path] = set()
        for path in images:
            self.files.add(path)
            with contextlib.suppress(OSError, RuntimeError):
                self.by_real.setdefault(path.resolve(), path)
            stem = text_name(path.stem)  # as `RawImage.stem` spells it
            self.by_folder.setdefault((path.parent, stem), []).append(path)
            self.by_stem.setdefault(stem, []).append(path)

    def beside(self, folder: Path, stem: str) -> Path | None:
        found = self.by_folder.get((folder, stem), [])
        return min(found, key=lambda p: IMAGE_SUFFIXES.index(p.suffix.lower())) if found else None

    def unique(self, stem: str) -> Path | None:
        found = self.by_stem.get(stem, [])
        return found[0] if len(found) == 1 else None


def _pair(image: RawImage, index: _ImageIndex) -> Path | None:
    """The image file of `image`: the walked path of its reference when the walk found that file
    (however the reference spells it), else the resolved file it names; None when none exists."""
    folder = image.annotation_path.parent
    if image.image_ref:
        ref = image.image_ref.replace("\\", "/")
        for candidate in (folder / ref, folder / "images" / ref, folder / Path(ref).name):
            try:
                if candidate.is_file():
                    real = candidate.resolve()
                    return index.by_real.get(real, real)
            except (OSError, RuntimeError, ValueError):  # ValueError: a NUL byte in the name
                continue
    return index.beside(folder, image.stem) or index.unique(image.stem)


def _outside(path: Path, root: Path, index: _ImageIndex) -> bool:
    """Whether a paired image lies outside the input folder (reached by `../` or an absolute
    reference): not a file the walk found, and not under `root` either."""
    return path not in index.files and not path.is_relative_to(root)


def _unique_stems(images: list[RawImage], root: Path) -> list[RawImage]:
    """`images` with `unique_stem` set on every one whose stem another image shares: the stem plus
    a short hash of the image's path relative to `root` (longer if that is taken too)."""
    by_stem: dict[str, list[int]] = {}
    for i, image in enumerate(images):
        by_stem.setdefault(image.stem, []).append(i)
    taken = set(by_stem)
    out = list(images)
    for stem, members in by_stem.items():
        if len(members) < 2:
            continue
        for i in members:
            rel = rel_name(images[i].image_path, root).encode("utf-8", "surrogatepass")
            for size in range(3, 17):
                name = f"{stem}-{hashlib.blake2b(rel, digest_size=size).hexdigest()}"
                if name not in taken:
                    break
            taken.add(name)
            out[i] = replace(images[i], unique_stem=name)
    return out


def discover(
    raw_dir: str | Path, exclude: Iterable[Path] = (), progress: Progress | None = None
) -> Discovery:
    """Read and pair every annotation under `raw_dir`. Raises DataError only when `raw_dir` is
    not a folder; everything wrong inside it is an Issue."""
    root = Path(raw_dir)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder", hint="pass the folder holding the annotation export")
    root = root.resolve()
    jsons, image_files = _walk(root, frozenset(p.resolve() for p in exclude))
    index = _ImageIndex(image_files)
    issues: list[Issue] = []
    formats: Counter[str] = Counter()
    paired: list[RawImage] = []
    used_files: dict[Path, str] = {}
    referenced: set[Path] = set()
    found = 0
    if not jsons:
        issues.append(Issue("no_annotations", ".", f"no *.json under the folder ({len(image_files)} images)"))
    for i, path in enumerate(jsons):
        rel = rel_name(path, root)
        result = read_annotation(path, rel)
        issues.extend(result.issues)
        for image in result.images:
            found += 1
            formats[image.fmt.split("-")[0]] += 1
            image_path = _pair(image, index)
            shown = rel if image.image_ref is None else f"{rel}: {image.image_ref}"
            if image_path is None:
                detail = f"no image for {shown} (looked for stem {image.stem!r})"
                issues.append(Issue("missing_image", rel, detail, len(image.objects), image_dropped=True))
                continue
            image = replace(image, image_path=image_path)
            referenced.add(image_path)
            if image_path in used_files:
                detail = f"{rel_name(image_path, root)} already annotated by {used_files[image_path]}"
                issues.append(Issue("duplicate_image", rel, detail, len(image.objects), image_dropped=True))
                continue
            if _outside(image_path, root, index):
                issues.append(Issue("outside_input", rel, f"{shown} leaves the input folder"))
            used_files[image_path] = shown
            paired.append(image)
        if progress is not None:
            progress("read", i + 1, len(jsons))
    if len(formats) > 1:
        mix = ", ".join(f"{name} {n}" for name, n in sorted(formats.items()))
        issues.append(Issue("mixed_formats", ".", f"annotated images per format: {mix}"))
    for path in image_files:
        if path not in referenced:
            issues.append(Issue("unannotated_image", rel_name(path, root), "no annotation refers to it"))
    paired = _unique_stems(paired, root)
    return Discovery(root, tuple(paired), tuple(issues), len(jsons), dict(sorted(formats.items())), found)
