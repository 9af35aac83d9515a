"""Image files for `convert`: upright sizes from headers, and the one resize each photo gets; and
`to_rgb`, the one conversion of decoded pixels to 8-bit RGB (16-bit greyscale scaled, not
clipped to white; alpha on white) that convert and predict both use.

Frames: the *stored* frame is the pixel grid as encoded in the file; the *upright* frame is the
photo after its EXIF Orientation is applied (what annotation platforms show and what `info.width/
height` and every raw box refer to). Sizes are `(width, height)` in PIL order.

`resize_to_file` is a pure scale of the whole upright frame to `dst_wh` (no crop, no padding), so a
box maps with `geometry.scale_box_xyxy(box, orig_wh, dst_wh)`. It is fast because it never decodes
or resamples more pixels than it needs:
1. JPEG draft mode: libjpeg scales by 1/2, 1/4 or 1/8 inside the IDCT, chosen so the decoded image
   stays >= `draft_margin` x the target on both sides;
2. resample in the stored frame (Pillow reduces by an integer factor first while the rest stays
   >= `reducing_gap` x the target), with `box` set to the exact extent of the original image in the
   drafted grid: libjpeg rounds a scaled size up, and that padded edge must not stretch the image;
3. apply the EXIF orientation to the small result (an exact pixel permutation, cheap at that size).
Measured (benchmarks/convert.py, one core): 2.3x the images/s of decode + exif_transpose +
LANCZOS at full size for 1440x1920 photos, 5.6x for 12 MP ones, at ~40 dB PSNR from that path.
Its profile at 1440x1920 (ms per image, 17 in all): JPEG decode 6.6 (Huffman decoding, which no
DCT scale skips: a 1/2 draft decodes in 85% of the full decode's time), BICUBIC resample 6.3,
encode 2.1, file system 0.8, the rest Python. With resampling free it would be 3.4x; BILINEAR
saves a third of the resample (2.7x) for 3.2 dB, so BICUBIC, the processor's own filter, stays.
`draft_margin=1.25` keeps the PSNR >= ~38 dB for every source size (a draft landing within
1.03x of the target measured 36 dB; 1.35x, 40 dB).
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from pathlib import Path

from PIL import ExifTags, Image

from bbucli.errors import BbuError, DataError
from bbucli.schema import new_file_mode

# Orientation -> the transpose making the stored pixels upright (as PIL.ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})
# Fixed encoder settings, so that a rerun writes identical bytes. 4:4:4 chroma: at ~0.4 MP a
# 4:2:0 JPEG blurs the colour of thin cables and small stickers, which the classes depend on.
_JPEG_SUBSAMPLING = 0
_JPEG_OPTIMIZE = False
# What the model's processor does to images with alpha (transformers' convert_to_rgb).
_ALPHA_BACKGROUND = (255, 255, 255, 255)
_UNREADABLE_HINT = "re-export the image, or remove it together with its annotation file"


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """The upright `(width, height)` of a JPEG or PNG, from its header only (no pixel decode).

    Orientations 5-8 swap width and height. A file that cannot be opened or whose header is
    cut raises `DataError` naming the file; damage further in (a cut scan) shows only when the
    pixels are decoded, i.e. in `resize_to_file`.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = _orientation(image)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {_reason(err)}", hint=_UNREADABLE_HINT) from err
    return (height, width) if orientation in _SWAPS_AXES else (width, height)


