"""The image-only Qwen2.5-VL processor: tokenizer + image processor + chat template.

Owns `VLProcessor` and `load_processor`. The stock `Qwen2_5_VLProcessor` cannot be built without a
video processor (which needs torchvision, never installed here), so bbu pairs the tokenizer with
transformers' PIL image processor (`Qwen2VLImageProcessorPil`: patch 14, merge 2, temporal patch 2)
itself. `save_pretrained` writes the same files as a Qwen2.5-VL-Instruct checkpoint
(tokenizer.json, tokenizer_config.json, preprocessor_config.json, chat_template.json), so plain
transformers loads them back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bbucli.chat.tokenizer import QWEN2_5_VL_CHAT_TEMPLATE, load_tokenizer
from bbucli.errors import ConfigError, ModelError
from bbucli.geometry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from transformers import PreTrainedTokenizerBase

IMAGE_TOKEN = "<|image_pad|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"
CHAT_TEMPLATE_FILE = "chat_template.json"


@dataclass(frozen=True)
class VLProcessor:
    """Tokenizer, image processor and chat template of one Qwen2.5-VL model.

    Pixel limits and patch geometry live in `image_processor`; the properties below read them.
    """

    tokenizer: PreTrainedTokenizerBase
    image_processor: Any  # transformers Qwen2VLImageProcessorPil
    chat_template: str

    @property
    def image_token_id(self) -> int:
        return self._token_id(IMAGE_TOKEN)

    @property
    def vision_start_id(self) -> int:
        return self._token_id(VISION_START_TOKEN)

    @property
    def vision_end_id(self) -> int:
        return self._token_id(VISION_END_TOKEN)

    @property
    def patch_size(self) -> int:
        return int(self.image_processor.patch_size)

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)

    @property
    def min_pixels(self) -> int:
        return int(self.image_processor.size.shortest_edge)

    @property
    def max_pixels(self) -> int:
        return int(self.image_processor.size.longest_edge)

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """Render `messages` with this processor's template; a string unless `tokenize=True`.

        Each image item renders as `<|vision_start|><|image_pad|><|vision_end|>`: ONE pad token.
        Expanding it to the image's vision-token count is the caller's job (ChatProcessor).
        Other kwargs (`add_generation_prompt`, `add_vision_id`, ...) go to the tokenizer.
        """
        kwargs.setdefault("tokenize", False)
        kwargs.setdefault("chat_template", self.chat_template)
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def process_images(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Resize (smart_resize within the pixel limits), normalise and patchify `images`.

        Returns `pixel_values (sum_i t_i*h_i*w_i, 1176)` float32, patches of all images in order,
        and `image_grid_thw (len(images), 3)` int64, the (t, h, w) patch grid of each image;
        image i takes `t_i*h_i*w_i // merge_size**2` `<|image_pad|>` tokens.
        """
        if not images:
            raise ValueError("process_images needs at least one image")
        out = self.image_processor.preprocess(list(images), return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`input_ids (..., S)` -> `(..., S)` int32: 1 at `<|image_pad|>`, else 0.

        transformers 5.x computes Qwen2.5-VL's 3-D mRoPE positions only when the forward gets these
        (or `position_ids`); without them it silently falls back to 1-D text positions.
        """
        return (input_ids == self.image_token_id).int()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write tokenizer, preprocessor_config.json and chat_template.json into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.chat_template = self.chat_template
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        payload = json.dumps({"chat_template": self.chat_template}, indent=2, ensure_ascii=False)
        (directory / CHAT_TEMPLATE_FILE).write_text(payload + "\n", encoding="utf-8")
        return directory

    def _token_id(self, token: str) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(token))


def load_processor(
    path: str | Path = "tiny",
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> VLProcessor:
    """The processor of `path`: the word "tiny" or a local Qwen2.5-VL checkpoint folder.

    "tiny" pairs the offline Qwen2.5-VL tokenizer (see `bbucli.chat.tokenizer`) with a fresh image
    processor. A folder needs tokenizer.json (or vocab.json + merges.txt), preprocessor_config.json
    and a chat template (chat_template.json, chat_template.jinja or inside tokenizer_config.json).
    `min_pixels`/`max_pixels` override the limits; None keeps the folder's own limits, and for
    "tiny" means DEFAULT_MIN_PIXELS (4*28*28) and DEFAULT_MAX_PIXELS (512*28*28). Nothing is
    downloaded.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if str(path) == "tiny":
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=DEFAULT_MIN_PIXELS if min_pixels is None else min_pixels,
            max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels,
            patch_size=14,
            temporal_patch_size=2,
            merge_size=2,
        )
        _check_limits(image_processor)
        return VLProcessor(load_tokenizer(), image_processor, QWEN2_5_VL_CHAT_TEMPLATE)
    limits = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    processor = _load_folder(Path(path), {k: v for k, v in limits.items() if v is not None})
    _check_limits(processor.image_processor)
    return processor


def _load_folder(folder: Path, limits: dict[str, int]) -> VLProcessor:
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    hint = "model.path must be 'tiny' or a local Qwen2.5-VL-3B/7B-Instruct folder (nothing is downloaded)"
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist", hint=hint)
    missing = []
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        missing.append("tokenizer.json")
    if not (folder / "preprocessor_config.json").is_file():
        missing.append("preprocessor_config.json")
    if missing:
        raise ModelError(
            f"{folder} lacks {' and '.join(missing)}",
            hint="copy the processor files of Qwen2.5-VL-Instruct (tokenizer*, preprocessor_config.json) into it",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(
            folder, local_files_only=True, **limits
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the processor in {folder}: {exc}", hint=hint) from exc
    template = _read_chat_template(folder, tokenizer)
    if template is None:
        raise ModelError(
            f"{folder} has no chat template",
            hint="copy chat_template.json of Qwen2.5-VL-7B-Instruct into the folder",
        )
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        raise ModelError(f"the tokenizer in {folder} has no {IMAGE_TOKEN} token", hint=hint)
    tokenizer.chat_template = template
    return VLProcessor(tokenizer, image_processor, template)


def _read_chat_template(folder: Path, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """chat_template.json (what Qwen2.5-VL ships) first, then .jinja, then tokenizer_config's."""
    json_file, jinja_file = folder / CHAT_TEMPLATE_FILE, folder / "chat_template.jinja"
    if json_file.is_file():
        try:
            template = json.loads(json_file.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ModelError(f"{json_file} is not a JSON object with a chat_template") from exc
        if isinstance(template, str):
            return template
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else None


def _check_limits(image_processor: Any) -> None:
    factor = image_processor.patch_size * image_processor.merge_size
    low, high = image_processor.size.shortest_edge, image_processor.size.longest_edge
    if not factor * factor <= low <= high:
        raise ConfigError(
            f"pixel limits must satisfy {factor * factor} <= min_pixels <= max_pixels, "
            f"got min_pixels={low} max_pixels={high}",
            hint="use multiples of 28*28, e.g. min_pixels=4*28*28 max_pixels=512*28*28",
        )
