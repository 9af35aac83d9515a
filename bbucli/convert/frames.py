"""Reconcile the frame an annotation declares with the real, EXIF-upright image.

Frames (original pixels, floats):
- declared: `info.width/height` (vendor), `imageWidth/imageHeight` (Labelme), `width/height` (COCO);
- stored: the JPEG's pixels as they lie in the file, before EXIF orientation;
- upright: the stored pixels after EXIF orientation, what a person sees and what `convert` resizes.

Policy (`reconcile`), in order:
1. no declared size, or declared == upright (within 1 px): boxes are upright already (`same`);
2. the image carries a rotating EXIF orientation (5-8) and the declared size is the stored size or
   a uniform scale of it: the annotation tool ignored EXIF, so the boxes are scaled to the stored
   frame and rotated upright exactly as the pixels are (`exif`, reported as `exif_frame`);
3. declared is a uniform scale of upright (aspect within 1%): the tool worked on a scaled
   preview; boxes are rescaled per axis (`rescaled`, reported as `size_rescaled`);
4. anything else, including a 90-degree swap with no EXIF orientation to say which way the photo
   turned: the boxes cannot be placed, the image is dropped (`mismatch`, `size_mismatch`).
Orientations 2-4 do not change the size and cannot be detected from it; the export's boxes are
in the upright frame, so they are taken as upright.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

ORIENTATION_TAG = 0x0112
SAME_FRAME_TOLERANCE_PX = 1.0
ASPECT_TOLERANCE = 0.01
Box = tuple[float, float, float, float]


def exif_orientation(path: str | Path) -> int:
    """The EXIF Orientation (1-8) of an image, read from its header; 1 when absent or invalid."""
    with Image.open(path) as image:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def stored_wh(upright_wh: tuple[int, int], orientation: int) -> tuple[int, int]:
    """The size of the stored pixels of an image whose upright size is `upright_wh`."""
    return (upright_wh[1], upright_wh[0]) if orientation in (5, 6, 7, 8) else upright_wh


@dataclass(frozen=True)
class FrameFix:
    """How boxes in the declared frame reach the upright frame of the image."""

    kind: Literal["same", "exif", "rescaled", "mismatch"]
    declared_wh: tuple[float, float]
    upright_wh: tuple[int, int]
    orientation: int = 1

    @property
    def detail(self) -> str:
        d = f"{self.declared_wh[0]:g}x{self.declared_wh[1]:g}"
        u = f"{self.upright_wh[0]}x{self.upright_wh[1]}"
        return f"declared {d}, image {u} upright (EXIF orientation {self.orientation})"

    def to_upright(self, box: Box) -> Box:
        """Map an xyxy box from the declared frame to the upright frame (unclipped floats)."""
        if self.kind == "same":
            return box
        if self.kind == "rescaled":
            sx = self.upright_wh[0] / self.declared_wh[0]
            sy = self.upright_wh[1] / self.declared_wh[1]
            return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
        if self.kind == "exif":
            sw, sh = stored_wh(self.upright_wh, self.orientation)
            sx, sy = sw / self.declared_wh[0], sh / self.declared_wh[1]
            stored = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            return orient_box(stored, (sw, sh), self.orientation)
        raise ValueError("a mismatched frame has no mapping")


def orient_box(box: Box, stored: tuple[float, float], orientation: int) -> Box:
    """Map an xyxy box from the stored frame (size `stored`) to the upright frame, exactly as
    `PIL.ImageOps.exif_transpose` moves the pixels."""
    w, h = stored

    def point(x: float, y: float) -> tuple[float, float]:
        return {
            1: (x, y),
            2: (w - x, y),
            3: (w - x, h - y),
            4: (x, h - y),
            5: (y, x),
            6: (h - y, x),
            7: (h - y, w - x),
            8: (y, w - x),
        }[orientation]

    (ax, ay), (bx, by) = point(box[0], box[1]), point(box[2], box[3])
    return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


def _near(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return abs(a[0] - b[0]) <= SAME_FRAME_TOLERANCE_PX and abs(a[1] - b[1]) <= SAME_FRAME_TOLERANCE_PX


def _uniform(a: tuple[float, float], b: tuple[float, float]) -> bool:
    sx, sy = b[0] / a[0], b[1] / a[1]
    return abs(sx / sy - 1.0) <= ASPECT_TOLERANCE


def reconcile(
    declared_wh: tuple[float, float] | None, upright_wh: tuple[int, int], orientation: int = 1
) -> FrameFix:
    """Decide how the declared annotation frame maps onto the upright image (module docstring)."""
    if declared_wh is None or _near(declared_wh, upright_wh):
        return FrameFix("same", declared_wh or upright_wh, upright_wh, orientation)
    stored = stored_wh(upright_wh, orientation)
    if orientation in (5, 6, 7, 8) and (_near(declared_wh, stored) or _uniform(declared_wh, stored)):
        return FrameFix("exif", declared_wh, upright_wh, orientation)
    if _uniform(declared_wh, upright_wh):
        return FrameFix("rescaled", declared_wh, upright_wh, orientation)
    return FrameFix("mismatch", declared_wh, upright_wh, orientation)
