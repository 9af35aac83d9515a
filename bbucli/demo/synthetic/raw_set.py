"""Writing a synthetic raw set: vendor "markResult" JSON beside each JPEG, EXIF rotation, stems.

`generate_raw_set` renders scenes (`bbucli.demo.synthetic.scene`) and writes each one as `<stem>.jpeg` +
`<stem>.json` exactly as the annotation platform exports them: `info` gives the EXIF-upright frame,
`markResult.features[*]` hold float `ExtentPolygon` rings with the real Chinese label paths
(`properties.contentZh["标签"]`) and English code paths (`properties.content.label`), plus the bloat
keys real exports carry. Every `exif_rotated_every`-th photo is stored rotated with an EXIF
Orientation tag (6, 8, 3 in turn), so `PIL.ImageOps.exif_transpose` gives the frame that `info` and
the coordinates refer to.

Deterministic: the same arguments give byte-identical files (per-image generators seeded from
`(seed, index)`, fixed JPEG settings, no timestamps), and image `i` does not depend on `n_images`,
so a shorter run reproduces the first files of a longer one.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from bbucli.demo.synthetic.canvas import LABELS, SyntheticObject
from bbucli.demo.synthetic.scene import render_scene
from bbucli.errors import UsageError

#: Every Chinese label path the generator can write (a subset of the real raw labels).
KNOWN_ZH_LABELS: frozenset[str] = frozenset(zh for zh, _ in LABELS.values())

#: EXIF Orientation values cycled through by the rotated photos; `exif_transpose` undoes each.
_ORIENTATIONS = (6, 8, 3)
#: Stored pixels = upright pixels transposed by this; exif_transpose applies the inverse.
_STORE_TRANSPOSE = {
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
    3: Image.Transpose.ROTATE_180,
}
_MIN_SIDE = 256


def orientation_for_index(index: int, exif_rotated_every: int) -> int:
    """EXIF orientation of image `index` (0-based): 1 (upright) or one of 6, 8, 3 in turn."""
    if exif_rotated_every <= 0 or (index + 1) % exif_rotated_every:
        return 1
    return _ORIENTATIONS[((index + 1) // exif_rotated_every - 1) % len(_ORIENTATIONS)]


def generate_raw_set(
    out_dir: Path,
    n_images: int = 24,
    *,
    seed: int = 0,
    size: tuple[int, int] = (1440, 1920),
    exif_rotated_every: int = 6,
    jpeg_quality: int = 85,
    defect_rate: float | None = None,
    zoom: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write `n_images` synthetic photos with vendor JSON annotations into `out_dir`.

    size: (width, height) of the EXIF-upright frame, in pixels; `info` and every box use this frame.
    exif_rotated_every: every k-th image (k-1, 2k-1, ...) is stored rotated with an EXIF
    Orientation tag; 0 stores all upright. defect_rate: in [0, 1], the probability of the defect
    state (a loose screw or plug, a mismatched label, a missing wind shield) for every part that has
    one, to balance the defect classes; None keeps each part's own rate (4-25%) and the set
    byte-identical to one made before this option. zoom >= 1: each scene is drawn `zoom` times
    larger and a random `size` window of it is kept (a closer photo: objects `zoom` times bigger);
    an object is kept when at least half of its box lies inside the window, its box clipped to it.
    progress: called as `progress(done, total)`
    after each image. Returns the image paths in generation order; `<stem>.json` lies beside each.
    Raises `UsageError` for impossible arguments.
    """
    width, height = (int(v) for v in size)
    if n_images < 0:
        raise UsageError(f"n_images must be >= 0, got {n_images}", hint="pass a positive count")
    if seed < 0:
        raise UsageError(f"seed must be >= 0, got {seed}", hint="pass a non-negative integer seed")
    if min(width, height) < _MIN_SIDE:
        raise UsageError(
            f"image size {width}x{height} is too small for the synthetic scenes",
            hint=f"use at least {_MIN_SIDE} pixels per side (the default is 1440x1920)",
        )
    if not 1 <= jpeg_quality <= 100:
        raise UsageError(f"jpeg_quality must be in 1..100, got {jpeg_quality}", hint="try 85")
    if defect_rate is not None and not 0.0 <= defect_rate <= 1.0:
        raise UsageError(
            f"defect_rate must be in [0, 1], got {defect_rate}",
            hint="0.5 draws half of the defect-capable parts in their defect state; omit it for "
            "each part's own rate",
        )
    if not (math.isfinite(zoom) and 1.0 <= zoom <= 4.0):
        raise UsageError(f"zoom must be in [1, 4], got {zoom}", hint="1.5 draws objects 1.5x bigger")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = _stems(seed, n_images)
    paths: list[Path] = []
    for index, stem in enumerate(stems):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        if zoom == 1.0:
            upright, objects = render_scene(width, height, rng, defect_rate)
        else:
            drawn = render_scene(round(width * zoom), round(height * zoom), rng, defect_rate)
            window = np.random.default_rng(np.random.SeedSequence([seed, index, 0x200]))
            upright, objects = _crop(*drawn, width, height, window)
        orientation = orientation_for_index(index, exif_rotated_every)
        image_path = out_dir / f"{stem}.jpeg"
        _save_jpeg(upright, image_path, orientation, jpeg_quality)
        record = _vendor_record(width, height, objects, rng)
        text = json.dumps(record, ensure_ascii=False) + "\n"
        (out_dir / f"{stem}.json").write_text(text, encoding="utf-8")
        paths.append(image_path)
        if progress is not None:
            progress(index + 1, n_images)
    return paths


