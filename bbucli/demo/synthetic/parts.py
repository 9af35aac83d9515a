"""One drawing function per piece of BBU cabinet equipment in the synthetic scenes.

Each `draw_*` function draws one piece of equipment on a `Canvas` and annotates the objects on it
with boxes tight around what it drew. Sizes are in rack units `u` (pixels per unit, about W/11): a
BBU is 2.2u tall, a shield 1u, an install screw 0.62u across (>= 10 px once a 1440-wide photo is
shrunk to 224 px). A small share of objects is drawn in a defect state (a loose rusty screw, a
half-inserted plug) and labelled with the `..._false` state and `question` codes; each part has its
own rate of it, which `Canvas.defect_rate` replaces when set.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from bbucli.demo.synthetic.canvas import Canvas, curve, jit

_CHASSIS = {"huawei": (178, 181, 186), "zte": (92, 96, 104), "ericsson": (48, 49, 54)}
_FIBRE = [(240, 140, 30), (235, 205, 40), (70, 195, 205), (235, 235, 225)]


def draw_label_sticker(s: Canvas, x0, y0, u, match: bool) -> None:
    """White 0.9u x 0.45u barcode sticker, top-left (x0, y0) px; a red dot when mismatched."""
    rng, w, h = s.rng, 0.9 * u, 0.45 * u
    px = s.box((x0, y0, x0 + w, y0 + h), jit(rng, (236, 236, 230), 6), outline=(150, 150, 145))
    bx, bar_end = x0 + 0.06 * u, x0 + 0.55 * u
    while bx < bar_end:
        bw = max(1.0, rng.choice([0.012, 0.02, 0.03]) * u)
        s.box((bx, y0 + 0.07 * u, bx + bw, y0 + 0.3 * u), (15, 15, 15))
        bx += bw + max(1.0, rng.choice([0.012, 0.025]) * u)
    for k in range(2):
        s.box(
            (x0 + 0.6 * u, y0 + (0.1 + 0.12 * k) * u, x0 + 0.84 * u, y0 + (0.13 + 0.12 * k) * u),
            (110, 110, 110),
        )
    if not match:
        s.disc(x0 + 0.72 * u, y0 + 0.33 * u, 0.09 * u, (215, 25, 30))
    s.add("label" if match else "label_bad", px, question="true" if match else "false")


def _brand_plate(s: Canvas, x0, y0, u, brand: str) -> None:
    """1.3u x 0.6u vendor plate: red with disc and bars, blue with a slash, navy with a ring."""
    w, h, d = 1.3 * u, 0.6 * u, s.draw
    if brand == "huawei":
        px = s.box((x0, y0, x0 + w, y0 + h), (205, 32, 38), outline=(120, 15, 20), width=2)
        s.disc(x0 + 0.3 * u, y0 + 0.3 * u, 0.18 * u, (250, 245, 240))
        for k in range(2):
            s.box(
                (
                    x0 + 0.6 * u,
                    y0 + (0.17 + 0.18 * k) * u,
                    x0 + 1.15 * u,
                    y0 + (0.25 + 0.18 * k) * u,
                ),
                (250, 245, 240),
            )
    elif brand == "zte":
        px = s.box((x0, y0, x0 + w, y0 + h), (22, 86, 178), outline=(10, 40, 90), width=2)
        d.polygon(
            [
                (x0 + 0.25 * u, y0 + h - 3),
                (x0 + 0.55 * u, y0 + 3),
                (x0 + 0.8 * u, y0 + 3),
                (x0 + 0.5 * u, y0 + h - 3),
            ],
            fill=(245, 248, 252),
        )
        s.box((x0 + 0.95 * u, y0 + 0.2 * u, x0 + 1.15 * u, y0 + 0.4 * u), (245, 248, 252))
    else:
        px = s.box((x0, y0, x0 + w, y0 + h), (18, 30, 72), outline=(5, 10, 30), width=2)
        s.disc(
            x0 + 0.65 * u,
            y0 + 0.3 * u,
            0.2 * u,
            None,
            outline=(240, 240, 245),
            width=max(2, int(0.05 * u)),
        )
        s.disc(x0 + 0.65 * u, y0 + 0.3 * u, 0.06 * u, (250, 200, 30))
    s.add(brand, px, question="brand_is_true" if s.rng.random() < 0.3 else None)


def _install_screw(s: Canvas, cx, cy, u) -> None:
    """Cross-head screw 0.62u across at (cx, cy); sometimes an empty hole or loose and rusty."""
    rng, r = s.rng, 0.31 * u
    roll = rng.random()
    if roll < 0.1:  # empty hole: a missing screw is not a screw object
        s.disc(cx, cy, 0.13 * u, (25, 25, 28), outline=(90, 90, 95), width=2)
        return
    # Same roll: the empty-hole share stays 0.1 and a screw present is bad with probability
    # defect_rate (the top 0.9 * defect_rate of the roll); by default 5% of all holes.
    bad = roll > 0.95 if s.defect_rate is None else roll >= 1.0 - 0.9 * s.defect_rate
    if bad:  # loose: head shifted off its washer shadow, rusty
        shadow = s.disc(cx + 0.05 * u, cy + 0.05 * u, r, (30, 25, 22))
        px = s.disc(
            cx - 0.04 * u, cy - 0.04 * u, r * 0.95, (150, 82, 38), outline=(80, 40, 20), width=2
        )
        for _ in range(4):
            s.disc(
                cx + rng.uniform(-0.5, 0.5) * r,
                cy + rng.uniform(-0.5, 0.5) * r,
                0.2 * r,
                (105, 50, 25),
            )
        px = (
            min(px[0], shadow[0]),
            min(px[1], shadow[1]),
            max(px[2], shadow[2]),
            max(px[3], shadow[3]),
        )
    else:
        px = s.disc(cx, cy, r, (70, 72, 78))
        s.disc(cx, cy, r * 0.84, jit(rng, (176, 179, 184), 8))
        s.disc(cx - 0.25 * r, cy - 0.25 * r, r * 0.45, (212, 215, 218))
    ang = rng.uniform(0, np.pi / 2)
    for a in (ang, ang + np.pi / 2):
        dx, dy, nx, ny = (
            np.cos(a) * 0.55 * r,
            np.sin(a) * 0.55 * r,
            -np.sin(a) * 0.1 * r,
            np.cos(a) * 0.1 * r,
        )
        c = (cx - 0.04 * u, cy - 0.04 * u) if bad else (cx, cy)
        s.draw.polygon(
            [
                (c[0] - dx - nx, c[1] - dy - ny),
                (c[0] + dx - nx, c[1] + dy - ny),
                (c[0] + dx + nx, c[1] + dy + ny),
                (c[0] - dx + nx, c[1] - dy + ny),
            ],
            fill=(45, 45, 50),
        )
    if bad:
        s.add(
            "install_screw_bad",
            px,
            question=[str(rng.choice(["rust", "untight"]))],
            question_ex="螺丝松动生锈",
        )
    else:
        s.add("install_screw", px)


def _cpri_row(s: Canvas, x0, x1, y0, u, n_plugged: int, fibre_x: float) -> None:
    """SFP cages in a row on a board; plugged ones carry a coloured LC plug and a hanging fibre."""
    rng, slots = s.rng, 4
    pitch = (x1 - x0) / slots
    plugged = set(rng.choice(slots, size=n_plugged, replace=False).tolist())
    for k in range(slots):
        cx0, cy0 = x0 + k * pitch + (pitch - 0.56 * u) / 2, y0
        cage = s.box(
            (cx0, cy0, cx0 + 0.56 * u, cy0 + 0.44 * u),
            (22, 22, 24),
            outline=(150, 152, 158),
            width=3,
        )
        if k not in plugged:
            continue
        bad = s.defect(0.04)
        drop = 0.14 * u if bad else 0.0
        body = (225, 215, 188) if rng.random() < 0.5 else (45, 110, 200)
        s.box(
            (cx0 + 0.08 * u, cy0 + 0.07 * u + drop, cx0 + 0.48 * u, cy0 + 0.44 * u + drop),
            body,
            outline=(40, 40, 40),
        )
        s.box(
            (cx0 + 0.15 * u, cy0 + 0.12 * u + drop, cx0 + 0.25 * u, cy0 + 0.22 * u + drop),
            (70, 70, 75),
        )
        s.box(
            (cx0 + 0.31 * u, cy0 + 0.12 * u + drop, cx0 + 0.41 * u, cy0 + 0.22 * u + drop),
            (70, 70, 75),
        )
        colour = _FIBRE[int(rng.integers(len(_FIBRE)))]
        by0, by1, mid = cy0 + 0.44 * u + drop, cy0 + 0.74 * u + drop, cx0 + 0.28 * u
        s.draw.polygon(
            [
                (mid - 0.13 * u, by0),
                (mid + 0.13 * u, by0),
                (mid + 0.07 * u, by1),
                (mid - 0.07 * u, by1),
            ],
            fill=colour,
            outline=(40, 40, 40),
        )
        px = (cage[0], cage[1], cage[2], int(round(by1)))
        fy = by1 + (1.4 + 0.15 * k) * u
        s.cable(
            curve(
                np.array([mid, by1]),
                np.array([mid, fy]),
                np.array([fibre_x + 0.06 * k * u, fy - 0.3 * u]),
                np.array([fibre_x + 0.06 * k * u, fy + 4 * u]),
            )
            + [(int(fibre_x + 0.06 * k * u), s.h)],
            colour,
            max(2, int(0.035 * u)),
        )
        if bad:
            s.add("cpri_bad", px, question=["bend_is_false"], question_ex="光纤接头未插紧")
        else:
            s.add(
                "cpri",
                px,
                question=["bind_is_true", "bend_is_true"] if rng.random() < 0.4 else None,
            )


def draw_bbu(s: Canvas, rx0, rx1, y, u, n_cpri: int) -> None:
    """2.2u-tall BBU between rail outer edges rx0..rx1 px, top at y: ears, screws, plate, CPRI."""
    rng, rw, h = s.rng, 0.78 * u, 2.2 * u
    brand = str(rng.choice(["huawei", "zte", "ericsson"], p=[0.5, 0.35, 0.15]))
    base = jit(rng, _CHASSIS[brand], 8)
    ear = tuple(int(c * 0.88) for c in base)
    for ex0, ex1 in ((rx0 - 0.02 * u, rx0 + rw), (rx1 - rw, rx1 + 0.02 * u)):
        s.box((ex0, y, ex1, y + h), ear, outline=(30, 30, 32), width=2)
        s.tex((ex0, y, ex1, y + h), 0)
    bx0, bx1 = rx0 + rw, rx1 - rw
    s.box((bx0, y, bx1, y + h), base, outline=(28, 28, 30), width=3)
    s.tex((bx0, y, bx1, y + h), 5, cells=(0, 40), streak=True)
    for ecx in (rx0 + rw / 2, rx1 - rw / 2):
        for ecy in (y + 0.5 * u, y + h - 0.5 * u):
            _install_screw(s, ecx, ecy, u)
    _brand_plate(s, bx0 + 0.25 * u, y + 0.3 * u, u, brand)
    if rng.random() < 0.35:
        draw_label_sticker(s, bx0 + 0.3 * u, y + 1.35 * u, u, match=not s.defect(0.25))
    gx0, gx1 = bx0 + 1.8 * u, bx1 - 1.3 * u
    face = tuple(int(c * 0.8) for c in base)
    cpri_col = int(rng.integers(2))
    for row in range(2):
        for col in range(2):
            fx0 = gx0 + col * (gx1 - gx0) / 2 + 0.04 * u
            fx1, fy0 = gx0 + (col + 1) * (gx1 - gx0) / 2 - 0.04 * u, y + (0.12 + 1.0 * row) * u
            s.box((fx0, fy0, fx1, fy0 + 0.95 * u), face, outline=(20, 20, 22), width=2)
            s.box((fx0 + 0.06 * u, fy0 + 0.2 * u, fx0 + 0.2 * u, fy0 + 0.75 * u), (35, 35, 38))
            s.box((fx1 - 0.2 * u, fy0 + 0.2 * u, fx1 - 0.06 * u, fy0 + 0.75 * u), (35, 35, 38))
            for k in range(int(rng.integers(1, 4))):
                s.disc(
                    fx0 + 0.33 * u,
                    fy0 + (0.2 + 0.2 * k) * u,
                    0.04 * u,
                    jit(rng, [(40, 220, 70), (230, 60, 40)][k % 2], 20),
                )
            if row == 1 and col == cpri_col:
                _cpri_row(
                    s, fx0 + 0.45 * u, fx1 - 0.3 * u, fy0 + 0.12 * u, u, n_cpri, bx1 - 0.6 * u
                )
    vx = bx1 - 1.1 * u
    for k in range(6):
        s.box((vx, y + (0.3 + 0.28 * k) * u, vx + 0.8 * u, y + (0.38 + 0.28 * k) * u), (25, 25, 28))


def draw_shield(s: Canvas, rx0, rx1, y, u, installed: bool) -> None:
    """1u wind-shield slot at y: a perforated grey plate over the rails, or a dark gap."""
    rng, rw = s.rng, 0.78 * u
    if not installed:
        px = s.box((rx0 + rw, y + 0.03 * u, rx1 - rw, y + 0.97 * u), (9, 10, 12))
        s.tex(px, 2)
        for _ in range(int(rng.integers(1, 4))):
            yy = y + rng.uniform(0.25, 0.75) * u
            s.draw.line(
                [(px[0] + 4, yy), (px[2] - 4, yy + rng.uniform(-0.2, 0.2) * u)],
                fill=(38, 40, 48),
                width=max(2, int(0.06 * u)),
            )
        s.add("no_shield", px, question_ex="挡风板缺失" if rng.random() < 0.3 else None)
        return
    px = s.box(
        (rx0 - 0.02 * u, y + 0.05 * u, rx1 + 0.02 * u, y + 0.95 * u),
        jit(rng, (158, 161, 165), 10),
        outline=(60, 62, 66),
        width=3,
    )
    s.tex(px, 3)
    hx0, hy0, hx1, hy1 = (
        int(v) for v in (px[0] + 0.5 * u, px[1] + 0.16 * u, px[2] - 0.5 * u, px[3] - 0.16 * u)
    )
    pitch, rad = max(4.0, 0.16 * u), max(1.2, 0.045 * u)
    yy, xx = np.mgrid[hy0:hy1, hx0:hx1].astype(np.float32)
    row = np.floor((yy - hy0) / pitch)
    dx = (xx - hx0 + (row % 2) * pitch / 2) % pitch - pitch / 2
    dy = (yy - hy0) % pitch - pitch / 2
    whole = (
        (xx - dx > hx0 + rad) & (xx - dx < hx1 - rad) & (yy - dy < hy1 - rad)
    )  # no cut holes at edges
    region = np.asarray(s.img.crop((hx0, hy0, hx1, hy1))).copy()
    region[(dx * dx + dy * dy < rad * rad) & whole] = (30, 31, 34)
    s.img.paste(Image.fromarray(region), (hx0, hy0))
    s.add("shield", px, question=["unblock_is_true"] if rng.random() < 0.3 else None)


def draw_odf(s: Canvas, x0, x1, y, u, n_plugged: int, label: bool) -> None:
    """Light ODF panel, a row of blue adapters; plugged ones have a yellow pigtail to a trough."""
    rng = s.rng
    s.box((x0, y, x1, y + 1.4 * u), jit(rng, (205, 206, 200), 8), outline=(90, 90, 88), width=3)
    s.tex((x0, y, x1, y + 1.4 * u), 3)
    s.box((x0, y + 1.4 * u, x1, y + 2.0 * u), (38, 40, 44), outline=(15, 15, 18), width=2)
    vx0, vx1 = max(x0, 0) + (1.1 if label else 0.4) * u, min(x1, s.w) - 0.4 * u
    slots = int(min(10, (vx1 - vx0) // (0.8 * u)))
    pitch = (vx1 - vx0) / slots
    plugged = set(rng.choice(slots, size=min(n_plugged, slots), replace=False).tolist())
    for k in range(slots):
        ax0, ay0 = vx0 + k * pitch + (pitch - 0.55 * u) / 2, y + 0.25 * u
        sq = s.box(
            (ax0, ay0, ax0 + 0.55 * u, ay0 + 0.55 * u), (38, 92, 172), outline=(15, 40, 90), width=2
        )
        if k not in plugged:
            s.disc(ax0 + 0.275 * u, ay0 + 0.275 * u, 0.1 * u, (20, 20, 24))
            continue
        s.box(
            (ax0 + 0.12 * u, ay0 + 0.12 * u, ax0 + 0.43 * u, ay0 + 0.43 * u),
            (232, 195, 40),
            outline=(120, 95, 10),
        )
        mid, by1 = ax0 + 0.275 * u, ay0 + 0.8 * u
        s.draw.polygon(
            [
                (mid - 0.1 * u, ay0 + 0.55 * u),
                (mid + 0.1 * u, ay0 + 0.55 * u),
                (mid + 0.05 * u, by1),
                (mid - 0.05 * u, by1),
            ],
            fill=(225, 190, 35),
            outline=(110, 90, 10),
        )
        s.draw.line(
            [(mid, by1), (mid, y + 1.5 * u)], fill=(235, 200, 45), width=max(2, int(0.035 * u))
        )
        s.add(
            "odf",
            (sq[0], sq[1], sq[2], int(round(by1))),
            question=["bend_is_true"] if rng.random() < 0.2 else None,
        )
    if label:
        draw_label_sticker(s, max(x0, 0) + 0.1 * u, y + 0.45 * u, u, match=not s.defect(0.25))


def draw_ground_bar(s: Canvas, x0, x1, y, u, n_screws: int) -> None:
    """Copper bar on two insulators; hex bolts with yellow-green wires hanging down."""
    rng = s.rng
    for ix in (x0 - 0.3 * u, x1 - 0.1 * u):
        s.box(
            (ix, y - 0.05 * u, ix + 0.4 * u, y + 0.8 * u), (225, 220, 200), outline=(120, 115, 100)
        )
    s.box((x0, y, x1, y + 0.7 * u), jit(rng, (184, 112, 52), 10), outline=(110, 60, 25), width=2)
    s.box((x0, y + 0.12 * u, x1, y + 0.22 * u), (214, 150, 90))
    s.tex((x0, y, x1, y + 0.7 * u), 6, cells=(0, 30), streak=True)
    vx0, vx1 = max(x0, 0) + 0.3 * u, min(x1, s.w) - 0.3 * u
    slots = int(min(8, (vx1 - vx0) // (0.95 * u)))
    pitch = (vx1 - vx0) / slots
    used = set(rng.choice(slots, size=min(n_screws, slots), replace=False).tolist())
    for k in range(slots):
        cx, cy = vx0 + (k + 0.5) * pitch, y + 0.35 * u
        if k not in used:
            s.disc(cx, cy, 0.12 * u, (60, 35, 18))
            continue
        s.draw.line(
            [(cx, cy), (cx + rng.uniform(-0.5, 0.5) * u, s.h)],
            fill=(60, 160, 50),
            width=max(3, int(0.13 * u)),
        )
        bad = s.defect(0.06)
        px = s.disc(
            cx,
            cy,
            0.33 * u,
            (120, 95, 60) if bad else (192, 194, 198),
            outline=(70, 70, 74),
            width=2,
        )
        r = 0.22 * u
        hexagon = [
            (cx + r * np.cos(a), cy + r * np.sin(a))
            for a in np.arange(6) * np.pi / 3 + rng.uniform(0, 1)
        ]
        s.draw.polygon(
            hexagon, fill=(140, 70, 30) if bad else (105, 110, 116), outline=(40, 40, 44)
        )
        s.disc(cx - 0.05 * u, cy - 0.05 * u, 0.07 * u, (160, 100, 60) if bad else (150, 155, 160))
        if bad:
            s.add("floor_screw_bad", px, question=[str(rng.choice(["rust", "uncover"]))])
        else:
            s.add(
                "floor_screw",
                px,
                question=["plastic_guard_is_true"] if rng.random() < 0.2 else None,
            )


def draw_power_unit(s: Canvas, x0, x1, y, u) -> None:
    """Unannotated distractor: a black 1U box with a switch, an LED and sockets."""
    s.box((x0, y, x1, y + u), (30, 31, 33), outline=(70, 70, 72), width=2)
    s.box((x0 + 0.4 * u, y + 0.3 * u, x0 + 0.7 * u, y + 0.7 * u), (170, 30, 30))
    s.disc(x0 + 1.0 * u, y + 0.5 * u, 0.05 * u, (50, 230, 80))
    for k in range(3):
        sx = x1 - (1.0 + 1.1 * k) * u
        s.box((sx, y + 0.25 * u, sx + 0.8 * u, y + 0.75 * u), (55, 56, 60), outline=(15, 15, 15))
