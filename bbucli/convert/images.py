"""Image files for `convert`: upright sizes from headers, and the one resize each photo gets; and
`to_rgb`, the one conversion of decoded pixels to 8-bit RGB (16-bit greyscale scaled, not
clipped to white; alpha on white) that convert and predict both use.

Frames: the *stored* frame is the pixel grid as encoded in the file; the *upright* frame is the
photo after its EXIF Orientation is applied (what annotation platforms show and what `info.width/
height` and every raw box refer to). Sizes are `(width, height)` in PIL order.

`resize_to_file` is a pure scale of the whole upright frame to `dst_wh` (no crop, no padding), so a
box maps with `geometry.scale_box_xyxy(box, orig_wh, dst_wh)`. It is fast because it never decodes
or resamples more pixels than it needs, and resamples with SIMD:
1. JPEG draft mode: libjpeg scales by 1/2, 1/4 or 1/8 inside the IDCT, chosen so the decoded image
   stays >= `draft_margin` x the target on both sides;
2. resample in the stored frame (an integer reduce first while the rest stays >= `reducing_gap` x
   the target, as Pillow does), with `box` set to the exact extent of the original image in the
   drafted grid: libjpeg rounds a scaled size up, and that padded edge must not stretch the image.
   RGB is resampled by torch's antialiased uint8 kernel on one thread: Pillow's BICUBIC filter at
   0.7 ms instead of 5.5 ms (within rounding of Pillow's result, see `_resize_rgb_with_torch`);
3. apply the EXIF orientation to the small result (an exact pixel permutation, cheap at that size).
Measured (benchmarks/convert.py, one process, on a 2-core EPYC shared with other jobs, so CPU time
is the steadier figure): 3.4-4.4x the images per CPU-second of decode + exif_transpose + LANCZOS
at full size for 1440x1920 photos (Pillow's own BICUBIC here: 3.0-3.1x), 6.8x for 12 MP ones, at
39.2 dB minimum PSNR from that path. Profile at 1440x1920: the JPEG decode is half the time
(Huffman decoding, which no DCT scale skips: a 1/2 draft decodes in 85% of the full decode's
time), encode 15%, file system 12%, Python 7%, the resample 7-11%, the copies to and from torch 4%.
Measured and dropped: decoding and encoding YCbCr to skip both colour conversions (libjpeg-turbo's
SIMD conversions cost next to nothing: no faster, 0.3 dB less), libjpeg's fast IDCT without fancy
upsampling (no faster at a 1/2 draft, 0.6 dB less, and only reachable through a private Pillow
attribute), reading the file into memory first or in one block (no faster), Pillow's free-block
cache (with torch loaded, glibc already reuses the freed memory: no page faults left to save).
BILINEAR now saves under 1 ms for 3.2 dB, so BICUBIC, the processor's own filter, stays.
`draft_margin=1.25` keeps the PSNR >= ~38 dB for every source size (a draft landing within 1.03x of
the target measured 36 dB; 1.35x, 40 dB).
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
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
# Pillow filters whose torch antialiased counterpart computes the same weights.
_TORCH_MODES = {Image.Resampling.BICUBIC: "bicubic", Image.Resampling.BILINEAR: "bilinear"}
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
            resized = _resize(_to_rgb_or_l(image), target, resample, box, reducing_gap)
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


def _resize(
    image: Image.Image,
    target_wh: tuple[int, int],
    resample: Image.Resampling,
    box: tuple[float, float, float, float] | None,
    reducing_gap: float | None,
) -> Image.Image:
    """`image.resize(target_wh, resample, box=box, reducing_gap=reducing_gap)` for a `box` that
    starts at (0, 0) (or None: the whole image). RGB with BICUBIC or BILINEAR goes through
    torch's antialiased uint8 kernel (Pillow's filter, see `_resize_rgb_with_torch`); every other
    mode and filter, and any size torch would round differently, stays with Pillow, whose output
    is then byte for byte that of the call above."""
    if reducing_gap is not None:
        # Pillow's own first step (Image.resize): an integer box reduce while the rest of the
        # scale stays >= reducing_gap. Its reduce box is the whole image for a box from (0, 0) to
        # within a pixel of the far edge, as every box here is.
        full = box or (0.0, 0.0, float(image.width), float(image.height))
        factor = (
            max(1, int(full[2] / target_wh[0] / reducing_gap)),
            max(1, int(full[3] / target_wh[1] / reducing_gap)),
        )
        if factor != (1, 1) and resample != Image.Resampling.NEAREST:
            image = image.reduce(factor)
            box = (0.0, 0.0, full[2] / factor[0], full[3] / factor[1])
    if image.mode == "RGB" and resample in _TORCH_MODES:
        resized = _resize_rgb_with_torch(image, target_wh, _TORCH_MODES[resample], box)
        if resized is not None:
            return resized
    return image.resize(target_wh, resample, box=box)


def _resize_rgb_with_torch(
    image: Image.Image,
    target_wh: tuple[int, int],
    mode: str,
    box: tuple[float, float, float, float] | None,
) -> Image.Image | None:
    """RGB `image`, its extent `box` (from (0, 0); None: the whole image) resampled to exactly
    `target_wh` by `torch.nn.functional.interpolate(..., antialias=True)` on one thread; None
    when torch's output size for that box would not be `target_wh`.

    Why torch: its uint8 antialiased kernel computes Pillow's separable filter (same support,
    same a = -0.5 cubic, fixed-point weights) with SIMD: 0.7 ms, plus 1 ms copying the pixels
    between Pillow and torch, where Pillow takes 5.5 ms for 720x960 -> 532x728. Only the rounding
    between the two passes differs from Pillow's result: >= 54 dB PSNR over random sizes, boxes
    and scales, at most 7 levels on a few edge pixels. One thread: the convert pool is the
    parallelism, and no OpenMP thread pool starts in a process that may fork workers later. A
    box narrower than the image (libjpeg's rounded-up draft edge) is passed as the scale factor
    `target / box`, which torch turns into the output size floor(size * scale): the target when
    the padding is under a target pixel, which is checked rather than assumed."""
    import torch  # here, not at the top: 0.8 s to import, which `to_rgb` users must not pay

    width, height = image.size
    target_hw = (target_wh[1], target_wh[0])
    scale_hw = None  # None: the box is the whole image
    if box is not None and (box[2], box[3]) != (width, height):
        scale_hw = (target_hw[0] / box[3], target_hw[1] / box[2])
        if (math.floor(height * scale_hw[0]), math.floor(width * scale_hw[1])) != target_hw:
            return None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # (1, 3, H, W) viewing (1, H, W, 3) memory: channels-last strides, which the kernel reads
        # and writes as such (a (3, H, W) view made 4-D instead yields planar output: 1 ms more).
        pixels = torch.from_numpy(np.array(image)).unsqueeze(0).permute(0, 3, 1, 2)
        if scale_hw is None:
            out = torch.nn.functional.interpolate(pixels, size=target_hw, mode=mode, antialias=True)
        else:
            out = torch.nn.functional.interpolate(
                pixels,
                scale_factor=scale_hw,
                recompute_scale_factor=False,
                mode=mode,
                antialias=True,
            )
    finally:
        torch.set_num_threads(threads)
    if tuple(out.shape[2:]) != target_hw:
        return None
    return Image.fromarray(out[0].permute(1, 2, 0).numpy())


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
