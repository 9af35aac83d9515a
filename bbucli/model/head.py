"""The detection head of BBUModel: token-anchored DETR queries on top of Qwen2.5-VL.

It takes plain tensors, never the language model: the merger's vision tokens of the student image
and the last hidden states of the student's prompt, both of the language model's hidden size.

    vision tokens (B, Nv, D) --vision_adapter-->   (B, Nv, W) --+-- memory (B, Nv + Nt, W)
    prompt tokens (B, Nt, D) --language_adapter--> (B, Nt, W) --+
    vision tokens (adapted) --token_score_head--> top-K --> queries (B, Q, W) + reference boxes
    queries x memory --decoder (layers, refinement)--> per-layer logits (B, Q), boxes (B, Q, 4)
    final hidden (B, Q, W) --caption_decoder--> caption logits (B, Q, L, V_caption)

With `stem_width`, the student image's pixels also go through a conv stem (`pixel_stem`), and the
stem's features sampled over a box (`roi_proj`) are added to every query before each decoder layer
(at the layer's reference box) and to every token before the token stage (at its anchor box):
fine localisation inside a 28-pixel cell (see `bbucli.model.pixel_stem`).

Parameter name prefixes (relative to the head), for the optimizer's parameter groups:
- `adapter` group: `vision_adapter.`, `language_adapter.`;
- `detection` group: `token_score_head.`, `token_box_head.`, `query_embed`, `memory_type_embed`, `decoder.`
  (`decoder.layers.`, `decoder.pos_head.`, `decoder.box_head.`, `decoder.obj_head.`),
  `caption_decoder.`, `pixel_stem.`, `roi_proj.`.
`parameter_group(name)` applies this rule.

Boxes are normalised cxcywh in [0, 1] of the resized image. Padding: within an image the valid
queries come first (`query_mask[b, :n_valid]`); see `HeadOutput` for how a criterion treats the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bbucli.errors import ConfigError
from bbucli.model.adapters import ResidualAdapter
from bbucli.model.anchors import select_query_tokens, token_cell_boxes
from bbucli.model.caption_decoder import CaptionDecoder
from bbucli.model.decoder import MLP, PAD_LOGIT, RefiningDecoder, inverse_sigmoid
from bbucli.model.pixel_stem import PixelStem, roi_sample

ADAPTER_PREFIXES = ("vision_adapter.", "language_adapter.")
#: RoI sampling covers a box grown by this factor, so that the box's edges are inside the lattice.
ROI_EXPAND = 1.5


def parameter_group(name: str) -> str:
    """`"adapter"` or `"detection"` for a parameter name relative to `DetectionHead`."""
    return "adapter" if name.startswith(ADAPTER_PREFIXES) else "detection"


@dataclass(frozen=True)
class HeadConfig:
    """Sizes of the detection head. `caption_vocab_size` 0 builds no caption decoder; otherwise
    pass `CaptionVocab.size`. `ref_cells`: side of the initial reference box, in merged-grid
    cells (2: a query starts from its token's cell plus half a cell on each side).
    `token_boxes` (two-stage): every vision token also predicts a box, refined from its
    `ref_cells` box by `token_box_head`, and each query starts from its token's predicted box
    (Deformable DETR's two-stage proposals); the token stage then trains boxes too.
    `stem_width` > 0 adds the pixel stem of that many channels, read on a `roi_grid` x `roi_grid`
    lattice over each box; `forward` then needs the student images' pixels."""

    llm_hidden: int
    width: int = 256
    layers: int = 4
    heads: int = 8
    ffn: int = 1024
    max_queries: int = 300
    dropout: float = 0.0
    prior_prob: float = 0.01
    ref_cells: float = 2.0
    caption_vocab_size: int = 0
    caption_max_len: int = 32
    caption_layers: int = 2
    token_boxes: bool = False
    stem_width: int = 0
    roi_grid: int = 4

    def __post_init__(self) -> None:
        problems = []
        for name in ("llm_hidden", "width", "layers", "heads", "ffn", "max_queries"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % 4 or (self.heads >= 1 and self.width % self.heads):
            problems.append(f"width {self.width} must be divisible by 4 and by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.prior_prob < 1.0:
            problems.append(f"prior_prob must be in (0, 1), got {self.prior_prob}")
        if self.stem_width < 0 or self.roi_grid < 1:
            problems.append(f"stem_width must be >= 0 and roi_grid >= 1, got {self.stem_width}, {self.roi_grid}")
        if self.ref_cells <= 0:
            problems.append(f"ref_cells must be > 0, got {self.ref_cells}")
        if self.caption_vocab_size < 0 or 0 < self.caption_vocab_size < 5:
            problems.append(f"caption_vocab_size must be 0 or >= 5, got {self.caption_vocab_size}")
        if self.caption_max_len < 1 or self.caption_layers < 1:
            problems.append("caption_max_len and caption_layers must be >= 1")
        if problems:
            raise ConfigError("invalid detection head config: " + "; ".join(problems))


@dataclass(frozen=True)
class HeadOutput:
    """What `DetectionHead.forward` returns. B images, Q = min(max Nv, max_queries) queries.

    logits: per decoder layer, (B, Q) objectness logits; the last is the prediction, the others
        are auxiliary outputs.
    boxes: per decoder layer, (B, Q, 4) normalised cxcywh in [0, 1].
    hidden: (B, Q, W) last layer's query states (what the caption decoder reads).
    query_mask: (B, Q) bool, True for real queries. Valid queries come first in every image.
        Padding queries have logit `PAD_LOGIT` (-1e4: sigmoid 0, zero focal loss and gradient) and
        meaningless boxes. The criterion should match only `[:n_valid]` of each image (otherwise
        an image with more objects than valid queries would match padding) and leave padding out
        of the objectness loss.
    query_index: (B, Q) long, the vision token each query is anchored on (row-major in the grid).
    reference_boxes: (B, Q, 4) the queries' starting boxes (their tokens' cells, `ref_cells` wide,
        or with `token_boxes` their tokens' predicted boxes, detached).
    token_logits: (B, Nv) objectness score of every vision token, the top-K criterion; padding at
        `PAD_LOGIT`. It only gets gradient from a loss on it: treat
        (`token_logits`, `token_boxes`, `token_mask`) as one more auxiliary stage, like
        Deformable DETR's two-stage encoder output (without `token_boxes` its boxes are
        constants and only the objectness term trains). Without that loss the top-K choice
        (images with Nv > max_queries) stays random, and its scorer gets no gradient
        (`bbucli.train.build` freezes such idle parameters, so DDP needs no
        `find_unused_parameters`).
    token_boxes: (B, Nv, 4) normalised cxcywh: each token's cell (one cell wide), or with
        `HeadConfig.token_boxes` each token's predicted box (trainable).
    token_mask: (B, Nv) bool, the vision mask given.
    caption_logits: (B, Q, L, V_caption) when caption targets were given, else None.
    """

    logits: tuple[torch.Tensor, ...]
    boxes: tuple[torch.Tensor, ...]
    hidden: torch.Tensor
    query_mask: torch.Tensor
    query_index: torch.Tensor
    reference_boxes: torch.Tensor
    token_logits: torch.Tensor
    token_boxes: torch.Tensor
    token_mask: torch.Tensor
    caption_logits: torch.Tensor | None = None

    @property
    def pred_logits(self) -> torch.Tensor:
        """(B, Q) last layer's objectness logits."""
        return self.logits[-1]

    @property
    def pred_boxes(self) -> torch.Tensor:
        """(B, Q, 4) last layer's boxes, normalised cxcywh."""
        return self.boxes[-1]


class DetectionHead(nn.Module):
    """Adapters + token-anchored DETR decoder + caption decoder. See the module docstring."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.vision_adapter = ResidualAdapter(config.llm_hidden, w)
        self.language_adapter = ResidualAdapter(config.llm_hidden, w)
        self.token_score_head = nn.Linear(w, 1)
        # Tells the decoder which inputs are queries (a query is also a copy of a memory token).
        self.query_embed = nn.Parameter(torch.randn(w) * 0.02)
        # Row 0: vision memory, row 1: prompt memory; prompt tokens have no box to encode.
        self.memory_type_embed = nn.Parameter(torch.randn(2, w) * 0.02)
        self.decoder = RefiningDecoder(
            w, config.layers, config.heads, config.ffn, config.dropout, config.prior_prob
        )
        self.token_box_head: MLP | None = None
        if config.token_boxes:
            self.token_box_head = MLP(w, w, 4, 3)
            # Zero correction at start: every token first proposes its `ref_cells` box.
            nn.init.zeros_(self.token_box_head.layers[-1].weight)
            nn.init.zeros_(self.token_box_head.layers[-1].bias)
        # Same prior as the queries' objectness; written out rather than copied so that the head
        # can be built on the meta device.
        nn.init.constant_(
            self.token_score_head.bias, -math.log((1.0 - config.prior_prob) / config.prior_prob)
        )
        self.pixel_stem: PixelStem | None = None
        self.roi_proj: nn.Sequential | None = None
        if config.stem_width:
            self.pixel_stem = PixelStem(config.stem_width)
            self.roi_proj = nn.Sequential(
                nn.Linear(config.roi_grid**2 * config.stem_width, w), nn.LayerNorm(w)
            )
        self.caption_decoder: CaptionDecoder | None = None
        if config.caption_vocab_size:
            self.caption_decoder = CaptionDecoder(
                vocab_size=config.caption_vocab_size,
                cond_width=w,
                width=w,
                layers=config.caption_layers,
                heads=config.heads,
                ffn=config.ffn,
                max_len=config.caption_max_len,
                dropout=config.dropout,
            )

    def forward(
        self,
        vision_tokens: torch.Tensor,
        vision_mask: torch.Tensor,
        grid_hw: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        caption_targets: torch.Tensor | None = None,
        pixels: torch.Tensor | None = None,
        pixel_hw: torch.Tensor | None = None,
    ) -> HeadOutput:
        """Detect in a batch of B student images.

        vision_tokens: (B, Nv, D) merger output of each image, row-major over its merged grid,
            zero-padded at the end; vision_mask: (B, Nv) bool, True for the grid_h * grid_w real
            tokens of each image; grid_hw: (B, 2) merged grid `(h / 28, w / 28)` of the resized image.
        text_tokens: (B, Nt, D) hidden states of the student prompt; text_mask: (B, Nt) bool.
        caption_targets: optional (B, Q, L) compact ids (`CaptionVocab.targets`) for teacher
            forcing on every query; training usually needs only the matched queries, which
            `caption_logits(hidden[b, q], targets)` computes far more cheaply.
        pixels: (B, 3, H, W) the student images, normalised as the vision tower reads them,
            zero-padded to a common canvas, and pixel_hw (B, 2) their sizes (h, w): needed with
            `stem_width` (`bbucli.model.pixel_stem.student_pixels` makes both from a batch).
        """
        b, n_vis, _ = vision_tokens.shape
        vision_mask, text_mask = vision_mask.bool(), text_mask.bool()
        if vision_mask.shape != (b, n_vis) or grid_hw.shape != (b, 2):
            raise ValueError(
                f"vision_mask {tuple(vision_mask.shape)} / grid_hw {tuple(grid_hw.shape)} do not "
                f"match vision_tokens {tuple(vision_tokens.shape)}"
            )
        if text_tokens.shape[0] != b or text_mask.shape != text_tokens.shape[:2]:
            raise ValueError(
                f"text_mask {tuple(text_mask.shape)} does not match text_tokens {tuple(text_tokens.shape)}"
            )
        # Token n must be cell (n // grid_w, n % grid_w): real tokens first, padding after.
        n_cells = grid_hw[:, 0].long() * grid_hw[:, 1].long()
        expected = torch.arange(n_vis, device=vision_mask.device)[None, :] < n_cells[:, None]
        if not torch.equal(vision_mask, expected) or bool((n_cells == 0).any()):
            raise ValueError(
                f"vision_mask must mark the first grid_h * grid_w = {n_cells.tolist()} tokens of "
                f"each image (got counts {vision_mask.sum(dim=1).tolist()}), and none may be empty"
            )

        vision = self.vision_adapter(vision_tokens)
        text = self.language_adapter(text_tokens)
        cells = token_cell_boxes(grid_hw, n_vis, cells=1.0)
        anchors = token_cell_boxes(grid_hw, n_vis, cells=self.config.ref_cells)
        roi = self._roi_reader(pixels, pixel_hw, b, vision.dtype)
        # Token features for the token stage and the queries; the memory keeps the plain tokens.
        tokens = vision if roi is None else vision + roi(anchors)
        token_logits = self.token_score_head(tokens).squeeze(-1).float()
        token_logits = token_logits.masked_fill(~vision_mask, PAD_LOGIT)
        index, query_mask = select_query_tokens(token_logits, vision_mask, self.config.max_queries)

        if self.token_box_head is not None:
            # fp32 refinement, as in the decoder.
            token_boxes = (inverse_sigmoid(anchors) + self.token_box_head(tokens).float()).sigmoid()
            reference = token_boxes.detach()
        else:
            token_boxes, reference = cells, anchors
        reference = reference.gather(1, index[..., None].expand(-1, -1, 4))
        queries = tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))
        queries = queries + self.query_embed

        vision_pos = self.decoder.box_position(cells) + self.memory_type_embed[0]
        text_pos = self.memory_type_embed[1].expand_as(text)
        memory = torch.cat((vision, text), dim=1)
        memory_pos = torch.cat((vision_pos, text_pos), dim=1)
        memory_mask = torch.cat((vision_mask, text_mask), dim=1)

        logits, boxes, hidden = self.decoder(
            queries, reference, query_mask, memory, memory_pos, memory_mask, roi=roi
        )
        caption_logits = None
        if caption_targets is not None:
            q = hidden.shape[1]
            if caption_targets.shape[:2] != (b, q):
                raise ValueError(
                    f"caption_targets {tuple(caption_targets.shape)} must be (B, Q, L) = ({b}, {q}, L)"
                )
            flat = self.caption_logits(
                hidden.reshape(b * q, -1), caption_targets.reshape(b * q, -1)
            )
            caption_logits = flat.view(b, q, *flat.shape[1:])
        return HeadOutput(
            logits=logits,
            boxes=boxes,
            hidden=hidden,
            query_mask=query_mask,
            query_index=index,
            reference_boxes=reference,
            token_logits=token_logits,
            token_boxes=token_boxes,
            token_mask=vision_mask,
            caption_logits=caption_logits,
        )

    def caption_logits(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher forcing for selected queries: hidden (N, W), targets (N, L) compact ids ->
        logits (N, L, V_caption). Use it on the matched queries only."""
        return self._captioner()(hidden, targets)

    @torch.no_grad()
    def generate_captions(self, hidden: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        """Greedy captions: hidden (..., W) -> (..., max_len) compact ids, `EOS` then `PAD`
        (`CaptionVocab.decode` turns a row into Qwen token ids)."""
        flat = self._captioner().generate(hidden.reshape(-1, hidden.shape[-1]), max_len)
        return flat.view(*hidden.shape[:-1], flat.shape[-1])

    def _roi_reader(
        self, pixels: torch.Tensor | None, pixel_hw: torch.Tensor | None, b: int, dtype: torch.dtype
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """boxes (B, N, 4) -> (B, N, W) projected stem features over each box; None without a stem."""
        if self.pixel_stem is None or self.roi_proj is None:
            return None
        if pixels is None or pixel_hw is None or pixels.shape[0] != b or pixel_hw.shape != (b, 2):
            raise ValueError(
                f"this head has a pixel stem: forward needs pixels (B={b}, 3, H, W) and pixel_hw "
                f"(B, 2), got {None if pixels is None else tuple(pixels.shape)}"
            )
        features = self.pixel_stem(pixels.to(dtype), pixel_hw)
        canvas = torch.tensor(pixels.shape[-2:], device=pixel_hw.device)
        extent = (pixel_hw / canvas).flip(-1)  # (w, h) share of the canvas
        grid, proj = self.config.roi_grid, self.roi_proj
        return lambda boxes: proj(roi_sample(features, boxes, extent, grid, ROI_EXPAND))

    def _captioner(self) -> CaptionDecoder:
        if self.caption_decoder is None:
            raise ValueError("this head has no caption decoder (caption_vocab_size is 0)")
        return self.caption_decoder