def open_resized(
    src: str | os.PathLike[str],
    dst_wh: tuple[int, int],
    *,
    draft_margin: float | None = 1.25,
    reducing_gap: float | None = 2.0,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode `src` straight to an upright RGB image of exactly `dst_wh`.

    Returns `(image, orig_wh)`, `orig_wh` the upright size of the original; the result is the
    whole upright frame scaled by `dst_wh / orig_wh` per axis. `draft_margin=None` turns JPEG
    draft decoding off. BICUBIC is the Qwen2-VL image processor's own filter. Images with alpha
    are composited on white, as the model's processor would. Raises `DataError` for a file that
    cannot be decoded (missing, not an image, truncated).
    """
    if len(dst_wh) != 2 or min(dst_wh) <= 0:
        raise ValueError(f"dst_wh must be two positive sizes, got {dst_wh}")
    try:
        with Image.open(src) as image:
            orientation = _orientation(image)
            swap = orientation in _SWAPS_AXES
            stored_wh = image.size
            # Everything up to the transpose happens in the stored frame.
            target = (dst_wh[1], dst_wh[0]) if swap else (int(dst_wh[0]), int(dst_wh[1]))
            box = _draft(image, target, draft_margin)
            resized = _to_rgb_or_l(image).resize(
                target, resample, box=box, reducing_gap=reducing_gap
            )
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise DataError(
            f"cannot decode image {src}: {_reason(err)}", hint=_UNREADABLE_HINT
        ) from err
    if orientation in _UPRIGHT:
        resized = resized.transpose(_UPRIGHT[orientation])
    if resized.mode != "RGB":
        resized = resized.convert("RGB")
    orig_wh = (stored_wh[1], stored_wh[0]) if swap else stored_wh
    return resized, orig_wh


def resize_to_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dst_wh: tuple[int, int],
    *,
    quality: int = 95,
    draft_margin: float | None = 1.25,
    reducing_gap: float | None = 2.0,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> tuple[int, int]:
    """Write `src`, EXIF-upright and resized to exactly `dst_wh`, as a JPEG at `dst`.

    Returns the upright original `(width, height)`: boxes in that frame map to the written image
    with `geometry.scale_box_xyxy(box, orig_wh, dst_wh)`. The file has no EXIF (the orientation is
    applied), fixed encoder settings (same input, same bytes) and appears atomically.
    """
    image, orig_wh = open_resized(
        src, dst_wh, draft_margin=draft_margin, reducing_gap=reducing_gap, resample=resample
    )
    save_jpeg_atomic(image, dst, quality=quality)
    return orig_wh


def save_jpeg_atomic(image: Image.Image, dst: str | os.PathLike[str], *, quality: int = 95) -> None:
    """Encode `image` as a metadata-free JPEG into a temp file beside `dst`, then rename it over
    `dst`: a reader never sees a partial file. Raises `BbuError` when `dst` cannot be written."""
    dst = Path(dst)
    tmp_name = None
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp", delete=False
        ) as tmp:
            tmp_name = tmp.name
            os.chmod(tmp_name, new_file_mode())  # the umask's mode, not the temp file's 0o600
            image.save(
                tmp,
                format="JPEG",
                quality=quality,
                subsampling=_JPEG_SUBSAMPLING,
                optimize=_JPEG_OPTIMIZE,
            )
        os.replace(tmp_name, dst)
    except OSError as err:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise BbuError(
            f"cannot write image {dst}: {_reason(err)}",
            hint="check that the output folder is writable and the disk has space",
        ) from err


def _draft(
    image: Image.Image, target_wh: tuple[int, int], margin: float | None
) -> tuple[float, float, float, float] | None:
    """Ask a JPEG for a DCT-scaled decode >= `margin * target_wh` (stored frame); return the
    original image's extent in the drafted grid, `(0, 0, w / scale, h / scale)`, or None."""
    if margin is None or image.format not in ("JPEG", "MPO"):
        return None
    request = (math.ceil(target_wh[0] * margin), math.ceil(target_wh[1] * margin))
    drafted = image.draft("RGB", request)
    return None if drafted is None else drafted[1]


def to_8bit(image: Image.Image) -> Image.Image:
    """`image` in 8 bits per channel, scaled when it has more: Pillow's `convert("RGB"/"L")`
    clips 16-bit, 32-bit and float greyscale (modes I;16*, I, F) at 255, which turns a 16-bit PNG
    white. Scale: I;16* by its full range (65535 -> 255); I and F by the smallest of 255,
    65535 (16-bit data in a 32-bit mode) and the image's own maximum that holds its values, and F
    within [0, 1] by 1. Returns an L image for those modes, `image` itself for any other."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    if image.mode.startswith("I;16"):
        top: float = 65535
    else:
        high = image.getextrema()[1]
        if image.mode == "F" and high <= 1.0:
            top = 1.0
        else:
            top = next(t for t in (255, 65535, high) if high <= t)
    wide = image if image.mode in ("I", "F") else image.convert("I")
    return wide.point(lambda v: v * (255 / top)).convert("L")


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as RGB the way the model's processor would take it: high bit depths scaled
    (`to_8bit`), alpha composited on white. The one conversion convert and predict share."""
    image = _to_rgb_or_l(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_rgb_or_l(image: Image.Image) -> Image.Image:
    """Pixels in a mode that resamples well: L and RGB stay (L is converted after the resize, at
    a third of the cost), high bit depths are scaled to L (`to_8bit`), alpha is composited on
    white, everything else becomes RGB."""
    image = to_8bit(image)
    if image.mode in ("RGB", "L"):
        return image
    if image.has_transparency_data:
        background = Image.new("RGBA", image.size, _ALPHA_BACKGROUND)
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _orientation(image: Image.Image) -> int:
    """EXIF Orientation 1-8 of an opened image without decoding its pixels; 1 when absent or
    unreadable (as viewers do)."""
    try:
        if image.format == "PNG" and "exif" not in image.info:
            # Pillow reads a PNG's eXIf only when it precedes the pixel data; otherwise getexif()
            # would decode the whole image to find it, so walk the chunk headers instead.
            raw = _png_exif_after_pixels(image)
            if raw is None:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = image.getexif()
        value = exif.get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, TypeError, struct.error):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _png_exif_after_pixels(image: Image.Image) -> bytes | None:
    """The payload of a PNG's eXIf chunk found by seeking over chunk bodies; None if absent."""
    fp = image.fp
    if fp is None:
        return None
    position = fp.tell()
    try:
        fp.seek(8)
        while True:
            head = fp.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                return fp.read(length)
            if kind == b"IEND":
                return None
            fp.seek(length + 4, os.SEEK_CUR)
    finally:
        fp.seek(position)


def _reason(err: BaseException) -> str:
    """One line for an exception: its message, or its type when it has none."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
