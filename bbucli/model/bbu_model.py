"""BBUModel: Qwen2.5-VL + the detection head, one forward for padded and packed batches.

What the head reads, per sample that has at least one image:
- vision memory: the merger's output for the sample's **student image**, its last image (teachers
  come first in the conversation). The vision tower is called through its public
  `get_image_features` (per-image merged tokens, row-major over each merged grid) and the result is
  handed to the language model as `mm_encoder_outputs`, so the tokens the head reads are the very
  tensors the language model embeds, computed once, with no patching and no hooks. The vision tower
  encodes every image on its own, so a teacher's pixels or another packed sample never reach the
  student's tokens.
- language memory: hidden states (layer `text_layer`) of the student's user turn, from its
  `<|im_start|>` (`student_turn_start`) up to `prompt_end`, that is
  `<|im_start|>user\\n<|vision_start|>`, `<|vision_end|>`, the instruction, `<|im_end|>\\n` and the
  generation header `<|im_start|>assistant\\n`. The student's `<|image_pad|>` positions are left
  out: the vision memory already holds that image, with box positions the prompt tokens lack. Every
  position taken is before `prompt_end`, and attention is causal (per sample in packed rows), so
  answer tokens (the boxes as text) never reach the head. The default layer is the final
  normalised output (what `lm_head` reads); an inner one is read by a forward hook on that decoder
  layer, registered for the forward only (so activation checkpointing's recomputation in backward
  does not fire it), which keeps one (R, S, D) tensor instead of `output_hidden_states`' all.

Where the student image and turn lie is the ChatProcessor's knowledge, carried by the collators
(moved with each sample by padding or packing): `student_turn_start`, `student_image_span`
([start, end) of its `<|image_pad|>` run), `prompt_end`, and `student_image` (its index in
`image_grid_thw`, -1 for a sample without images, which the head skips). They index a sample's
padded row, or the packed row; the model turns them into positions without searching the tokens.

Packed rows follow the collator's form (`position_ids` (4, 1, L), no `attention_mask`, no cache);
under flash-attention-2 and `sdpa_varlen` the row's `cu_seqlens` also go to the attention as
varlen boundaries.
Only named inputs go to the Qwen model, never `**batch`: transformers hands unknown keywords to the
vision tower too, which would take the row's `cu_seqlens` for its own patch boundaries.
Parameter names: `qwen.*` (the Qwen2.5-VL model), `head.*` (`DetectionHead`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from bbucli.errors import ConfigError
from bbucli.model.caption_vocab import CaptionVocab
from bbucli.model.head import DetectionHead, HeadConfig, HeadOutput
from bbucli.model.pixel_stem import student_pixels
from bbucli.model.varlen_attention import ATTN_VARLEN, varlen_kwargs


@dataclass(frozen=True)
class BBUOutput:
    """What `BBUModel.forward` returns. R rows of S tokens (R = B padded, R = 1 packed), D hidden.

    hidden_states: (R, S, D) the language model's final normalised hidden states, what `lm_head`
        reads (`bbucli.loss.lm` turns the supervised positions into the LM loss).
    head: the detection head's output for the B_det samples that have an image, None if none has.
    head_samples: (B_det,) long, the batch sample of each head row, ascending.
    vision_memory: (B_det, Nv, D) merger tokens of each student image, row-major, zero-padded;
        vision_mask (B_det, Nv) bool; grid_hw (B_det, 2) long merged grid (h / 28, w / 28).
    text_memory: (B_det, Nt, D) hidden states of the student turn (see the module docstring),
        zero-padded; text_mask (B_det, Nt) bool.
    """

    hidden_states: torch.Tensor
    head: HeadOutput | None
    head_samples: torch.Tensor
    vision_memory: torch.Tensor | None
    vision_mask: torch.Tensor | None
    grid_hw: torch.Tensor | None
    text_memory: torch.Tensor | None
    text_mask: torch.Tensor | None


#: Where the head's vision memory comes from: the merger's tokens, or the language model's hidden
#: states (layer `text_layer`, like the language memory) at the student image's token positions.
VISION_SOURCES = ("merger", "llm")
#: The collator keys that place each sample's student turn and image (see the module docstring).
SPAN_KEYS = ("prompt_end", "student_turn_start", "student_image_span", "student_image")


@dataclass(frozen=True)
class _StudentLayout:
    """Where each head sample's memory lies, as host-side indices into the flattened (R * S) row(s).

    samples: batch sample per head row; images: index of its student image in `image_grid_thw`;
    text_index: per head row, the flat positions of its language memory.
    """

    samples: list[int]
    images: list[int]
    text_index: list[torch.Tensor]
    image_index: list[torch.Tensor]


class BBUModel(nn.Module):
    """`Qwen2_5_VLForConditionalGeneration` (`self.qwen`) + `DetectionHead` (`self.head`).

    head_config.llm_hidden must be the text hidden size, and head_config.caption_vocab_size
    `caption_vocab.size` (0 without a caption vocabulary). text_layer: which hidden states form
    the language memory, indexed like transformers' `output_hidden_states` (1..num_layers after
    that decoder layer, negative from the end); -1 (default) is the final normalised output.
    """

    #: Keys the Trainer's resume state leaves out (`BBUTrainer` sets them: the frozen parameters,
    #: rebuilt from `model.path` on resume); the Trainer reads the name when it loads that state.
    _keys_to_ignore_on_save: list[str] | None = None

    def __init__(
        self,
        qwen: nn.Module,
        head_config: HeadConfig,
        *,
        caption_vocab: CaptionVocab | None = None,
        text_layer: int = -1,
        vision_source: str = "merger",
    ) -> None:
        super().__init__()
        text_config = qwen.config.text_config
        num_layers = int(text_config.num_hidden_layers)
        problems = []
        if head_config.llm_hidden != text_config.hidden_size:
            problems.append(
                f"head llm_hidden {head_config.llm_hidden} != the model's hidden size "
                f"{text_config.hidden_size}"
            )
        vocab_size = caption_vocab.size if caption_vocab is not None else 0
        if head_config.caption_vocab_size != vocab_size:
            problems.append(
                f"head caption_vocab_size {head_config.caption_vocab_size} != the caption "
                f"vocabulary's size {vocab_size}"
            )
        resolved = text_layer + num_layers + 1 if text_layer < 0 else text_layer
        if not 1 <= resolved <= num_layers:
            problems.append(
                f"text_layer {text_layer} is not a decoder layer output of a {num_layers}-layer "
                f"model (1..{num_layers}, or -1..-{num_layers})"
            )
        if vision_source not in VISION_SOURCES:
            problems.append(f"vision_source must be one of {VISION_SOURCES}, got {vision_source!r}")
        if problems:
            raise ConfigError(
                "invalid BBUModel: " + "; ".join(problems),
                hint="build the head config with BBUModel.from_qwen, or fix the head sizes",
            )
        self.qwen = qwen
        self.head = DetectionHead(head_config)
        self.caption_vocab = caption_vocab
        self.text_layer = resolved
        self.vision_source = vision_source
        self.num_layers = num_layers
        vision_config = qwen.config.vision_config
        self.merge_size = int(vision_config.spatial_merge_size)
        self.patch_size = int(vision_config.patch_size)
        self.temporal_patch_size = int(vision_config.temporal_patch_size)

    @classmethod
    def from_qwen(
        cls,
        qwen: nn.Module,
        *,
        caption_vocab: CaptionVocab | None = None,
        text_layer: int = -1,
        vision_source: str = "merger",
        **head: Any,
    ) -> BBUModel:
        """A BBUModel whose head config takes its sizes from `qwen` and `caption_vocab`; `head`
        keywords are the other `HeadConfig` fields (width, layers, heads, ...)."""
        config = HeadConfig(
            llm_hidden=int(qwen.config.text_config.hidden_size),
            caption_vocab_size=caption_vocab.size if caption_vocab is not None else 0,
            **head,
        )
        return cls(
            qwen,
            config,
            caption_vocab=caption_vocab,
            text_layer=text_layer,
            vision_source=vision_source,
        )

    def tie_weights(self) -> None:
        """Tie the Qwen part's embeddings and lm_head again where its config ties them (the
        Trainer calls it after loading a resume state that leaves out `_keys_to_ignore_on_save`)."""
        self.qwen.tie_weights()

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """Activation checkpointing of the Qwen part (the head is small); keywords as transformers'
        `activation_checkpointing_enable`. The Trainer calls it under `gradient_checkpointing`."""
        self.qwen.activation_checkpointing_enable(**kwargs)

    def forward(self, batch: Mapping[str, Any]) -> BBUOutput:
        """batch: a `StandardDataCollator` or `PackedDataCollator` dict (on the model's device);
        keys other than the model inputs (labels, gt_boxes, ...) are ignored here."""
        input_ids = batch["input_ids"]
        packed = batch.get("cu_seqlens") is not None
        pixel_values, grid_thw = batch.get("pixel_values"), batch.get("image_grid_thw")
        layout = self._layout(batch, packed)

        inner = self.qwen.model
        encoder_outputs = None
        if pixel_values is not None:
            encoder_outputs = {
                "image": inner.get_image_features(pixel_values, grid_thw, return_dict=True)
            }
        with self._capture_layer() as captured:
            out = inner(
                input_ids=input_ids,
                attention_mask=None if packed else batch.get("attention_mask"),
                position_ids=batch["position_ids"],
                mm_encoder_outputs=encoder_outputs,
                use_cache=False,
                **self._varlen_kwargs(batch, packed),
            )
        hidden = out.last_hidden_state
        empty = hidden.new_zeros(0, dtype=torch.long)
        if not layout.samples:
            return BBUOutput(hidden, None, empty, None, None, None, None, None)

        memory_source = hidden if captured is None else captured["hidden"]
        device = hidden.device
        flat = memory_source.reshape(-1, memory_source.shape[-1])
        if self.vision_source == "llm":
            vision = [flat[index.to(device)] for index in layout.image_index]
        else:
            merged = encoder_outputs["image"].pooler_output
            vision = [merged[k] for k in layout.images]
        vision_memory = pad_sequence(vision, batch_first=True)
        vision_mask = _length_mask([len(v) for v in vision], device)
        grid_hw = (grid_thw[layout.images, 1:] // self.merge_size).to(
            device=device, dtype=torch.long
        )

        text_index = pad_sequence(layout.text_index, batch_first=True).to(device)
        text_mask = _length_mask([len(t) for t in layout.text_index], device)
        text_memory = flat[text_index] * text_mask[..., None].to(flat.dtype)

        pixels = pixel_hw = None
        if self.head.pixel_stem is not None:
            pixels, pixel_hw = student_pixels(
                pixel_values,
                grid_thw,
                layout.images,
                patch_size=self.patch_size,
                merge_size=self.merge_size,
                temporal_patch_size=self.temporal_patch_size,
            )
        memory = (vision_memory, vision_mask, grid_hw, text_memory, text_mask)
        head_out = self.head(*memory, pixels=pixels, pixel_hw=pixel_hw)
        return BBUOutput(
            hidden_states=hidden,
            head=head_out,
            head_samples=torch.tensor(layout.samples, dtype=torch.long, device=device),
            vision_memory=vision_memory,
            vision_mask=vision_mask,
            grid_hw=grid_hw,
            text_memory=text_memory,
            text_mask=text_mask,
        )

    # ---- internals ------------------------------------------------------------------------------

    @contextmanager
    def _capture_layer(self) -> Iterator[dict[str, torch.Tensor] | None]:
        """Capture the output of decoder layer `text_layer` during one forward (None when the
        final normalised output is wanted). The hook is removed before backward, so activation
        checkpointing's recomputation does not fire it again."""
        if self.text_layer == self.num_layers:
            yield None
            return
        captured: dict[str, torch.Tensor] = {}

        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            captured["hidden"] = output[0] if isinstance(output, tuple) else output

        layer = self.qwen.model.language_model.layers[self.text_layer - 1]
        handle = layer.register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()

    def _varlen_kwargs(self, batch: Mapping[str, Any], packed: bool) -> dict[str, Any]:
        """Varlen boundaries of a packed row for flash-attention-2 and `sdpa_varlen`, passed
        explicitly so that the attention needs no pass over the position ids. Other backends get
        nothing: sdpa and eager build their per-sample mask from the position ids' text row."""
        from transformers.utils.generic import is_flash_attention_requested

        text_config = self.qwen.config.text_config
        varlen = text_config._attn_implementation == ATTN_VARLEN
        if not packed or not (varlen or is_flash_attention_requested(text_config)):
            return {}
        return varlen_kwargs(batch["cu_seqlens"], batch["input_ids"].device)

    def _layout(self, batch: Mapping[str, Any], packed: bool) -> _StudentLayout:
        """Every head sample's memory positions from the collator's student spans (host-side index
        arithmetic). Raises ValueError when the spans do not fit the batch's image grids."""
        rows, width = batch["input_ids"].shape
        spans = {key: torch.as_tensor(batch[key]).cpu().long() for key in SPAN_KEYS}
        if not packed and len(spans["prompt_end"]) != rows:
            raise ValueError(f"{len(spans['prompt_end'])} prompt_end values for {rows} rows")
        # Row-relative indices (padded) -> positions in the flattened (R * S) batch.
        row_start = torch.zeros_like(spans["prompt_end"]) if packed else torch.arange(rows) * width
        turn = spans["student_turn_start"] + row_start
        image = spans["student_image_span"] + row_start[:, None]
        end = spans["prompt_end"] + row_start
        samples = torch.nonzero(spans["student_image"] >= 0).flatten()
        images = spans["student_image"][samples]

        grid = batch.get("image_grid_thw")
        grid = torch.zeros(0, 3, dtype=torch.long) if grid is None else grid.detach().cpu().long()
        lengths = image[samples, 1] - image[samples, 0]
        need = grid[images].prod(-1) // self.merge_size**2
        if not torch.equal(lengths, need) or bool((grid[images, 0] != 1).any()):
            raise ValueError(
                f"the student image-token runs of {lengths.tolist()} tokens do not fit the still "
                f"images image_grid_thw gives them ({grid[images].tolist()}): input_ids and images "
                "do not belong together"
            )
        text_index = [
            torch.cat((torch.arange(turn[b], image[b, 0]), torch.arange(image[b, 1], end[b])))
            for b in samples.tolist()
        ]
        image_index = [torch.arange(image[b, 0], image[b, 1]) for b in samples.tolist()]
        return _StudentLayout(samples.tolist(), images.tolist(), text_index, image_index)


def _length_mask(lengths: list[int], device: torch.device) -> torch.Tensor:
    """(N, max length) bool, True for the first lengths[i] positions of row i."""
    n = torch.tensor(lengths, device=device)
    return torch.arange(int(max(lengths)), device=device)[None, :] < n[:, None]
