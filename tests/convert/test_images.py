"""Header-only sizes and the fast resize of bbucli.convert.images, against Pillow's naive path."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from bbucli.convert.images import open_resized, read_image_size, resize_to_file, to_8bit, to_rgb
from bbucli.errors import BbuError, DataError
from bbucli.geometry import resized_wh

# The stored pixels of an upright image shown with orientation o are upright.transpose(_STORE[o]).
_STORE = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def save_jpeg(path: Path, upright: Image.Image, orientation: int = 1, quality: int = 92) -> Path:
    """Store `upright` as a JPEG that a viewer shows upright thanks to EXIF `orientation`."""
    stored = upright if _STORE[orientation] is None else upright.transpose(_STORE[orientation])
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    stored.save(path, "JPEG", quality=quality, exif=exif.tobytes())
    return path


def photo_like(wh: tuple[int, int], seed: int = 0) -> Image.Image:
    """A cabinet-photo stand-in: smooth light, panels, screws, cables, text, sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = wh
    base = rng.integers(40, 200, size=(6, 5, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(30):
        x, y = int(rng.integers(0, w - 50)), int(rng.integers(0, h - 50))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.rectangle(
            (x, y, x + int(rng.integers(40, 500)), y + int(rng.integers(20, 300))),
            fill=colour,
            outline=(20, 20, 20),
            width=2,
        )
    for _ in range(80):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(4, 14))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(190, 190, 180), outline=(60, 60, 60))
    for _ in range(20):
        points = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(4)]
        draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=4)
    for _ in range(40):
        draw.text((int(rng.integers(0, w - 120)), int(rng.integers(0, h - 20))), "BBU-3910", fill=0)
    noisy = np.asarray(image.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.int16)
    noisy = noisy + rng.normal(0.0, 3.0, noisy.shape).round().astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def naive_resize(src: Path, dst_wh: tuple[int, int]) -> Image.Image:
    """The reference: full decode, exif_transpose, LANCZOS."""
    with Image.open(src) as image:
        return (
            ImageOps.exif_transpose(image).convert("RGB").resize(dst_wh, Image.Resampling.LANCZOS)
        )


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return 10.0 * math.log10(255.0**2 / max(float(np.mean((x - y) ** 2)), 1e-12))


# ---- read_image_size ------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_size_is_upright_from_exif(tmp_path: Path, orientation: int) -> None:
    path = save_jpeg(tmp_path / "a.jpg", Image.new("RGB", (120, 90), "gray"), orientation)
    assert read_image_size(path) == (120, 90)
    with Image.open(path) as image:
        assert image.size == ((90, 120) if orientation in (6, 8) else (120, 90))


def test_png_sizes_with_exif_before_and_after_the_pixels(tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (30, 20)).save(plain)
    assert read_image_size(plain) == (30, 20)
    exif = Image.Exif()
    exif[0x0112] = 6
    before = tmp_path / "before.png"
    Image.new("RGB", (30, 20)).save(before, exif=exif.tobytes())
    assert read_image_size(before) == (20, 30)
    # Pillow only sees an eXIf chunk that follows IDAT after decoding; we must find it unaided.
    after = tmp_path / "after.png"
    data = plain.read_bytes()
    payload = exif.tobytes()[6:]  # PNG eXIf holds the TIFF block without the "Exif\0\0" prefix
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    after.write_bytes(data[:-12] + chunk + data[-12:])
    assert read_image_size(after) == (20, 30)
    image, orig_wh = open_resized(after, (10, 14))
    assert orig_wh == (20, 30) and image.size == (10, 14)


def test_size_reads_the_header_only(tmp_path: Path) -> None:
    path = save_jpeg(tmp_path / "cut.jpg", photo_like((400, 300)), orientation=6)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the scan is cut, the header is whole
    assert read_image_size(path) == (400, 300)
    with pytest.raises(DataError, match="cut.jpg"):
        resize_to_file(path, tmp_path / "out.jpg", (200, 150))


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0\x00\x10JF", b"not an image at all"])
def test_unreadable_header_is_a_data_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.jpeg"
    path.write_bytes(content)
    with pytest.raises(DataError, match="broken.jpeg") as info:
        read_image_size(path)
    assert info.value.hint
    with pytest.raises(DataError, match="broken.jpeg"):
        resize_to_file(path, tmp_path / "out.jpg", (28, 28))


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.jpg"):
        read_image_size(tmp_path / "missing.jpg")


