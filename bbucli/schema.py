"""The canonical JSONL episode: types, parsing with file/line errors, atomic writes; and the two
values every stage reports through: `Problem` (something wrong in the input) and `Progress`.

One line = one episode:
    {"teachers": [Sample, ...], "student": Sample, "meta": {...}}
    Sample = {"images": ["images/x.jpeg"], "objects": [{"bbox_2d": [x1, y1, x2, y2], "desc": "a/b/c"}]}
Image paths are relative to the JSONL file's folder; `bbox_2d` are integer xyxy pixels of the
stored (already resized) image; objects are sorted by (y1, x1).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bbucli.errors import SchemaError

#: A progress callback: `progress(stage, done, total)`, e.g. `("resize", 12, 240)`. The library
#: calls it; only the CLI draws bars.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Problem:
    """Something wrong in the input that was skipped, repaired, refused or left unscored.

    `where` names the place as a reader finds it: `train.jsonl:7` (file:line), `gt.json:
    annotations[3]`, a config path `loss.cost_obj`, or an image.
    """

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class DetObject:
    """One annotated object: `bbox_2d` integer xyxy pixels of the stored image, canonical desc."""

    bbox_2d: tuple[int, int, int, int]
    desc: str

    def to_dict(self) -> dict[str, Any]:
        return {"bbox_2d": list(self.bbox_2d), "desc": self.desc}


@dataclass(frozen=True)
class Sample:
    """One image with its objects (a teacher or the student of an episode)."""

    images: tuple[str, ...]
    objects: tuple[DetObject, ...] = ()

    @property
    def image(self) -> str:
        """The sample's single image path (relative to the JSONL folder)."""
        return self.images[0]

    def to_dict(self) -> dict[str, Any]:
        return {"images": list(self.images), "objects": [o.to_dict() for o in self.objects]}


@dataclass(frozen=True)
class Episode:
    """Teachers (annotated examples shown first) and the student image to annotate."""

    student: Sample
    teachers: tuple[Sample, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def samples(self) -> tuple[Sample, ...]:
        """Teachers then the student, in conversation order."""
        return (*self.teachers, self.student)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "teachers": [t.to_dict() for t in self.teachers],
            "student": self.student.to_dict(),
        }
        if self.meta:
            out["meta"] = dict(self.meta)
        return out


