"""The model's pixels of a 16-bit image keep its gradient (Pillow's convert("RGB") clips I;16 to
white), from a file and from memory: predict and training read images through these two."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bbucli.chat.image_info import load_model_pixels, memory_image_info, read_image_info


def gradient_16bit(path) -> Image.Image:
    ramp = np.tile(np.linspace(0, 65535, 112, dtype=np.uint16), (56, 1))
    image = Image.fromarray(ramp)  # mode I;16
    image.save(path)
    return image


def test_16bit_png_keeps_its_gradient(tmp_path) -> None:
    path = tmp_path / "deep.png"
    image = gradient_16bit(path)
    assert Image.open(path).mode.startswith("I")
    for info in (
        read_image_info(path, 3136, 12544),
        memory_image_info(image, path, 3136, 12544),
    ):
        pixels = np.asarray(load_model_pixels(info).convert("L"), dtype=np.int32)
        row = pixels[pixels.shape[0] // 2]
        assert row[:4].max() < 40 and row[-4:].min() > 215, row
        assert (np.diff(row) >= -1).all()
