"""`bbu inspect --render DIR`: an episode's images side by side with their boxes and labels, in
DIR/<jsonl stem>-<index>.png (`render_path`).

Layout (pixels): panels in conversation order (every teacher, then the student), each an image
at its stored size (EXIF-upright, the frame its boxes are in) under a one-line title; MARGIN
around and between panels. Canvas = (sum of widths + MARGIN * (n + 1),
max height + title + 2 * MARGIN), title = font_px + 2 * TITLE_PAD. Labels are canonical descs,
often Chinese, so a CJK-capable font is looked for (a short list of common paths, then
`fc-list :lang=zh`); without one, DejaVu Sans or Pillow's built-in font is used and the result
says that Chinese may not show. Nothing is downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from bbucli.errors import DataError
from bbucli.inspection.jsonable import to_jsonable
from bbucli.inspection.source import read_record

MARGIN = 8
TITLE_PAD = 4
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
    "/usr/share/fonts/wqy-zenhei/wqy-zenhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)
PLAIN_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
)
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40),
    (128, 0, 0), (0, 0, 128),
)
NO_CJK_HINT = "install fonts-noto-cjk or fonts-wqy-microhei for Chinese labels"


@dataclass(frozen=True)
class FontChoice:
    """The font labels are drawn in. path: None for Pillow's built-in font; cjk: it can show
    Chinese; note: how it was found, or what will not show without a CJK font."""

    path: str | None
    cjk: bool
    note: str


def _fc_list_cjk() -> str | None:
    if shutil.which("fc-list") is None:
        return None
    try:
        found = subprocess.run(
            ["fc-list", ":lang=zh", "-f", "%{file}\n"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    files = sorted(f for f in found.stdout.splitlines() if f.strip() and Path(f).is_file())
    return files[0] if files else None


def find_font(
    cjk_fonts: Sequence[str] = CJK_FONTS,
    plain_fonts: Sequence[str] = PLAIN_FONTS,
    use_fontconfig: bool = True,
) -> FontChoice:
    """A CJK-capable font if the machine has one, else DejaVu Sans, else Pillow's built-in font."""
    for candidate in cjk_fonts:
        if Path(candidate).is_file():
            return FontChoice(candidate, True, "CJK font")
    if use_fontconfig and (found := _fc_list_cjk()):
        return FontChoice(found, True, "CJK font found by fc-list")
    for candidate in plain_fonts:
        if Path(candidate).is_file():
            return FontChoice(
                candidate, False, f"no CJK font found: Chinese shows as boxes; {NO_CJK_HINT}"
            )
    return FontChoice(
        None, False, f"no font file found: Pillow's built-in font, Latin only; {NO_CJK_HINT}"
    )


def _load_font(choice: FontChoice, size: int) -> Any:
    if choice.path is not None:
        try:
            return ImageFont.truetype(choice.path, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


@dataclass(frozen=True)
class RenderResult:
    """What was drawn. size: (width, height) of the PNG; images: the episode's image paths as in
    the JSONL, teachers then the student; boxes: boxes drawn."""

    path: Path
    source: Path
    line: int
    index: int
    size: tuple[int, int]
    images: tuple[str, ...]
    boxes: int
    font: FontChoice

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def _open_upright(path: Path, where: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(
            f"{where}: image not found: {path}", hint="check the JSONL's image paths"
        ) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{where}: cannot read image {path}: {exc}") from exc


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """`text`, cut with an ellipsis to at most `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def title_font_px(sizes: Sequence[tuple[int, int]]) -> int:
    """Font size of titles and labels for panels of (width, height) `sizes`: 1/50 of the tallest,
    clamped to 12-32 px."""
    return max(12, min(32, max(h for _, h in sizes) // 50))


def canvas_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """(width, height) in pixels of the canvas holding panels of (width, height) `sizes` side by
    side, each under a title line of `title_font_px` + 2 * TITLE_PAD, MARGIN around and between."""
    title_h = title_font_px(sizes) + 2 * TITLE_PAD
    width = sum(w for w, _ in sizes) + MARGIN * (len(sizes) + 1)
    return width, max(h for _, h in sizes) + title_h + 2 * MARGIN


def render_path(render: str | Path, jsonl: str | Path, index: int) -> Path:
    """The picture `bbu inspect --render` draws record `index` of `jsonl` into: in the folder
    `render` (what --render names in every command), `<jsonl stem>-<index>.png`; `render` itself
    when it names a .png file (the spelling of bbu 0.1)."""
    render = Path(render)
    if render.suffix.lower() == ".png":
        return render
    return render / f"{Path(jsonl).stem}-{index}.png"


def render_episode(
    path: str | Path, index: int, out_png: str | Path, *, font: FontChoice | None = None
) -> RenderResult:
    """Draw the `index`-th record (0-based) of the JSONL at `path` into `out_png` (module docstring).

    Boxes are xyxy pixels of the stored image, as in the JSONL. DataError naming the line for a
    bad record or an unreadable image.
    """
    path, out_png = Path(path), Path(out_png)
    line, episode = read_record(path, index)
    where = f"{path}:{line}"
    samples = episode.samples
    images = [_open_upright(path.parent / s.image, where) for s in samples]
    font = font or find_font()
    font_px = title_font_px([im.size for im in images])
    face = _load_font(font, font_px)
    title_h = font_px + 2 * TITLE_PAD
    width, height = canvas_size([im.size for im in images])
    canvas = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(canvas)
    descs = sorted({o.desc for s in samples for o in s.objects})
    colour = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(descs)}

    x = MARGIN
    for k, (sample, image) in enumerate(zip(samples, images, strict=True)):
        role = "student" if k == len(samples) - 1 else f"teacher {k + 1}"
        title = (
            f"{role}: {sample.image} ({image.width}x{image.height}, {len(sample.objects)} objects)"
        )
        draw.text((x, MARGIN), _fit(draw, title, face, image.width), fill=(0, 0, 0), font=face)
        top = MARGIN + title_h
        canvas.paste(image, (x, top))
        for obj in sample.objects:
            x1, y1, x2, y2 = obj.bbox_2d
            box = (x + x1, top + y1, x + x2, top + y2)
            draw.rectangle(box, outline=colour[obj.desc], width=2)
            label = _fit(draw, obj.desc, face, max(image.width - x1, font_px))
            left, upper, right, lower = draw.textbbox((0, 0), label, font=face)
            ty = box[1] - (lower - upper) - 2 if y1 >= lower - upper + 2 else box[1] + 2
            draw.rectangle(
                (box[0], ty, box[0] + right - left + 2, ty + lower - upper + 2),
                fill=colour[obj.desc],
            )
            draw.text((box[0] + 1 - left, ty + 1 - upper), label, fill=(255, 255, 255), font=face)
        x += image.width + MARGIN

    out_png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_png, format="PNG")
    return RenderResult(
        path=out_png,
        source=path,
        line=line,
        index=index,
        size=(width, height),
        images=tuple(s.image for s in samples),
        boxes=sum(len(s.objects) for s in samples),
        font=font,
    )
