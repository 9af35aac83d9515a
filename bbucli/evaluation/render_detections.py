"""Pictures of predictions without ground truth (`bbu predict --render`): the image, upright, with
each box in a colour per desc and its label and score. Pure rendering: returns PIL images.

Labels are ASCII (PIL's bundled font has no CJK glyphs): a Chinese desc is shown by its taxonomy
English desc, else as `class <n>` in order of first appearance.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from bbucli.evaluation.plots import PALETTE, font
from bbucli.evaluation.types import Detections
from bbucli.taxonomy import Taxonomy


def ascii_desc(desc: str, taxonomy: Taxonomy | None, fallback: str) -> str:
    """`desc` if ASCII, else the English desc of its taxonomy class (same number of levels), else `fallback`."""
    if desc.isascii():
        return desc
    cls = taxonomy.resolve(desc) if taxonomy is not None else None
    return cls.desc("en", len(desc.split("/"))) if cls is not None else fallback


def render_detections(
    image: str | Path | Image.Image, detections: Detections, taxonomy: Taxonomy | None = None
) -> Image.Image:
    """The upright image with `detections` drawn on it. Boxes are xyxy in the frame
    `detections.image_wh` (None: the image's own pixels) and are scaled to the image."""
    if isinstance(image, Image.Image):
        canvas = ImageOps.exif_transpose(image).convert("RGB")
    else:
        with Image.open(image) as opened:
            canvas = ImageOps.exif_transpose(opened).convert("RGB")
    frame = detections.image_wh or canvas.size
    sx, sy = canvas.size[0] / frame[0], canvas.size[1] / frame[1]
    side = min(canvas.size)
    width = max(1, round(side / 300))
    text_font = font(max(12, side // 50))
    draw = ImageDraw.Draw(canvas)
    colours: dict[str, tuple[int, int, int]] = {}
    names: dict[str, str] = {}
    for box, desc, score in zip(
        detections.boxes_px, detections.descs, detections.scores.tolist(), strict=True
    ):
        if desc not in colours:
            colours[desc] = PALETTE[len(colours) % len(PALETTE)]
            names[desc] = ascii_desc(desc, taxonomy, f"class {len(names) + 1}")
        x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
        draw.rectangle([x1, y1, x2, y2], outline=colours[desc], width=width)
        label = f"{names[desc]} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=text_font)
        lift = bottom - top + 2 * width
        y = y1 - lift if y1 - lift >= 0 else y1
        draw.rectangle([x1, y, x1 + right - left + 4, y + lift], fill=colours[desc])
        draw.text((x1 + 2, y + width - (top - y1)), label, fill=(255, 255, 255), font=text_font)
    return canvas
