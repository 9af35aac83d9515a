"""Every coordinate-frame conversion in bbu, and nothing else.

Frames:
- original pixels: the EXIF-upright photo as exported (floats allowed);
- resized pixels: the image after `smart_resize`, integers, xyxy, what the JSONL stores and the
  model's grounding answers use;
- normalised: [0, 1] relative to the resized image, cxcywh for the detection head, xyxy for losses.

Sizes are always passed as `(width, height)` tuples named `*_wh` (PIL order); tensors of boxes are
`(N, 4)` with the frame in the argument name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported inside the tensor functions: `bbu convert` never needs it
    import torch

PATCH_FACTOR = 28
DEFAULT_MIN_PIXELS = 4 * 28 * 28
DEFAULT_MAX_PIXELS = 512 * 28 * 28
MAX_ASPECT_RATIO = 200
#: One merged vision token covers a 28x28 pixel cell (14-px patches, 2x2 spatial merge).
PIXELS_PER_TOKEN = PATCH_FACTOR * PATCH_FACTOR


def smart_resize(
    height: int,
    width: int,
    factor: int = PATCH_FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen2.5-VL's target `(height, width)` for an image: both sides multiples of `factor`,
    `min_pixels <= h * w <= max_pixels`, aspect ratio kept as closely as the grid allows.

    Follows transformers' Qwen2-VL image processor exactly (Python's `round`, floor when
    shrinking, ceil when growing) so that images resized here are a fixed point of the model's image processor.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height} width={width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
            f"got {max(height, width) / min(height, width)}"
        )
    # transformers' processor (not qwen-vl-utils) is what the model sees: no max(factor, .) here.
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resized_wh(
    orig_wh: tuple[int, int],
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """The size, `(width, height)`, at which bbu stores an image of original size `orig_wh`.

    This is `smart_resize` in PIL order, applied until it no longer changes the size: for
    ordinary photos once, but at extreme aspect ratios the reference's floor-to-28 can leave
    `h * w` above `max_pixels`, and the processor would then resize a second time. Storing the
    fixed point guarantees the model's processor never resizes what `convert` wrote.
    """
    wh = (int(orig_wh[0]), int(orig_wh[1]))
    for _ in range(8):
        h, w = smart_resize(wh[1], wh[0], min_pixels=min_pixels, max_pixels=max_pixels)
        if (w, h) == wh:
            return wh
        wh = (w, h)
    raise ValueError(f"smart_resize did not reach a fixed point from {orig_wh}")


def is_fixed_point(
    wh: tuple[int, int], min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bool:
    """True when an image of size `wh` would not be resized again by the model's processor."""
    h, w = smart_resize(wh[1], wh[0], min_pixels=min_pixels, max_pixels=max_pixels)
    return (w, h) == tuple(wh)


def vision_grid(wh: tuple[int, int], patch_size: int = 14) -> tuple[int, int, int]:
    """`(t, h, w)` patch grid of one image already at the smart_resize fixed point."""
    return 1, wh[1] // patch_size, wh[0] // patch_size


def vision_token_count(wh: tuple[int, int], factor: int = PATCH_FACTOR) -> int:
    """Number of `<|image_pad|>` tokens for an image at the fixed point: (h/28) * (w/28)."""
    return (wh[0] // factor) * (wh[1] // factor)


# ---- single boxes, plain Python (convert, answers) ----------------------------------------------


def clip_box_xyxy(
    box: Sequence[float], wh: tuple[float, float]
) -> tuple[float, float, float, float] | None:
    """Clip an xyxy box to `[0, w] x [0, h]`; None when nothing of positive area remains.

    Corners given in any order are sorted first.
    """
    x1, x2 = sorted((float(box[0]), float(box[2])))
    y1, y2 = sorted((float(box[1]), float(box[3])))
    x1, x2 = min(max(x1, 0.0), wh[0]), min(max(x2, 0.0), wh[0])
    y1, y2 = min(max(y1, 0.0), wh[1]), min(max(y2, 0.0), wh[1])
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def scale_box_xyxy(
    box: Sequence[float], src_wh: tuple[float, float], dst_wh: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Map an xyxy box from a `src_wh` frame to integer pixels of a `dst_wh` frame.

    Scales each axis by its own ratio and rounds once, so each coordinate is within 0.5 px of
    the exact scaled value; the result lies inside `[0, w] x [0, h]` of the destination and keeps
    at least one pixel of width and height.
    """
    sx, sy = dst_wh[0] / src_wh[0], dst_wh[1] / src_wh[1]
    x1, x2 = _scale_span(box[0] * sx, box[2] * sx, dst_wh[0])
    y1, y2 = _scale_span(box[1] * sy, box[3] * sy, dst_wh[1])
    return x1, y1, x2, y2


def _scale_span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Round one axis of a scaled box; a span that rounds to nothing becomes the pixel holding
    its centre, so it stays within 1 px of the exact values and inside `[0, size]`."""
    a = min(max(round(lo), 0), size)
    b = min(max(round(hi), 0), size)
    if b > a:
        return a, b
    a = min(max(math.floor((lo + hi) / 2), 0), size - 1)
    return a, a + 1


# ---- batched boxes, torch (model, losses, metrics) -----------------------------------------------


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy, same frame."""
    import torch

    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh, same frame."""
    import torch

    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def normalize_xyxy(boxes_px: torch.Tensor, wh: tuple[int, int]) -> torch.Tensor:
    """(N, 4) xyxy in resized pixels -> (N, 4) cxcywh normalised to [0, 1]."""
    import torch

    scale = boxes_px.new_tensor([wh[0], wh[1], wh[0], wh[1]], dtype=torch.float32)
    return xyxy_to_cxcywh(boxes_px.float() / scale)


def denormalize_cxcywh(boxes_norm: torch.Tensor, wh: tuple[float, float]) -> torch.Tensor:
    """(N, 4) normalised cxcywh -> (N, 4) xyxy pixels of a `wh` frame (float, clipped)."""
    xyxy = cxcywh_to_xyxy(boxes_norm.float()).clamp(0.0, 1.0)
    return xyxy * xyxy.new_tensor([wh[0], wh[1], wh[0], wh[1]])


def box_area(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """(N, 4) xyxy -> (N,) areas (zero for degenerate boxes)."""
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]).clamp(min=0) * (
        boxes_xyxy[..., 3] - boxes_xyxy[..., 1]
    ).clamp(min=0)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> ((N, M) iou, (N, M) union)."""
    import torch

    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny), union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M) in [-1, 1]."""
    import torch

    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=torch.finfo(hull.dtype).tiny)