# ---- resize_to_file -------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_output_is_exactly_dst_and_matches_the_naive_path(tmp_path: Path, orientation: int) -> None:
    src = save_jpeg(tmp_path / "photo.jpg", photo_like((1440, 1920)), orientation)
    dst_wh = resized_wh((1440, 1920))
    out = tmp_path / "out" / "photo.jpeg"
    assert resize_to_file(src, out, dst_wh) == (1440, 1920)
    with Image.open(out) as written:
        assert written.size == dst_wh and written.mode == "RGB" and written.format == "JPEG"
        assert not written.getexif()
    ours, _ = open_resized(src, dst_wh)
    assert psnr(ours, naive_resize(src, dst_wh)) >= 35.0
    assert list((tmp_path / "out").iterdir()) == [out]  # no temp file left behind


def test_rerun_writes_identical_bytes(tmp_path: Path) -> None:
    src = save_jpeg(tmp_path / "photo.jpg", photo_like((600, 800)), orientation=6)
    resize_to_file(src, tmp_path / "a.jpeg", (280, 364))
    first = (tmp_path / "a.jpeg").read_bytes()
    resize_to_file(src, tmp_path / "a.jpeg", (280, 364))
    resize_to_file(src, tmp_path / "b.jpeg", (280, 364))
    assert (tmp_path / "a.jpeg").read_bytes() == first == (tmp_path / "b.jpeg").read_bytes()


def marker_image(wh: tuple[int, int], inset: int, width: int) -> Image.Image:
    """Grey with dark lines `inset` px inside each edge, `width` px thick."""
    w, h = wh
    image = Image.new("RGB", wh, (200, 200, 200))
    draw = ImageDraw.Draw(image)
    for x in (inset, w - inset - width):
        draw.rectangle((x, 0, x + width - 1, h - 1), fill=(0, 0, 0))
    for y in (inset, h - inset - width):
        draw.rectangle((0, y, w - 1, y + width - 1), fill=(0, 0, 0))
    return image


def line_centres(profile: np.ndarray) -> tuple[float, float]:
    """Darkness-weighted centres (pixel centres at i + 0.5) of the first and second half."""
    darkness = np.clip(200.0 - profile, 0.0, None)
    half = len(darkness) // 2
    centres = []
    for lo, hi in ((0, half), (half, len(darkness))):
        idx = np.arange(lo, hi) + 0.5
        centres.append(float((idx * darkness[lo:hi]).sum() / darkness[lo:hi].sum()))
    return centres[0], centres[1]


