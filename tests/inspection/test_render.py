"""Boxes and labels drawn on an episode's images; the font search falls back cleanly."""

from __future__ import annotations

import pytest
from PIL import Image

from bbucli.errors import DataError
from bbucli.inspection.render import FontChoice, canvas_size, find_font, render_episode


def test_render_writes_a_png_of_the_layout_size(converted, records, tmp_path):
    result = render_episode(converted, 0, tmp_path / "out" / "ep0.png")
    sizes = [Image.open(converted.parent / p).size for p in result.images]
    # The renderer's own layout formula, from the stored sizes of the images the record names.
    expected = canvas_size(sizes)
    assert expected[0] > sum(w for w, _ in sizes) and expected[1] > max(h for _, h in sizes)
    with Image.open(result.path) as png:
        assert png.format == "PNG" and png.size == expected == result.size
    first = records[0]
    assert result.images == (first["teachers"][0]["images"][0], first["student"]["images"][0])
    assert result.boxes == len(first["teachers"][0]["objects"]) + len(first["student"]["objects"])
    assert result.font.note


def test_font_search_falls_back_to_pillow(converted, tmp_path):
    choice = find_font(cjk_fonts=(), plain_fonts=(), use_fontconfig=False)
    assert choice == FontChoice(None, False, choice.note) and "built-in" in choice.note
    result = render_episode(converted, 1, tmp_path / "ep1.png", font=choice)
    assert Image.open(result.path).size == result.size and result.font.path is None
    cjk = find_font(cjk_fonts=[str(result.path)], plain_fonts=())  # any existing file "is" one
    assert cjk.cjk and cjk.path == str(result.path)


def test_render_names_the_line_of_a_missing_image(make_bad, tmp_path):
    path, _ = make_bad("bad_render.jsonl")
    with pytest.raises(DataError, match=r"bad_render.jsonl:4: image not found"):
        render_episode(path, 3, tmp_path / "x.png")
