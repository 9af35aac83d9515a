"""benchmarks/learning.py without training: the table lists every row, the PNG is written, the
time ticks are round."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.benchmark_scripts import benchmark_module


@pytest.fixture(scope="module")
def learning():
    with benchmark_module("learning") as module:
        yield module


@pytest.fixture
def rows(learning):
    point = learning.CurvePoint
    return [
        point(10, 61.5, 70.2, 0.0, 0.0, "/runs/x/run/checkpoint-10", 1.5),
        point(20, 123.0, 131.9, 0.25, None, "/runs/x/run/checkpoint-20", 1.4),
        point(30, 184.25, 193.0, 0.625, 0.3125, "/runs/x/run/final", 2.0),
    ]


def test_render_table_lists_every_row(learning, rows):
    lines = learning.render_table(rows).splitlines()
    assert len(lines) == 1 + len(rows)
    assert lines[0].split()[:3] == ["step", "train", "s"]
    assert lines[1].split() == ["10", "61.5", "70.2", "1.5", "0.000", "0.000", "checkpoint-10"]
    assert lines[2].split() == ["20", "123.0", "131.9", "1.4", "0.250", "-", "checkpoint-20"]
    assert lines[3].split() == ["30", "184.2", "193.0", "2.0", "0.625", "0.312", "final"]


def test_plot_curve_writes_a_png(learning, rows, tmp_path):
    png = learning.plot_curve(
        rows, tmp_path / "sub" / "learning.png", "bbu demo: 30 steps\nsome CPU"
    )
    assert png.stat().st_size > 0
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (learning.WIDTH, learning.HEIGHT)
        assert len(image.convert("RGB").getcolors(1 << 16)) > 2  # more than a blank page


def test_plot_curve_takes_a_single_point(learning, tmp_path):
    point = learning.CurvePoint(1, 0.0, 3.0, None, None, "final")
    assert learning.plot_curve([point], tmp_path / "one.png", "one").stat().st_size > 0


@pytest.mark.parametrize("high", [0.3, 7.3, 59.0, 184.25, 3900.0])
def test_nice_ticks_cover_the_range(learning, high):
    ticks = learning.nice_ticks(high)
    assert ticks[0] == 0 and ticks[-1] >= high and 3 <= len(ticks) <= 8