# 1441 x 1929: odd sizes, so every DCT scale pads the drafted grid at the stored right/bottom edge;
# orientations 3/6/8 move that edge to the upright left or top.
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize(
    ("draft_margin", "dst_wh"),
    [(1.25, (532, 728)), (1.25, (140, 196)), (None, (140, 196)), (1.0, (178, 240))],
    ids=["draft-1/2", "draft-1/8", "reduce", "draft-1/8-tight"],
)
def test_field_of_view_is_kept_to_a_fraction_of_a_pixel(
    tmp_path: Path, orientation: int, draft_margin: float | None, dst_wh: tuple[int, int]
) -> None:
    orig_wh, inset, width = (1441, 1929), 9, 4
    src = save_jpeg(tmp_path / "m.jpg", marker_image(orig_wh, inset, width), orientation, 95)
    image, got_wh = open_resized(src, dst_wh, draft_margin=draft_margin)
    assert got_wh == orig_wh and image.size == dst_wh
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    band_y = slice(dst_wh[1] // 4, 3 * dst_wh[1] // 4)  # away from the horizontal lines
    band_x = slice(dst_wh[0] // 4, 3 * dst_wh[0] // 4)
    found_x = line_centres(pixels[band_y].mean(axis=0))
    found_y = line_centres(pixels[:, band_x].mean(axis=1))
    for found, size, dst in ((found_x, orig_wh[0], dst_wh[0]), (found_y, orig_wh[1], dst_wh[1])):
        expected = (inset + width / 2, size - inset - width / 2)
        for got, want in zip(found, expected, strict=True):
            # Measured <= 0.21 px (1/8 DCT block quantisation); without the draft box 0.32-1.1 px.
            assert abs(got - want * dst / size) < 0.3


# Upright -> stored is _STORE[o]; stored -> upright is its inverse.
_UPRIGHT = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_270,
    8: Image.Transpose.ROTATE_90,
}


def pillow_reference(
    src: Path, dst_wh: tuple[int, int], draft_margin: float | None, resample: Image.Resampling
) -> Image.Image:
    """open_resized's recipe done by Pillow alone: the same draft request and box, Pillow's
    resize (with its reducing_gap=2.0 reduce), then the EXIF transpose."""
    with Image.open(src) as image:
        orientation = image.getexif().get(0x0112, 1)
        target = (dst_wh[1], dst_wh[0]) if orientation in (6, 8) else dst_wh
        box = None
        if draft_margin is not None and image.format == "JPEG":
            request = (math.ceil(target[0] * draft_margin), math.ceil(target[1] * draft_margin))
            box = image.draft("RGB", request)[1]
        resized = image.convert("RGB").resize(target, resample, box=box, reducing_gap=2.0)
    return resized if _UPRIGHT[orientation] is None else resized.transpose(_UPRIGHT[orientation])


# RGB goes through torch's antialiased kernel: Pillow's filter, so Pillow's own output is the
# reference, whatever the draft box (odd sizes pad it), a reduce first, or an upscale.
@pytest.mark.parametrize(
    "resample", [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR], ids=["bicubic", "bilinear"]
)
@pytest.mark.parametrize(
    ("name", "src_wh", "orientation", "draft_margin", "dst_wh"),
    [
        ("even.jpg", (1440, 1920), 1, 1.25, (532, 728)),  # draft 1/2, box = the whole decode
        ("odd.jpg", (1441, 1929), 6, 1.25, (532, 728)),  # draft 1/2, box 720.5 x 964.5
        ("odd.jpg", (1441, 1929), 8, 1.25, (140, 196)),  # draft 1/8, box 180.125 x 241.125
        ("odd.jpg", (1441, 1929), 1, 0.3, (532, 728)),  # draft below the target: upscale
        ("odd.png", (1441, 1929), 1, None, (140, 196)),  # reduce by (5, 4) first, then resample
        ("small.png", (120, 90), 1, None, (280, 196)),  # upscale, no box
    ],
    ids=["draft-1/2", "draft-1/2-odd", "draft-1/8-odd", "draft-upscale", "reduce", "upscale"],
)
def test_rgb_resample_matches_pillows_own_filter(
    tmp_path: Path,
    resample: Image.Resampling,
    name: str,
    src_wh: tuple[int, int],
    orientation: int,
    draft_margin: float | None,
    dst_wh: tuple[int, int],
) -> None:
    upright = photo_like(src_wh) if min(src_wh) > 500 else photo_like((400, 300)).resize(src_wh)
    src = tmp_path / name
    if name.endswith(".jpg"):
        save_jpeg(src, upright, orientation, quality=95)
    else:
        upright.save(src)
    ours, orig_wh = open_resized(src, dst_wh, draft_margin=draft_margin, resample=resample)
    assert orig_wh == src_wh and ours.size == dst_wh and ours.mode == "RGB"
    reference = pillow_reference(src, dst_wh, draft_margin, resample)
    diff = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(reference, dtype=np.int16))
    # Only the rounding of the intermediate pass differs (a shifted box or a wrong scale costs
    # > 10 dB); measured >= 54 dB over random sizes, boxes and scales, max 7 levels on edges.
    assert psnr(ours, reference) >= 50.0
    assert diff.mean() < 0.1