@dataclass(frozen=True)
class RecordError:
    """A malformed JSONL record: where it is and what is wrong with it."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def sort_objects(objects: Iterable[DetObject]) -> tuple[DetObject, ...]:
    """Objects in the canonical order: by (y1, x1), then the rest of the box and the desc."""
    return tuple(sorted(objects, key=lambda o: (o.bbox_2d[1], o.bbox_2d[0], o.bbox_2d, o.desc)))


#: Boxes an `outside_image` message lists before "and N more".
OUTSIDE_SHOWN = 3


def objects_outside(objects: Iterable[DetObject], width: int, height: int) -> list[DetObject]:
    """The objects whose box reaches past a `width` x `height` stored image: x2 > width or
    y2 > height (x1, y1 >= 0 is checked when reading). A box ending on the edge (x2 == width)
    is inside: pixel coordinates are edges, and rounding puts boxes there."""
    return [o for o in objects if o.bbox_2d[2] > width or o.bbox_2d[3] > height]


def outside_image(image: str, width: int, height: int, outside: Sequence[DetObject]) -> str:
    """`N box(es) outside the WxH image IMAGE: [x1, y1, x2, y2] desc; ...` (the first few)."""
    shown = "; ".join(f"{list(o.bbox_2d)} {o.desc}" for o in outside[:OUTSIDE_SHOWN])
    more = f" and {len(outside) - OUTSIDE_SHOWN} more" if len(outside) > OUTSIDE_SHOWN else ""
    return f"{len(outside)} box(es) outside the {width}x{height} image {image}: {shown}{more}"


def _object_from_dict(raw: Any, where: str) -> DetObject:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object, got {type(raw).__name__}")
    box = raw.get("bbox_2d")
    if not isinstance(box, list) or len(box) != 4:
        raise ValueError(f"{where}.bbox_2d must be a list of 4 integers, got {box!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
        raise ValueError(f"{where}.bbox_2d must hold integers (resized pixels), got {box!r}")
    if box[2] <= box[0] or box[3] <= box[1] or min(box) < 0:
        raise ValueError(f"{where}.bbox_2d must be xyxy with x2 > x1 >= 0, y2 > y1 >= 0, got {box!r}")
    desc = raw.get("desc")
    if not isinstance(desc, str) or not desc:
        raise ValueError(f"{where}.desc must be a non-empty string, got {desc!r}")
    return DetObject(bbox_2d=tuple(box), desc=desc)


def _sample_from_dict(raw: Any, where: str) -> Sample:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object, got {type(raw).__name__}")
    images = raw.get("images")
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise ValueError(f"{where}.images must be a list of image paths, got {images!r}")
    if len(images) != 1:
        raise ValueError(f"{where}.images must hold exactly one image, got {len(images)}")
    objects = raw.get("objects", [])
    if not isinstance(objects, list):
        raise ValueError(f"{where}.objects must be a list, got {type(objects).__name__}")
    return Sample(
        images=tuple(images),
        objects=tuple(_object_from_dict(o, f"{where}.objects[{i}]") for i, o in enumerate(objects)),
    )


def episode_from_dict(raw: Any) -> Episode:
    """Validate one decoded JSON record; raises ValueError naming the offending field."""
    if not isinstance(raw, dict):
        raise ValueError(f"an episode must be a JSON object, got {type(raw).__name__}")
    unknown = set(raw) - {"teachers", "student", "meta"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; expected teachers, student, meta")
    if "student" not in raw:
        raise ValueError("missing key 'student'")
    teachers = raw.get("teachers", [])
    if not isinstance(teachers, list):
        raise ValueError(f"teachers must be a list, got {type(teachers).__name__}")
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be an object, got {type(meta).__name__}")
    return Episode(
        student=_sample_from_dict(raw["student"], "student"),
        teachers=tuple(_sample_from_dict(t, f"teachers[{i}]") for i, t in enumerate(teachers)),
        meta=meta,
    )


def iter_episodes(path: str | Path) -> Iterator[tuple[int, Episode | RecordError]]:
    """Yield `(line_number, episode or RecordError)` for every non-blank line of a JSONL file.

    Never raises for a bad record (not UTF-8, not JSON, not an episode), so callers can report
    each one and go on. Raises SchemaError when the file cannot be opened or is not text at all
    (`is_binary`: an image or an archive passed as the JSONL).
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SchemaError(f"cannot open {path}: {exc.strerror}", hint="check the path") from exc
    with handle:
        if is_binary(handle.read(SNIFF_BYTES)):
            raise SchemaError(
                f"{path} is not a JSONL file: it holds binary data (an image or an archive?)",
                hint="pass the .jsonl written by `bbu convert`",
            )
        handle.seek(0)
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = f"byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}"
                yield line_no, RecordError(path, line_no, f"not UTF-8 text: {bad}")
                continue
            try:
                yield line_no, episode_from_dict(json.loads(line))
            except json.JSONDecodeError as exc:
                message = f"invalid JSON: {exc.msg} at column {exc.colno}"
                yield line_no, RecordError(path, line_no, message)
            except RecursionError:
                yield line_no, RecordError(path, line_no, "invalid JSON: nested too deeply")
            except ValueError as exc:
                yield line_no, RecordError(path, line_no, str(exc))


#: How much of a file `iter_episodes` reads to tell text from binary data.
SNIFF_BYTES = 8192


def is_binary(head: bytes) -> bool:
    """Whether the first bytes of a file are binary data: JSONL text never holds a NUL byte,
    while images (JPEG, PNG, WebP, TIFF) and archives carry them in their headers."""
    return b"\x00" in head


def read_episodes(path: str | Path) -> list[Episode]:
    """Read a whole JSONL file; raise SchemaError listing every malformed line (file:line)."""
    episodes: list[Episode] = []
    errors: list[RecordError] = []
    for _, item in iter_episodes(path):
        (errors if isinstance(item, RecordError) else episodes).append(item)
    if errors:
        shown = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise SchemaError(
            f"{len(errors)} malformed record(s): {shown}{more}",
            hint="fix or remove these lines, or regenerate the file with `bbu convert`",
        )
    return episodes


def dumps_record(record: Mapping[str, Any]) -> str:
    """One JSONL line, deterministic: key order as given, UTF-8 text kept readable."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def new_file_mode() -> int:
    """The mode a plainly created file gets (0o666 less the process umask). A temp file from
    `tempfile` is 0o600; an atomic writer sets this before its rename, so outputs on a shared
    machine are as readable as any other file the user writes."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the whole new one, never a part.

    Writes a temporary file in the same folder, fsyncs it and renames it over `path`; the file
    gets the umask's mode (`new_file_mode`), not the temp file's 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            os.chmod(tmp, new_file_mode())
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: str | Path, records: Iterable[Mapping[str, Any] | Episode]) -> int:
    """Write records (dicts or Episodes) as JSONL atomically; returns the number of lines."""
    lines = [dumps_record(r.to_dict() if isinstance(r, Episode) else r) for r in records]
    write_text_atomic(path, "".join(f"{line}\n" for line in lines))
    return len(lines)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write one JSON document atomically, pretty-printed with sorted keys (stable diffs)."""
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
