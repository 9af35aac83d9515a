"""Declared annotation frame vs the EXIF-upright image: box mapping matches PIL's exif_transpose."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from bbucli.convert.frames import FrameFix, orient_box, reconcile, stored_wh


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_box_moves_boxes_like_exif_transpose_moves_pixels(orientation):
    stored = Image.new("L", (60, 40), 0)
    stored.paste(255, (5, 7, 20, 30))  # xyxy (5, 7, 20, 30) in the stored frame
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.info["exif"] = exif.tobytes()
    stored.getexif()[0x0112] = orientation
    upright = np.asarray(ImageOps.exif_transpose(stored))
    ys, xs = np.nonzero(upright)
    assert orient_box((5, 7, 20, 30), (60, 40), orientation) == (
        xs.min(),
        ys.min(),
        xs.max() + 1,
        ys.max() + 1,
    )
    assert stored_wh((upright.shape[1], upright.shape[0]), orientation) == (60, 40)


def test_reconcile_policy():
    assert reconcile(None, (300, 400)).kind == "same"
    assert reconcile((300.4, 400), (300, 400)).kind == "same"
    assert reconcile((400, 300), (300, 400), orientation=6).kind == "exif"
    assert reconcile((200, 150), (300, 400), orientation=8).kind == "exif"  # scaled stored frame
    assert reconcile((150, 200), (300, 400)).kind == "rescaled"
    assert (
        reconcile((400, 300), (300, 400), orientation=1).kind == "mismatch"
    )  # which way did it turn?
    assert reconcile((500, 100), (300, 400)).kind == "mismatch"


def test_frame_fix_maps_boxes():
    rescaled = FrameFix("rescaled", (150, 200), (300, 400))
    assert rescaled.to_upright((10, 20, 30, 40)) == (20, 40, 60, 80)
    exif = FrameFix("exif", (400, 300), (300, 400), orientation=6)  # stored 400x300, rotated cw
    assert exif.to_upright((0, 0, 10, 20)) == (280, 0, 300, 10)
    with pytest.raises(ValueError):
        FrameFix("mismatch", (1, 1), (2, 3)).to_upright((0, 0, 1, 1))