def test_resize_leaves_the_callers_torch_thread_count(tmp_path: Path) -> None:
    import torch  # the resize sets one thread for its own call only

    src = save_jpeg(tmp_path / "a.jpg", photo_like((600, 800)), orientation=6)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        image, _ = open_resized(src, (280, 364))
        assert image.size == (280, 364)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_grayscale_alpha_palette_and_cmyk_become_rgb(tmp_path: Path) -> None:
    grey = tmp_path / "grey.jpg"
    photo_like((300, 400)).convert("L").save(grey, quality=92)
    image, _ = open_resized(grey, (140, 196))
    assert image.mode == "RGB" and image.size == (140, 196)
    r, g, b = (np.asarray(c) for c in image.split())
    assert np.array_equal(r, g) and np.array_equal(g, b)

    rgba = Image.new("RGBA", (300, 400), (255, 0, 0, 255))
    ImageDraw.Draw(rgba).rectangle((0, 0, 149, 399), fill=(0, 0, 0, 0))
    rgba.save(tmp_path / "alpha.png")
    image, _ = open_resized(tmp_path / "alpha.png", (140, 196))
    assert image.getpixel((10, 100)) == (255, 255, 255)  # transparent -> white, as the processor
    assert image.getpixel((130, 100)) == (255, 0, 0)

    photo_like((300, 400)).quantize(64).save(tmp_path / "palette.png")
    photo_like((300, 400)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    for name in ("palette.png", "cmyk.jpg"):
        src = tmp_path / name
        out = tmp_path / f"{name}.out.jpeg"
        assert resize_to_file(src, out, (140, 196)) == (300, 400)
        with Image.open(out) as written:
            assert written.mode == "RGB" and written.size == (140, 196)
            assert psnr(written, naive_resize(src, (140, 196))) >= 30.0


def test_unwritable_destination_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    src = save_jpeg(tmp_path / "a.jpg", Image.new("RGB", (56, 56), "gray"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(BbuError, match="cannot write image"):
        resize_to_file(src, tmp_path / "file" / "a.jpeg", (28, 28))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "file"]


@pytest.mark.parametrize(
    ("mode", "scale"), [("I;16", 1.0), ("I", 1.0), ("F", 1 / 65535), ("F", 1.0)]
)
def test_high_bit_depths_are_scaled_not_clipped(mode, scale):
    ramp = np.linspace(0, 65535, 256).reshape(1, 256)
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray((ramp * scale).astype(dtype))
    assert image.mode == mode
    rgb = np.asarray(to_rgb(image), dtype=float)[0, :, 0]
    assert to_rgb(image).mode == "RGB"
    if mode == "F" and scale == 1.0:  # float data past 1: its 16-bit range
        assert rgb[0] == 0 and rgb[-1] == 255
    else:
        assert rgb[0] == 0 and rgb[-1] == 255 and abs(rgb[128] - 128) <= 1
    assert (np.diff(rgb) >= 0).all()  # convert("RGB") alone gives 0 then 255 everywhere


def test_8bit_images_are_left_as_they_are():
    for mode in ("L", "RGB", "P", "1"):
        image = Image.new(mode, (4, 4))
        assert to_8bit(image) is image


def test_phone_photos_take_the_torch_kernel(tmp_path: Path) -> None:
    """The speed of `resize_to_file` is torch's kernel: a 1440x1920 photo's draft (box = the
    whole 1/2 decode) and an odd size's padded draft box both go through it (None would mean
    Pillow's fallback, which the comparison with Pillow above cannot tell apart)."""
    from bbucli.convert.images import _resize_rgb_with_torch

    for src_wh, box in (((720, 960), None), ((721, 965), (0.0, 0.0, 720.5, 964.5))):
        image = photo_like((400, 300)).resize(src_wh)
        out = _resize_rgb_with_torch(image, (532, 728), "bicubic", box)
        assert out is not None and out.size == (532, 728) and out.mode == "RGB"
