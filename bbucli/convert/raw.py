"""What every raw-format reader yields: `RawImage`s of `RawObject`s, and `Issue`s for the rest.

Frame: `RawObject.box_xyxy` is in the annotation's own frame, original pixels (floats), the frame
`RawImage.width/height` declare (None when the file declares no size). The pipeline checks that
frame against the real EXIF-upright image before anything else uses the boxes.

A reader never raises for bad input: whatever it cannot use becomes an `Issue` with a reason code
(`REASONS`), so nothing is lost silently. A box and its label live in one `RawObject`, so they are
kept or dropped together. Names taken from the file system go through `text_name`, so a name
that is not UTF-8 is shown, stored and hashed as text rather than crashing a later step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Every reason code an Issue can carry, with what happened to the data.
REASONS: dict[str, str] = {
    # whole annotation files
    "corrupt_json": "file dropped: not valid JSON (corrupt or truncated)",
    "unknown_format": "file dropped: JSON is neither vendor markResult, Labelme nor COCO",
    "bad_record": "file or image record dropped: required fields missing or of the wrong type",
    "no_annotations": "nothing to convert: no annotation file under the input folder",
    "mixed_formats": "note: the input mixes several annotation formats (all are read)",
    # images
    "missing_image": "image dropped: no image file found for the annotation",
    "unreadable_image": "image dropped: the image file cannot be decoded",
    "unannotated_image": "note: an image file no annotation refers to (not converted)",
    "duplicate_image": "image dropped: another annotation file already annotates this image file",
    "outside_input": "note: the image path leaves the input folder (../ or absolute); read from there",
    "size_mismatch": "image dropped: declared size fits neither the image nor a rotation/scale of it",
    "size_rescaled": "note: declared size is a uniform scale of the image; boxes rescaled",
    "exif_frame": "note: boxes are in the pre-EXIF (stored) frame; boxes rotated upright",
    "bad_aspect_ratio": "image dropped: aspect ratio above 200, the model cannot take it",
    "no_objects": "image dropped: no object left (none annotated, or every one dropped)",
    # objects
    "bad_polygon": "object dropped: geometry has no usable points",
    "unsupported_shape": "object dropped: shape is no box or polygon (Labelme circle, line, point)",
    "nested_polygon": "note: polygon nested one level deeper than a ring; outer ring used",
    "unclosed_ring": "note: polygon ring not closed; its points used as given",
    "zero_area": "object dropped: box has zero width or height",
    "out_of_frame": "object dropped: box lies outside the image",
    "clipped": "note: box partly outside the image; clipped to it",
    "missing_label": "object dropped: no label",
    "duplicate_object": "object dropped: same label and box (in the stored image) as another object of the image",
    "unknown_label": "object dropped (--unknown drop) or kept as-is (--unknown keep): label not in the taxonomy",
}


@dataclass(frozen=True)
class Issue:
    """One problem found in the input and what it cost: `objects_dropped` objects and, when
    `image_dropped`, a whole annotated image. `file` is relative to the input folder (posix)."""

    reason: str
    file: str
    detail: str = ""
    objects_dropped: int = 0
    image_dropped: bool = False

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown issue reason {self.reason!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "file": self.file, "detail": self.detail}
        if self.objects_dropped:
            out["objects_dropped"] = self.objects_dropped
        if self.image_dropped:
            out["image_dropped"] = True
        return out


@dataclass(frozen=True)
class RawObject:
    """One annotated box: xyxy floats in the annotation's frame, its raw label, extra attributes.

    `fallback_labels` are further spellings of the same label (e.g. the English code beside the
    Chinese path) tried in order when `label` is not in the taxonomy. `ref` says where the
    object is in its file (`features[3]`, `shapes[0]`, `annotations[12]`) for issue details.
    """

    box_xyxy: tuple[float, float, float, float]
    label: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    fallback_labels: tuple[str, ...] = ()
    ref: str = ""


@dataclass(frozen=True)
class RawImage:
    """One annotated photo as a reader sees it.

    `annotation_path`/`image_path` are absolute; `image_path` is None when no image was found
    (discovery reports it). `width`/`height` are the declared annotation frame, None if undeclared.
    """

    annotation_path: Path
    image_path: Path | None
    width: float | None
    height: float | None
    objects: tuple[RawObject, ...]
    fmt: str
    image_ref: str | None = None
    #: The name the stored image and the episode id take when another image shares `stem`
    #: (discovery sets it: stem + a hash of the image's path); None when the stem is unique.
    unique_stem: str | None = None

    @property
    def stem(self) -> str:
        """The photo's identity: the image file's stem, else the reference's, else the annotation's;
        always valid text (`text_name`), as it names the stored image and goes into the JSONL."""
        if self.image_path is not None:
            return text_name(self.image_path.stem)
        if self.image_ref:
            return text_name(Path(self.image_ref.replace("\\", "/")).stem)
        return text_name(self.annotation_path.stem)


@dataclass(frozen=True)
class ReadResult:
    """What one annotation file gave: its images (without image paths yet) and its issues."""

    images: tuple[RawImage, ...] = ()
    issues: tuple[Issue, ...] = ()


def text_name(name: str) -> str:
    r"""A file name as text that encodes to UTF-8. Bytes that are not UTF-8 (a GBK name from a
    Windows zip, surrogate-escaped by the OS layer) become `\xNN` escapes, so the name stays
    distinct, readable and writable to JSON; a valid name is returned unchanged."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no byte stands for (a JSON "\ud800")
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def finite_number(value: Any) -> float | None:
    """`value` (a number or a numeric string) as a finite float; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        value = float(value)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def positive_size(width: Any, height: Any) -> tuple[float, float] | None:
    """A declared `(width, height)` when both are finite and positive, else None."""
    w, h = finite_number(width), finite_number(height)
    if w is None or h is None or w <= 0 or h <= 0:
        return None
    return w, h


def box_from_points(points: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """Axis-aligned xyxy bounding box of points (same frame as the points)."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def parse_point(value: Any) -> tuple[float, float] | None:
    """`[x, y]` (or `{"x":, "y":}`) as a pair of finite floats, else None."""
    if isinstance(value, Mapping):
        value = [value.get("x"), value.get("y")]
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        return None
    x, y = finite_number(value[0]), finite_number(value[1])
    return None if x is None or y is None else (x, y)


def is_zero_area(box: tuple[float, float, float, float]) -> bool:
    """True when an xyxy box has no width or no height."""
    return box[2] <= box[0] or box[3] <= box[1]
