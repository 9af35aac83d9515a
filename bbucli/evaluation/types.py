"""What flows into scoring: predicted `Detections`, the `GroundTruth` they are scored against, and
the `Problem`s (`bbucli.schema.Problem`) found in either.

Frames. A `GroundTruth` holds each image's boxes in one frame, the *scoring frame*:
- read from a bbu JSONL: pixels of the stored (resized) image, as the JSONL writes them; `image_wh`
  is that image's size, read from the file's header (None when the file is missing);
- read from a COCO instances JSON: pixels of the frame its `images[*].width/height` declare.
`Detections` carry their own frame (`image_wh`, e.g. the original photo's size from `Inference`);
scoring scales them per axis into the scoring frame. `image_wh=None` means "already in it".
COCO's small/medium/large area ranges are therefore measured in scoring-frame pixels.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from bbucli.schema import Problem

SOURCES = ("head", "lm")


def _boxes(value: object, name: str) -> np.ndarray:
    boxes = np.asarray(value, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {boxes.shape}")
    return boxes


@dataclass(frozen=True, eq=False)
class Detections:
    """The predictions for one image.

    image: the key of the ground-truth image (see `GroundTruth.find`): for a bbu JSONL the student
        image path as the JSONL lists it (relative to its folder), for a COCO GT its `file_name`.
    boxes_px: (N, 4) float64 xyxy, pixels of the frame `image_wh`.
    descs: N canonical descs (`type/property/state`), the category of each box.
    scores: (N,) float64, higher is more confident (head: objectness; lm: mean token log-prob).
    image_wh: (width, height) of the frame of `boxes_px` (original photo or stored image);
        None when the boxes are already in the ground truth's scoring frame.
    source: "head" (detection head) or "lm" (parsed from the generated answer).
    unparseable: the model's answer could not be parsed (boxes then usually empty).
    origin: where the record was read (`preds.jsonl:7`), for problem messages; None in memory.
    """

    image: str
    boxes_px: np.ndarray
    descs: tuple[str, ...]
    scores: np.ndarray
    image_wh: tuple[float, float] | None = None
    source: str = "head"
    unparseable: bool = False
    origin: str | None = None

    def __post_init__(self) -> None:
        boxes = _boxes(self.boxes_px, "boxes_px")
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        descs = tuple(self.descs)
        if not len(boxes) == len(scores) == len(descs):
            raise ValueError(
                f"{len(boxes)} boxes, {len(scores)} scores and {len(descs)} descs for image {self.image!r}"
            )
        object.__setattr__(self, "boxes_px", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "descs", descs)
        if self.image_wh is not None:
            object.__setattr__(self, "image_wh", (float(self.image_wh[0]), float(self.image_wh[1])))

    def __len__(self) -> int:
        return len(self.descs)

    @property
    def where(self) -> str:
        """How problem messages name this record."""
        return self.origin or f"image {self.image}"


@dataclass(frozen=True)
class Category:
    """One scored category: COCO `id` and its name, the canonical desc."""

    id: int
    desc: str

    @property
    def type(self) -> str:
        """The first level of the desc (`screw` of `screw/bbu_install_screw/correct`)."""
        return self.desc.split("/")[0]


@dataclass(frozen=True, eq=False)
class GroundTruthImage:
    """One annotated image.

    key: the image's name for predictions (bbu JSONL: student image path; COCO: `file_name`).
    image_id: COCO image id (as given in a COCO GT; 1-based line order of a bbu JSONL).
    boxes_px: (N, 4) float64 xyxy in the scoring frame; descs: N category names.
    areas: (N,) COCO `area` as given (box area where absent); iscrowd: (N,) bool.
    image_wh: (width, height) of the scoring frame, None when unknown.
    file: the image file (for overlays), None when unknown or missing.
    """

    key: str
    image_id: int
    boxes_px: np.ndarray
    descs: tuple[str, ...]
    areas: np.ndarray
    iscrowd: np.ndarray
    image_wh: tuple[int, int] | None = None
    file: Path | None = None

    def __post_init__(self) -> None:
        boxes = _boxes(self.boxes_px, "boxes_px")
        areas = np.asarray(self.areas, dtype=np.float64).reshape(-1)
        crowd = np.asarray(self.iscrowd, dtype=bool).reshape(-1)
        if not len(boxes) == len(self.descs) == len(areas) == len(crowd):
            raise ValueError(f"boxes, descs, areas and iscrowd differ in length for image {self.key!r}")
        object.__setattr__(self, "boxes_px", boxes)
        object.__setattr__(self, "areas", areas)
        object.__setattr__(self, "iscrowd", crowd)
        object.__setattr__(self, "descs", tuple(self.descs))

    @classmethod
    def simple(
        cls,
        key: str,
        image_id: int,
        boxes_px: Sequence[Sequence[float]] | np.ndarray,
        descs: Sequence[str],
        image_wh: tuple[int, int] | None = None,
        file: Path | None = None,
    ) -> GroundTruthImage:
        """An image whose areas are the box areas and nothing is crowd (what a bbu JSONL holds)."""
        boxes = _boxes(boxes_px, "boxes_px")
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return cls(key, image_id, boxes, tuple(descs), areas, np.zeros(len(boxes), bool), image_wh, file)

    def __len__(self) -> int:
        return len(self.descs)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Every image of a split (also those without objects) and the categories they use.

    format: "bbu-jsonl", "coco" or "memory"; source: the file read; problems: what was skipped.
    """

    images: tuple[GroundTruthImage, ...]
    categories: tuple[Category, ...]
    format: str = "memory"
    source: Path | None = None
    problems: tuple[Problem, ...] = field(default=())

    @classmethod
    def from_images(cls, images: Sequence[GroundTruthImage], **kwargs) -> GroundTruth:
        """Ground truth whose categories are the descs that occur, ids 1.. in sorted order."""
        descs = sorted({d for image in images for d in image.descs})
        return cls(tuple(images), tuple(Category(i, d) for i, d in enumerate(descs, 1)), **kwargs)

    @cached_property
    def _by_key(self) -> dict[str, int]:
        return {image.key: i for i, image in enumerate(self.images)}

    @cached_property
    def _by_name(self) -> dict[str, list[int]]:
        names: dict[str, list[int]] = {}
        for i, image in enumerate(self.images):
            names.setdefault(posixpath.basename(image.key.replace("\\", "/")), []).append(i)
        return names

    @cached_property
    def category_ids(self) -> dict[str, int]:
        """desc -> COCO category id."""
        return {c.desc: c.id for c in self.categories}

    def index(self, key: str) -> int | None:
        """Position in `images` of the image a prediction names; None when there is none.

        Tries the key as given, then normalised (`./a/b.jpg`, backslashes), then the bare file
        name when exactly one image has it.
        """
        found = self._by_key.get(key)
        if found is not None:
            return found
        norm = posixpath.normpath(key.replace("\\", "/"))
        found = self._by_key.get(norm)
        if found is not None:
            return found
        same_name = self._by_name.get(posixpath.basename(norm), [])
        return same_name[0] if len(same_name) == 1 else None

    def find(self, key: str) -> GroundTruthImage | None:
        """The image a prediction's key names (see `index`), or None."""
        i = self.index(key)
        return None if i is None else self.images[i]

    @property
    def object_count(self) -> int:
        return sum(len(image) for image in self.images)