def _crop(
    image: Image.Image, objects: list[SyntheticObject], width: int, height: int, rng
) -> tuple[Image.Image, list[SyntheticObject]]:
    """A random `width` x `height` window of `image`, with the objects at least half inside it,
    their boxes clipped to the window and shifted into its frame."""
    x0 = float(rng.integers(0, image.width - width + 1))
    y0 = float(rng.integers(0, image.height - height + 1))
    kept = []
    for obj in objects:
        x1, y1, x2, y2 = obj.box
        cx1, cy1 = max(x1, x0), max(y1, y0)
        cx2, cy2 = min(x2, x0 + width), min(y2, y0 + height)
        inside = max(0.0, cx2 - cx1) * max(0.0, cy2 - cy1)
        if inside >= 0.5 * (x2 - x1) * (y2 - y1) and min(cx2 - cx1, cy2 - cy1) >= 2:
            kept.append(replace(obj, box=(cx1 - x0, cy1 - y0, cx2 - x0, cy2 - y0)))
    crop = image.crop((int(x0), int(y0), int(x0) + width, int(y0) + height))
    return crop, kept


def _stems(seed: int, n_images: int) -> list[str]:
    """Real-looking stems `QC-YYYYMMDD-NNNNNNN_PHOTO`; a ticket holds 1-4 photos, taken in order."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    day = _dt.date(2023, 2, 20) + _dt.timedelta(days=int(rng.integers(0, 60)))
    ticket = int(rng.integers(100, 5000))
    photo = int(rng.integers(10_000, 30_000))
    left_in_ticket = 0
    stems = []
    for _ in range(n_images):
        if left_in_ticket == 0:
            left_in_ticket = int(rng.integers(1, 5))
            ticket += int(rng.integers(1, 40))
            day += _dt.timedelta(days=int(rng.integers(0, 3)))
        left_in_ticket -= 1
        photo += int(rng.integers(1, 60))
        stems.append(f"QC-{day:%Y%m%d}-{ticket:07d}_{photo}")
    return stems


def _save_jpeg(upright: Image.Image, path: Path, orientation: int, quality: int) -> None:
    """Store `upright` as a baseline JPEG; rotated pixels plus an Orientation tag when != 1."""
    kwargs: dict = {"quality": quality, "optimize": True, "subsampling": "4:2:0"}
    image = upright
    if orientation != 1:
        image = upright.transpose(_STORE_TRANSPOSE[orientation])
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(path, "JPEG", **kwargs)


def _feature(obj: SyntheticObject) -> dict:
    x1, y1, x2, y2 = obj.box
    zh, en = LABELS[obj.key]
    properties: dict = {"contentZh": {"标签": zh}, "content": {"label": en}}
    if obj.question is not None:
        properties["question"] = obj.question
    if obj.question_ex is not None:
        properties["question_ex"] = obj.question_ex
    ring = [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]
    return {
        "type": "Feature",
        "geometry": {"type": "ExtentPolygon", "coordinates": [ring]},
        "properties": properties,
        "title": zh.split("/")[-2],
    }


def _vendor_record(width: int, height: int, objects: list[SyntheticObject], rng) -> dict:
    """The vendor export dict: `info`, `markResult`, and the bloat keys real exports carry."""
    n = len(objects)
    return {
        "info": {"width": width, "height": height},
        "markResult": {"type": "FeatureCollection", "features": [_feature(o) for o in objects]},
        "statistcs": {"count": n, "markCount": n, "duration": int(rng.integers(30, 900))},
        "qualityResult": {
            "status": "pass",
            "checker": f"qc{int(rng.integers(1, 40)):03d}",
            "errors": [],
        },
        "workload": {"point": 5 * n, "frame": 1, "rect": n},
    }
