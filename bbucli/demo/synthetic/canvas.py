"""Drawing canvas and annotation record of the synthetic scenes, and the raw label table.

`Canvas` holds the upright RGB image being drawn, a per-region texture field added at the end,
cables queued to be drawn over everything, and the objects annotated so far. `Canvas.add` turns an
inclusive integer pixel box into float continuous coordinates (a shape filling columns a..b spans
[a, b+1)) with sub-pixel annotator jitter; `Canvas.defect` decides whether a part is drawn in its
defect state. `LABELS` maps every object key the generator uses to its real Chinese label path and
English code path, typos of the source data included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

LABELS: dict[str, tuple[str, str]] = {
    "install_screw": (
        "连接点（螺丝）/BBU安装螺丝/连接正确",
        "connection_point/install_screw/install_screw_true",
    ),
    "install_screw_bad": (
        "连接点（螺丝）/BBU安装螺丝/连接错误",
        "connection_point/install_screw/install_screw_false",
    ),
    "cpri": (
        "连接点（螺丝）/CPRI光缆和BBU连接点/连接正确",
        "connection_point/cpri_connection/cpri_connection_true",
    ),
    "cpri_bad": (
        "连接点（螺丝）/CPRI光缆和BBU连接点/连接错误",
        "connection_point/cpri_connection/cpri_connection_false",
    ),
    "odf": (
        "连接点（螺丝）/BBU尾纤和ODF连接点/连接正确",
        "connection_point/odf_connection/odf_connection_true",
    ),
    "floor_screw": (
        "连接点（螺丝）/地排处螺丝/连接正确",
        "connection_point/floor_screw/floor_screw_true",
    ),
    "floor_screw_bad": (
        "连接点（螺丝）/地排处螺丝/连接错误",
        "connection_point/floor_screw/floor_screw_false",
    ),
    "huawei": ("BBU品牌/华为", "bbu_brand/huawei"),
    "zte": ("BBU品牌/中兴", "bbu_brand/zhongxing"),
    "ericsson": ("BBU品牌/爱立信", "bbu_brand/alixin"),
    "shield": ("挡风板/安装", "bbu_sheild/install"),
    "no_shield": ("挡风板/未安装", "bbu_sheild/non_install"),
    "label": ("标签/匹配", "label/label_true"),
    "label_bad": ("标签/不匹配", "label/label_false"),
}


@dataclass(frozen=True)
class SyntheticObject:
    """One annotated object: `box` xyxy float pixels of the upright image; optional defect codes."""

    key: str
    box: tuple[float, float, float, float]
    question: str | list[str] | None = None
    question_ex: str | None = None


def jit(rng, rgb, d=10):
    """`rgb` with each channel moved by a random integer in [-d, d], clipped to 0..255."""
    return tuple(int(np.clip(c + rng.integers(-d, d + 1), 0, 255)) for c in rgb)


def curve(p0, p1, p2, p3, n=28):
    """`n` integer points on the cubic Bezier curve p0..p3 (each a (2,) array of x, y pixels)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
    return [tuple(p) for p in pts.round().astype(int).tolist()]


class Canvas:
    """The upright image being drawn, its texture field, queued cables, objects annotated so far.

    defect_rate: the probability of the defect state (loose screw, half-inserted plug, mismatched
    label, missing shield) for every part that has one; None keeps each part's own rate.
    """

    def __init__(
        self, width: int, height: int, rng: np.random.Generator, defect_rate: float | None = None
    ) -> None:
        self.w, self.h, self.rng = width, height, rng
        self.defect_rate = defect_rate
        self.img = Image.new("RGB", (width, height))
        self.draw = ImageDraw.Draw(self.img)
        self.texture = np.zeros((height, width), np.float32)
        self.objects: list[SyntheticObject] = []
        self.late: list[tuple[list, tuple, int]] = []

    def defect(self, default_p: float) -> bool:
        """Draw this part in its defect state? One `rng.random()` draw, true with probability
        `defect_rate`, or `default_p` (the part's own rate) when `defect_rate` is None."""
        p = default_p if self.defect_rate is None else self.defect_rate
        return bool(self.rng.random() < p)

    def box(self, xyxy, fill, outline=None, width=1):
        """Fill an inclusive integer pixel rectangle; returns it as ints."""
        x0, y0, x1, y1 = (int(round(v)) for v in xyxy)
        self.draw.rectangle((x0, y0, x1, y1), fill=fill, outline=outline, width=width)
        return x0, y0, x1, y1

    def disc(self, cx, cy, r, fill, outline=None, width=1):
        """Fill a circle of radius `r` px at (cx, cy); returns its inclusive integer bbox."""
        x0, y0, x1, y1 = (int(round(v)) for v in (cx - r, cy - r, cx + r, cy + r))
        self.draw.ellipse((x0, y0, x1, y1), fill=fill, outline=outline, width=width)
        return x0, y0, x1, y1

    def tex(self, xyxy, amp, cells=(8, 8), streak=False):
        """Set a smooth noise texture (grey levels +-amp) on a region; later regions overwrite."""
        x0, y0, x1, y1 = (
            int(np.clip(round(v), 0, lim))
            for v, lim in zip(xyxy, (self.w, self.h) * 2, strict=True)
        )
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        gh, gw = (max(2, (y1 - y0) // 3), cells[1]) if streak else cells
        grid = Image.fromarray(self.rng.standard_normal((gh, gw)).astype(np.float32), mode="F")
        self.texture[y0:y1, x0:x1] = amp * np.asarray(
            grid.resize((x1 - x0, y1 - y0), Image.BICUBIC)
        )

    def add(self, key, px, question=None, question_ex=None):
        """Annotate inclusive pixel box `px` as float continuous coordinates with 0.5 px jitter."""
        x0, y0, x1, y1 = px
        jitter = self.rng.uniform(-0.5, 0.5, 4)
        raw = (x0 + jitter[0], y0 + jitter[1], x1 + 1 + jitter[2], y1 + 1 + jitter[3])
        xa, ya, xb, yb = (
            float(round(min(max(v, 0.0), lim), 2))
            for v, lim in zip(raw, (self.w, self.h) * 2, strict=True)
        )
        if xb - xa >= 2 and yb - ya >= 2:
            self.objects.append(SyntheticObject(key, (xa, ya, xb, yb), question, question_ex))

    def cable(self, points, colour, width):
        """Queue a cable polyline to be drawn over all the equipment (fibres hang in front)."""
        self.late.append((points, colour, width))
