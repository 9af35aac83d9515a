"""Defect escape rate: how many defects would reach no inspector.

A ground-truth object is a *defect* when its desc is a taxonomy class with `defect: true`
(matched through `Taxonomy.resolve`, so zh, en and raw spellings all work), or, for a desc the
taxonomy does not know, when its last level (of two or more) is a state that only defect classes
have (`incorrect`, `not_installed`, `mismatch`, `连接错误`, ...).

An inspector opens an image for a defect class when the model reports that class there. So, at the
operating threshold (IoU 0.5 matching), a defect class c on an image *escapes* when no prediction
of class c on that image matched any ground-truth object of class c. Then

    escape rate = (defect objects on escaped (image, class) pairs) / (all defect objects)

e.g. an image with 3 loose screws of which the model finds 1 escapes nothing (the image gets
reviewed); an image whose only loose screw is missed, or reported as `correct`, escapes 1.
`escaped_images` counts images with at least one escaped class. Crowd objects are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bbucli.taxonomy import Taxonomy


def defect_states(taxonomy: Taxonomy) -> frozenset[str]:
    """Last desc levels (zh and en) that only defect classes use."""
    defect, fine = set(), set()
    for cls in taxonomy.classes:
        for desc in (cls.zh, cls.en):
            parts = desc.split("/")
            if len(parts) >= 2:
                (defect if cls.defect else fine).add(parts[-1])
    return frozenset(defect - fine)


def is_defect(desc: str, taxonomy: Taxonomy, states: frozenset[str] | None = None) -> bool:
    """Whether objects of this desc are defects (module doc)."""
    cls = taxonomy.class_for_desc(desc) or taxonomy.resolve(desc)
    if cls is not None:
        return cls.defect
    parts = desc.split("/")
    return len(parts) >= 2 and parts[-1] in (states if states is not None else defect_states(taxonomy))


@dataclass(frozen=True)
class EscapeRate:
    """Escape counts at the operating threshold (module doc); per_class: (desc, objects, escaped)."""

    defect_objects: int
    escaped_objects: int
    defect_images: int
    escaped_images: int
    per_class: tuple[tuple[str, int, int], ...]

    @property
    def rate(self) -> float | None:
        """Escaped share of defect objects; None when the split has no defect."""
        return self.escaped_objects / self.defect_objects if self.defect_objects else None

    def to_dict(self) -> dict:
        return {
            "rate": self.rate,
            "defect_objects": self.defect_objects,
            "escaped_objects": self.escaped_objects,
            "defect_images": self.defect_images,
            "escaped_images": self.escaped_images,
            "per_class": [{"desc": d, "objects": n, "escaped": e} for d, n, e in self.per_class],
        }


def escape_rate(
    gt_labels: Sequence[np.ndarray],
    gt_crowd: Sequence[np.ndarray],
    gt_found: Sequence[np.ndarray],
    descs: Sequence[str],
    defect: Sequence[bool],
) -> EscapeRate:
    """Per image: (M,) category indices, crowd flags and found flags (matched by a prediction
    of its own class); descs/defect: per category index."""
    objects = np.zeros(len(descs), np.int64)
    escaped = np.zeros(len(descs), np.int64)
    defect_images = escaped_images = 0
    is_defect_label = np.asarray(defect, dtype=bool)
    for labels, crowd, found in zip(gt_labels, gt_crowd, gt_found, strict=True):
        real = ~crowd
        classes = [c for c in np.unique(labels[real]) if is_defect_label[c]]
        if not classes:
            continue
        defect_images += 1
        image_escaped = False
        for c in classes:
            mine = real & (labels == c)
            n = int(mine.sum())
            objects[c] += n
            if not found[mine].any():
                escaped[c] += n
                image_escaped = True
        escaped_images += image_escaped
    per_class = tuple((descs[c], int(objects[c]), int(escaped[c])) for c in range(len(descs)) if defect[c])
    return EscapeRate(int(objects.sum()), int(escaped.sum()), defect_images, escaped_images, per_class)
