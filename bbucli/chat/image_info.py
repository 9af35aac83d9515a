"""Images as the model sees them: header reads, the decode, and boxes in the model's frame.

Owns `ImageInfo` and the pure functions `ChatProcessor` uses for its images: the header read
(size + EXIF orientation, no pixel decode) that gives the smart_resize fixed point and the
vision-token count, the decode that brings an image to that size, the check that the model's image
processor kept that size, and the rescaling of a sample's boxes when the image is resized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

from bbucli.convert.images import to_rgb
from bbucli.errors import DataError, ModelError
from bbucli.geometry import is_fixed_point, resized_wh, scale_box_xyxy
from bbucli.schema import DetObject, Sample

if TYPE_CHECKING:
    import torch

_EXIF_ORIENTATION = 274
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF rotations by 90/270 degrees: width and height swap


@dataclass(frozen=True)
class ImageInfo:
    """An image as read from its header: `stored_wh` EXIF-upright size on disk, `model_wh` the size
    the model sees (the smart_resize fixed point), `vision_tokens` = (w / 28) * (h / 28) of model_wh."""

    path: Path
    stored_wh: tuple[int, int]
    model_wh: tuple[int, int]
    vision_tokens: int
    #: An image given in memory: its upright RGB pixels at `stored_wh` (`path` is then only a name).
    pixels: Image.Image | None = field(default=None, compare=False, repr=False)

    @property
    def needs_resize(self) -> bool:
        return self.stored_wh != self.model_wh


def read_image_info(path: Path, min_pixels: int, max_pixels: int) -> ImageInfo:
    """Read an image header (no pixel decode): EXIF-upright size and the smart_resize fixed point
    of `min_pixels`/`max_pixels` the model sees; DataError naming the file when unreadable."""
    try:
        with Image.open(path) as im:
            wh = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except FileNotFoundError as exc:
        raise DataError(
            f"image not found: {path}", hint="check the JSONL's image paths"
        ) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(
            f"cannot read image {path}: {exc}", hint="re-export or remove it"
        ) from exc
    if orientation in _TRANSPOSED_ORIENTATIONS:
        wh = (wh[1], wh[0])
    return _sized(path, wh, min_pixels, max_pixels)


def memory_image_info(
    image: Image.Image, name: Path, min_pixels: int, max_pixels: int
) -> ImageInfo:
    """An image given in memory, as `read_image_info` reads a file (EXIF orientation applied); its
    pixels travel in the ImageInfo, `name` only names it."""
    upright = to_rgb(ImageOps.exif_transpose(image))
    return _sized(name, upright.size, min_pixels, max_pixels, upright)


def _sized(
    path: Path,
    wh: tuple[int, int],
    min_pixels: int,
    max_pixels: int,
    pixels: Image.Image | None = None,
) -> ImageInfo:
    if is_fixed_point(wh, min_pixels, max_pixels):
        model_wh = wh
    else:
        model_wh = resized_wh(wh, min_pixels, max_pixels)
    return ImageInfo(path, wh, model_wh, (model_wh[0] // 28) * (model_wh[1] // 28), pixels)


def load_model_pixels(info: ImageInfo) -> Image.Image:
    """Decode the image upright as RGB at `info.model_wh` (resized when the file is not there).

    DataError naming the file when its pixels do not decode (a truncated or corrupt file whose
    header reads fine)."""
    if info.pixels is not None:
        im = info.pixels
    else:
        try:
            with Image.open(info.path) as im:
                im = to_rgb(ImageOps.exif_transpose(im))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            # PIL reports a bad stream as OSError ("image file is truncated"), SyntaxError (a
            # broken PNG chunk) or ValueError.
            raise DataError(
                f"cannot decode image {info.path}: {exc}", hint="re-export or remove it"
            ) from exc
    if im.size != info.stored_wh:
        raise DataError(f"image {info.path} changed size between header and decode")
    if info.needs_resize:
        im = im.resize(info.model_wh, Image.Resampling.BICUBIC)
    return im


def model_objects(sample: Sample, info: ImageInfo) -> tuple[DetObject, ...]:
    """The sample's objects in the model's frame (rescaled when the image is resized here)."""
    if not info.needs_resize:
        return sample.objects
    return tuple(
        DetObject(scale_box_xyxy(o.bbox_2d, info.stored_wh, info.model_wh), o.desc)
        for o in sample.objects
    )


def check_image_grid(images: Sequence[ImageInfo], grid: torch.Tensor) -> None:
    """The image processor's (T, 3) patch grids must be (1, h / 14, w / 14) of each image's
    `model_wh`: anything else means it resized an image again (DataError naming the file)."""
    if grid.shape[0] != len(images):
        raise ModelError(
            f"the image processor returned {grid.shape[0]} grids for {len(images)} images"
        )
    for info, thw in zip(images, grid.tolist(), strict=True):
        expected = [1, info.model_wh[1] // 14, info.model_wh[0] // 14]
        if thw != expected:
            raise DataError(
                f"image {info.path}: the image processor's grid {thw} differs from {expected} "
                f"for size {info.model_wh}; it resized the image again",
                hint="check min_pixels/max_pixels against the processor's",
            )
