"""Layout of one synthetic BBU cabinet photo and its camera look (used by `bbucli.demo.synthetic`).

`render_scene(width, height, rng)` returns an upright RGB image and its annotated objects, each box
`(x1, y1, x2, y2)` in float pixels of that image, tight around the drawn object (continuous
coordinates: a shape filling pixel columns a..b spans [a, b+1)), with sub-pixel annotator jitter.
Three views: a cabinet (rack rails, one or two BBUs between wind shields, an optional ODF panel
above and ground bar below, distractor power units and cables), and close-ups of a ground bar or an
ODF panel. Lighting gradient, vignette, colour cast and sensor noise are applied last. Only numpy
and PIL; no per-pixel Python loops.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from bbucli.demo.synthetic.canvas import Canvas, SyntheticObject, curve, jit
from bbucli.demo.synthetic.parts import (
    draw_bbu,
    draw_ground_bar,
    draw_label_sticker,
    draw_odf,
    draw_power_unit,
    draw_shield,
)


def _cabinet_view(s: Canvas) -> None:
    """A whole cabinet: frame, rails, stack [ODF] / shield-BBU-shield(-BBU-shield) / [ground]."""
    rng, W, H = s.rng, s.w, s.h
    n_bbu = 2 if rng.random() < 0.18 else 1
    has_odf, has_ground = rng.random() < 0.3, rng.random() < 0.35
    if n_bbu == 2 and has_odf and has_ground:
        has_ground = False
    blocks = (
        ([("odf", 2.0)] if has_odf else [])
        + [("bbus", 1 + 3.2 * n_bbu)]
        + ([("ground", 1.5)] if has_ground else [])
    )
    units = sum(b[1] for b in blocks)
    u = min(W * rng.uniform(0.88, 0.93) / 11, 0.9 * H / (units + 0.3 * (len(blocks) + 1) + 0.6))
    rx0 = (W - 11 * u) / 2 + rng.uniform(-1, 1) * max(0.0, (W - 11 * u) / 2 - 0.5 * u)
    rx1, rw = rx0 + 11 * u, 0.78 * u
    fy0, fy1 = (
        rng.uniform(-0.08, 0.03) * H,
        H * (1.1 if rng.random() < 0.7 else rng.uniform(0.95, 0.98)),
    )
    s.box((rx0 - 0.55 * u, fy0, rx1 + 0.55 * u, fy1), jit(rng, (52, 55, 60), 8))
    top, bottom = max(fy0 + 0.3 * u, 0) + 0.2 * u, min(fy1 - 0.3 * u, H) - 0.2 * u
    s.box((rx0 - 0.2 * u, fy0 + 0.3 * u, rx1 + 0.2 * u, fy1 - 0.3 * u), jit(rng, (24, 26, 30), 5))
    s.tex((rx0 - 0.2 * u, fy0 + 0.3 * u, rx1 + 0.2 * u, fy1 - 0.3 * u), 4, cells=(6, 4))
    for x in (rx0, rx1 - rw):
        s.box(
            (x, fy0 + 0.3 * u, x + rw, fy1 - 0.3 * u),
            (140, 143, 148),
            outline=(70, 72, 76),
            width=2,
        )
        for hy in np.arange(fy0 + 0.4 * u, fy1 - 0.4 * u, 0.33 * u):
            s.box((x + 0.33 * rw, hy, x + 0.33 * rw + 0.12 * u, hy + 0.12 * u), (20, 20, 22))
    for _ in range(int(rng.integers(1, 4))):  # power cables behind the equipment
        x = rng.uniform(rx0 + rw, rx1 - rw)
        s.draw.line(
            curve(
                np.array([x, top]),
                np.array([x + u, top + 3 * u]),
                np.array([x - u, bottom - 3 * u]),
                np.array([x + rng.uniform(-2, 2) * u, H]),
            ),
            fill=(12, 12, 14),
            width=max(1, int(0.15 * u)),
            joint="curve",
        )
    gaps = rng.dirichlet(np.ones(len(blocks) + 1)) * max(0.0, bottom - top - units * u)
    y = top
    for (kind, size), gap in zip(blocks, gaps[:-1], strict=True):
        if gap > 1.2 * u and rng.random() < 0.5:
            draw_power_unit(s, rx0 + rw, rx1 - rw, y + (gap - u) / 2, u)
        y += gap
        if kind == "odf":
            draw_odf(
                s,
                rx0 - 0.02 * u,
                rx1 + 0.02 * u,
                y,
                u,
                int(rng.integers(1, 4)),
                rng.random() < 0.35,
            )
        elif kind == "ground":
            draw_ground_bar(
                s,
                rx0 + rw + rng.uniform(0.3, 1.0) * u,
                rx1 - rw - rng.uniform(0.3, 1.5) * u,
                y + 0.1 * u,
                u,
                int(rng.integers(2, 4)),
            )
        else:
            yy = y
            for _ in range(n_bbu):
                draw_shield(s, rx0, rx1, yy, u, installed=not s.defect(0.25))
                draw_bbu(
                    s, rx0, rx1, yy + u, u, int(rng.choice([1, 2, 3, 4], p=[0.2, 0.3, 0.3, 0.2]))
                )
                yy += 3.2 * u
            draw_shield(s, rx0, rx1, yy, u, installed=not s.defect(0.25))
        y += size * u


def _closeup_view(s: Canvas, kind: str) -> None:
    """A close-up of an ODF panel or a ground bar (kind "odf"/"ground"), ~1.7x cabinet scale."""
    rng, W, H = s.rng, s.w, s.h
    u = min(W * rng.uniform(0.13, 0.16), H / 5)
    s.box((0, 0, W, H), jit(rng, (26, 28, 32), 6))
    s.tex((0, 0, W, H), 5, cells=(5, 4))
    for _ in range(int(rng.integers(2, 5))):
        x = rng.uniform(0, W)
        s.draw.line(
            curve(
                np.array([x, 0]),
                np.array([x + u, H / 3]),
                np.array([x - u, 2 * H / 3]),
                np.array([x, H]),
            ),
            fill=(10, 10, 12),
            width=max(1, int(0.15 * u)),
        )
    y = rng.uniform(0.15, 0.5) * H
    if kind == "odf":
        draw_odf(s, -0.3 * u, W + 0.3 * u, y, u, int(rng.integers(2, 6)), rng.random() < 0.4)
    else:
        draw_ground_bar(
            s,
            rng.uniform(0.2, 0.8) * u,
            W - rng.uniform(0.2, 0.8) * u,
            y,
            u,
            int(rng.integers(2, 6)),
        )
        if rng.random() < 0.3:
            draw_label_sticker(
                s, rng.uniform(0.5, 2.0) * u, y + 1.4 * u, u, match=not s.defect(0.25)
            )


def _finish(s: Canvas) -> Image.Image:
    """Late cables, anti-aliasing blur, texture, a lighting gradient with vignette, sensor noise."""
    for points, colour, width in s.late:
        s.draw.line(points, fill=colour, width=width, joint="curve")
    rng, W, H = s.rng, s.w, s.h
    arr = np.asarray(s.img.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)
    xs = (np.arange(W, dtype=np.float32) / W - 0.5)[None, :]
    ys = (np.arange(H, dtype=np.float32) / H - 0.5)[:, None]
    gx, gy = rng.uniform(-0.3, 0.3, 2)
    light = 1.0 + gx * xs + gy * ys - rng.uniform(0.2, 0.5) * (xs * xs + ys * ys)
    cast = (1.0 + rng.uniform(-0.04, 0.04, 3)).astype(np.float32) * rng.uniform(0.9, 1.1)
    noise = rng.standard_normal((H, W), dtype=np.float32)
    arr = arr * light[..., None] * cast + (s.texture + noise)[..., None]
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


def render_scene(
    width: int, height: int, rng: np.random.Generator, defect_rate: float | None = None
) -> tuple[Image.Image, list[SyntheticObject]]:
    """Draw one upright `width` x `height` px scene; returns the image and its objects.

    defect_rate: in [0, 1], the probability of the defect state for every part that has one; None
    keeps each part's own rate (see `Canvas`).
    """
    s = Canvas(width, height, rng, defect_rate)
    s.box((0, 0, width, height), jit(rng, (196, 190, 178), 20))
    s.tex((0, 0, width, height), 10, cells=(6, 5))
    view = rng.choice(["cabinet", "ground", "odf"], p=[0.64, 0.18, 0.18])
    if view == "cabinet":
        _cabinet_view(s)
    else:
        _closeup_view(s, str(view))
    return _finish(s), s.objects
