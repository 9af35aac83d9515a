"""Pictures of an evaluation, drawn with PIL (no plotting dependency): the precision-recall curves and
overlays of ground truth against predictions. Pure rendering: functions return PIL images, the
writers save them.

Text is ASCII (PIL's bundled font has no CJK glyphs): a Chinese desc is shown by its taxonomy
English desc, else as `category <id>` (the per-class table maps ids to descs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bbucli.evaluation.align import AlignedImage
from bbucli.evaluation.matching import ImageMatch
from bbucli.evaluation.result import EvalResult
from bbucli.evaluation.types import Category, GroundTruthImage
from bbucli.taxonomy import Taxonomy

PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229),
)
GT_FOUND, GT_MISSED = (46, 204, 64), (255, 133, 27)
PRED_TP, PRED_FP = (0, 116, 217), (255, 65, 54)
PANEL_W, PANEL_H, MARGIN_L, MARGIN_T, MARGIN_B = 520, 400, 64, 44, 44


def font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font at `size` (a bitmap font where FreeType is unavailable)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def ascii_label(category: Category, taxonomy: Taxonomy | None) -> str:
    """A label PIL can draw: the desc if ASCII, its taxonomy English desc, or `category <id>`."""
    if category.desc.isascii():
        return category.desc
    cls = taxonomy.resolve(category.desc) if taxonomy is not None else None
    return cls.desc("en", len(category.desc.split("/"))) if cls is not None else f"category {category.id}"


def _panel(draw: ImageDraw.ImageDraw, x0: int, title: str, curves: Sequence[tuple[tuple[float, ...], tuple[int, int, int], int]], recall: Sequence[float], small) -> None:
    left, top = x0 + MARGIN_L, MARGIN_T
    right, bottom = left + PANEL_W, top + PANEL_H
    draw.text((left, 12), title, fill=(0, 0, 0), font=font(16))
    for i in range(6):
        v = i / 5
        x = left + v * PANEL_W
        y = bottom - v * PANEL_H
        draw.line([(x, top), (x, bottom)], fill=(228, 228, 228))
        draw.line([(left, y), (right, y)], fill=(228, 228, 228))
        draw.text((x - 8, bottom + 6), f"{v:.1f}", fill=(60, 60, 60), font=small)
        draw.text((left - 30, y - 7), f"{v:.1f}", fill=(60, 60, 60), font=small)
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    draw.text((left + PANEL_W // 2 - 20, bottom + 24), "recall", fill=(0, 0, 0), font=small)
    draw.text((x0 + 4, top - 18), "precision", fill=(0, 0, 0), font=small)
    for values, color, width in curves:
        points = [(left + r * PANEL_W, bottom - p * PANEL_H) for r, p in zip(recall, values, strict=True)]
        draw.line(points, fill=color, width=width)


def render_pr_curves(result: EvalResult, categories: Sequence[Category], taxonomy: Taxonomy | None = None) -> Image.Image:
    """Two panels (IoU 0.5; mean over IoU 0.5:0.95), one line per category plus the mean in black,
    and a legend with each category's AP50 and AP."""
    small = font(13)
    by_desc = {m.desc: m for m in result.per_class}
    entries = [(c, PALETTE[i % len(PALETTE)]) for i, c in enumerate(categories) if c.desc in result.pr_curves.iou50]
    rows = (len(entries) + 2) // 2
    height = MARGIN_T + PANEL_H + MARGIN_B + 20 + 20 * (rows + 1)
    image = Image.new("RGB", (2 * (MARGIN_L + PANEL_W) + 40, height), "white")
    draw = ImageDraw.Draw(image)
    coco = result.coco
    panels = (
        (result.pr_curves.iou50, f"IoU 0.50   AP50 {_fmt(coco['AP50'])}"),
        (result.pr_curves.iou50_95, f"IoU 0.50:0.95   AP {_fmt(coco['AP'])}"),
    )
    for n, (curves, title) in enumerate(panels):
        lines = [(curves[c.desc], color, 2) for c, color in entries if c.desc in curves]
        if "all" in curves:
            lines.append((curves["all"], (0, 0, 0), 4))
        _panel(draw, n * (MARGIN_L + PANEL_W + 20), title, lines, result.pr_curves.recall, small)
    y = MARGIN_T + PANEL_H + MARGIN_B + 20
    draw.line([(MARGIN_L, y + 8), (MARGIN_L + 24, y + 8)], fill=(0, 0, 0), width=4)
    draw.text((MARGIN_L + 32, y), f"mean over categories  AP50 {_fmt(coco['AP50'])}  AP {_fmt(coco['AP'])}", fill=(0, 0, 0), font=small)
    for i, (c, color) in enumerate(entries):
        x = MARGIN_L + (i % 2) * (MARGIN_L + PANEL_W + 20)
        yy = y + 20 * (1 + i // 2)
        m = by_desc[c.desc]
        draw.line([(x, yy + 8), (x + 24, yy + 8)], fill=color, width=3)
        draw.text((x + 32, yy), f"{ascii_label(c, taxonomy)}  AP50 {_fmt(m.ap50)}  AP {_fmt(m.ap)}  (gt {m.gt})", fill=(0, 0, 0), font=small)
    return image


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_overlay(
    file: Path,
    image: GroundTruthImage,
    preds: AlignedImage,
    keep: np.ndarray,
    match: ImageMatch,
    labels: Mapping[str, str],
    caption: str,
) -> Image.Image | None:
    """The image with ground truth (green found, orange missed) and the predictions kept at the
    threshold (blue true, red false positive, with scores); None when the file cannot be read.

    Boxes are in the scoring frame `image.image_wh`; they are scaled to the file's size."""
    try:
        with Image.open(file) as opened:
            canvas = opened.convert("RGB")
    except (OSError, ValueError):
        return None
    frame = image.image_wh or canvas.size
    sx, sy = canvas.size[0] / frame[0], canvas.size[1] / frame[1]
    small = font(12)
    header = 40
    out = Image.new("RGB", (max(canvas.size[0], 420), canvas.size[1] + header), "white")
    out.paste(canvas, (0, header))
    draw = ImageDraw.Draw(out)

    def box(b: np.ndarray, color: tuple[int, int, int], text: str, width: int) -> None:
        x1, y1, x2, y2 = b[0] * sx, b[1] * sy + header, b[2] * sx, b[3] * sy + header
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        if text:
            draw.text((x1 + 2, max(y1 - 13, header)), text, fill=color, font=small)

    for j, (b, desc) in enumerate(zip(image.boxes_px, image.descs, strict=True)):
        box(b, GT_FOUND if match.gt_matched[j] else GT_MISSED, "" if match.gt_matched[j] else labels.get(desc, desc), 2)
    boxes, descs, scores = preds.boxes_px[keep], [d for d, k in zip(preds.descs, keep, strict=True) if k], preds.scores[keep]
    for i in range(len(descs)):
        tp = match.pred_gt[i] >= 0
        box(boxes[i], PRED_TP if tp else PRED_FP, "" if tp else f"{labels.get(descs[i], descs[i])} {scores[i]:.2f}", 1)
    draw.text((4, 4), caption, fill=(0, 0, 0), font=font(13))
    legend = (("gt found", GT_FOUND), ("gt missed", GT_MISSED), ("pred TP", PRED_TP), ("pred FP", PRED_FP))
    x = 4
    for name, color in legend:
        draw.rectangle([x, 24, x + 10, 34], fill=color)
        draw.text((x + 14, 22), name, fill=(0, 0, 0), font=small)
        x += 90
    return out
