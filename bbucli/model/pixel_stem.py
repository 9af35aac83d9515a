"""Fine spatial features for the detection head: the student image's pixels, a small conv stem, and
RoI sampling at each query's box.

A merged vision token covers 28x28 pixels, and a screw or a CPRI plug is 15-25 pixels wide: the
head must place a box to 2-3 pixels inside a cell to reach IoU 0.5. The merger's tokens carry what
the LLM needs rather than where the edges are, so the head can also read the image itself, as
ViT-Adapter's spatial prior module does for plain ViTs: a conv stem (stride 4) over the student
image, sampled on an n x n grid over a query's current box (RoIAlign's bilinear sampling, through
`F.grid_sample`) and projected to the head's width. Each decoder layer samples at its own
reference box, so every refinement step looks at the pixels around the box it corrects.

The pixels come from the batch's `pixel_values`, not from a second read of the image:
`student_pixels` undoes the Qwen2-VL processor's patch layout, so the head sees exactly the
resized, normalised image that the vision tower sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The stem's output stride, in pixels of the resized image.
STEM_STRIDE = 4


def student_pixels(
    pixel_values: torch.Tensor,
    grid_thw: torch.Tensor,
    images: list[int],
    *,
    patch_size: int,
    merge_size: int,
    temporal_patch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images `images` (indices into `grid_thw`) as a zero-padded (B, 3, H, W) canvas, and their
    (B, 2) pixel sizes (h, w).

    pixel_values: (sum of t*h*w over the images, 3 * temporal * patch * patch), the processor's
    layout: per image, patches ordered (t, h / merge, w / merge, merge, merge), each patch flattened
    as (channel, temporal, patch, patch). The first temporal slice is taken (a still image is
    repeated over it).
    """
    counts = grid_thw.prod(-1).tolist()
    starts = [0]
    for n in counts[:-1]:
        starts.append(starts[-1] + int(n))
    p, m, t = patch_size, merge_size, temporal_patch_size
    pictures = []
    for k in images:
        _, gh, gw = (int(v) for v in grid_thw[k])
        patches = pixel_values[starts[k] : starts[k] + gh * gw]
        x = patches.view(gh // m, gw // m, m, m, 3, t, p, p)[:, :, :, :, :, 0]
        # (H/m, W/m, m, m, C, p, p) -> (C, H/m, m, p, W/m, m, p) -> (C, gh * p, gw * p)
        pictures.append(x.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p))
    sizes = torch.tensor([pic.shape[1:] for pic in pictures], dtype=torch.long)
    canvas = pixel_values.new_zeros(len(pictures), 3, int(sizes[:, 0].max()), int(sizes[:, 1].max()))
    for i, pic in enumerate(pictures):
        canvas[i, :, : pic.shape[1], : pic.shape[2]] = pic
    return canvas, sizes.to(pixel_values.device)


class PixelStem(nn.Module):
    """Three 3x3 convolutions, stride 4 in all: (B, 3, H, W) -> (B, width, H / 4, W / 4).

    Every layer's output is zeroed outside each image's own extent, so an image padded onto a
    bigger canvas gets exactly the features it gets alone (its border sees zeros, never the
    activations of the padding). Image sides must be multiples of 4 (Qwen's are of 28)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        half = max(width // 2, 1)
        self.convs = nn.ModuleList(
            (
                nn.Conv2d(3, half, 3, stride=2, padding=1),
                nn.Conv2d(half, width, 3, stride=2, padding=1),
                nn.Conv2d(width, width, 3, stride=1, padding=1),
            )
        )

    def forward(self, pixels: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W) zero-padded canvas; sizes (B, 2) each image's (h, w) in pixels."""
        x, stride = pixels, 1
        for i, conv in enumerate(self.convs):
            x = conv(x)
            stride *= conv.stride[0]
            if i < len(self.convs) - 1:
                x = F.relu(x)
            x = x * _extent_mask(sizes // stride, x.shape[-2:]).to(x.dtype)
        return x


def _extent_mask(sizes: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(B, 1, H, W) bool, True inside each image's (h, w) top-left extent."""
    rows = torch.arange(shape[0], device=sizes.device)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(shape[1], device=sizes.device)[None, None, :] < sizes[:, 1, None, None]
    return (rows & cols)[:, None]


def roi_sample(
    features: torch.Tensor, boxes: torch.Tensor, extent: torch.Tensor, grid: int, expand: float
) -> torch.Tensor:
    """Bilinear samples of `features` on a grid x grid lattice over each box, grown by `expand`.

    features: (B, C, Hf, Wf) over the padded canvas; boxes: (B, Q, 4) normalised cxcywh of each
    image; extent: (B, 2) the image's share (w, h) of the canvas, in (0, 1], which maps image
    coordinates onto the canvas. Points outside the canvas read zeros.
    Returns (B, Q, grid * grid * C), points row-major, channels last.
    """
    b, q, _ = boxes.shape
    boxes = boxes.float()
    steps = (torch.arange(grid, device=boxes.device, dtype=torch.float32) + 0.5) / grid - 0.5
    xs = boxes[..., 0:1] + steps * boxes[..., 2:3] * expand  # (B, Q, grid)
    ys = boxes[..., 1:2] + steps * boxes[..., 3:4] * expand
    points = torch.stack(
        (xs[:, :, None, :].expand(-1, -1, grid, -1), ys[:, :, :, None].expand(-1, -1, -1, grid)),
        dim=-1,
    )  # (B, Q, grid rows, grid cols, 2) as (x, y)
    points = points * extent.float()[:, None, None, None, :] * 2.0 - 1.0
    sampled = F.grid_sample(
        features.float(), points.view(b, q, grid * grid, 2), align_corners=False
    )  # (B, C, Q, grid * grid)
    return sampled.permute(0, 2, 3, 1).reshape(b, q, -1).to(features.dtype)
