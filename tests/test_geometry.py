"""geometry: smart_resize against transformers' own, box round trips, IoU/GIoU properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    smart_resize as hf_smart_resize,
)

from bbucli.geometry import (
    box_iou,
    clip_box_xyxy,
    cxcywh_to_xyxy,
    denormalize_cxcywh,
    generalized_box_iou,
    is_fixed_point,
    normalize_xyxy,
    resized_wh,
    scale_box_xyxy,
    smart_resize,
    vision_token_count,
    xyxy_to_cxcywh,
)

sides = st.integers(min_value=1, max_value=8000)
limits = st.sampled_from([(4 * 784, 512 * 784), (56 * 56, 1280 * 784), (16 * 784, 64 * 784)])


@settings(max_examples=500, deadline=None)
@given(h=sides, w=sides, lim=limits)
def test_smart_resize_equals_transformers(h, w, lim):
    assume(max(h, w) / min(h, w) <= 200)
    assert smart_resize(h, w, 28, *lim) == tuple(hf_smart_resize(h, w, 28, *lim))


@settings(max_examples=300, deadline=None)
@given(h=sides, w=sides, lim=limits)
def test_stored_size_is_a_fixed_point_within_limits(h, w, lim):
    assume(max(h, w) / min(h, w) <= 100)
    wh = resized_wh((w, h), *lim)
    assert wh[0] % 28 == 0 and wh[1] % 28 == 0
    assert lim[0] <= wh[0] * wh[1] <= lim[1]
    assert is_fixed_point(wh, *lim)


def test_phone_photo_sizes():
    # A 1440x1920 portrait photo at the default limits (512 merged tokens at most): 19x26.
    wh = resized_wh((1440, 1920))
    assert wh == (532, 728)
    assert vision_token_count(wh) == 19 * 26 == 494
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)


box_coords = st.floats(min_value=0, max_value=4000, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(x1=box_coords, y1=box_coords, x2=box_coords, y2=box_coords,
       w=st.integers(300, 4000), h=st.integers(300, 4000))
def test_scaled_box_within_one_pixel_and_inside(x1, y1, x2, y2, w, h):
    box = clip_box_xyxy((x1, y1, x2, y2), (w, h))
    assume(box is not None)
    dst = resized_wh((w, h))
    out = scale_box_xyxy(box, (w, h), dst)
    assert 0 <= out[0] < out[2] <= dst[0] and 0 <= out[1] < out[3] <= dst[1]
    exact = (box[0] * dst[0] / w, box[1] * dst[1] / h, box[2] * dst[0] / w, box[3] * dst[1] / h)
    assert all(abs(a - b) <= 1.0 for a, b in zip(out, exact, strict=True))


def test_clip_box():
    assert clip_box_xyxy((-10, -5, 50, 60), (40, 40)) == (0.0, 0.0, 40.0, 40.0)
    assert clip_box_xyxy((50, 60, 10, 5), (100, 100)) == (10.0, 5.0, 50.0, 60.0)
    assert clip_box_xyxy((120, 10, 150, 20), (100, 100)) is None
    assert clip_box_xyxy((10, 10, 10, 20), (100, 100)) is None


boxes_norm = st.lists(
    st.tuples(st.floats(0.05, 0.95), st.floats(0.05, 0.95), st.floats(0.01, 0.5), st.floats(0.01, 0.5)),
    min_size=1, max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(b=boxes_norm, w=st.integers(28, 2000), h=st.integers(28, 2000))
def test_normalise_round_trip(b, w, h):
    cxcywh = torch.tensor(b, dtype=torch.float64)
    xyxy = cxcywh_to_xyxy(cxcywh).clamp(0, 1)
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy, atol=1e-12)
    px = denormalize_cxcywh(xyxy_to_cxcywh(xyxy), (w, h))
    back = normalize_xyxy(px, (w, h))
    assert torch.allclose(back.double(), xyxy_to_cxcywh(xyxy), atol=1e-5)


def _boxes(draw_list):
    t = torch.tensor(draw_list, dtype=torch.float64)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)


pixel_boxes = st.lists(
    st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(0.5, 50), st.floats(0.5, 50)),
    min_size=1, max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(a=pixel_boxes, b=pixel_boxes)
def test_iou_giou_bounds_and_symmetry(a, b):
    ba, bb = _boxes(a), _boxes(b)
    iou, _ = box_iou(ba, bb)
    giou = generalized_box_iou(ba, bb)
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all()
    assert ((giou >= -1 - 1e-12) & (giou <= iou + 1e-12)).all()
    assert torch.allclose(iou, box_iou(bb, ba)[0].T)
    assert torch.allclose(giou, generalized_box_iou(bb, ba).T)
    self_iou = torch.diagonal(box_iou(ba, ba)[0])
    assert torch.allclose(self_iou, torch.ones_like(self_iou))


def test_giou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
    iou, _ = box_iou(a, b)
    assert math.isclose(iou[0, 0].item(), 1 / 7, rel_tol=1e-6)
    giou = generalized_box_iou(a, b)
    # hull 9, union 7 -> 1/7 - 2/9; disjoint: hull 12, union 8 -> 0 - 4/12
    assert math.isclose(giou[0, 0].item(), 1 / 7 - 2 / 9, rel_tol=1e-6)
    assert math.isclose(giou[0, 1].item(), -1 / 3, rel_tol=1e-6)
