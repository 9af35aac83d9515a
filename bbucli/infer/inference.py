"""`Inference`: a trained checkpoint -> `Detections` per image, in the original image's pixels.

    inference = Inference.from_checkpoint("runs/tiny/checkpoint-100")
    [dets] = inference.predict_detection(["photo.jpeg"])                 # detection head
    [dets] = inference.predict_detection(["photo.jpeg"], source="lm")    # generated answer

Prompts are built exactly as in training (`bbucli.infer.prompting`: `ChatProcessor` on an
episode whose student is the image, cut at `prompt_end`), with the checkpoint's chat template,
pixel limits and training prompts; teacher episodes come first. By default those are the
checkpoint's own (`Inference.teachers`, the fixed label-blind set training saved in `teachers/`:
the prompt shape of training); `teachers=[]` predicts without any.

Images are paths, PIL images (kept in memory: nothing is written) or `Episode`s (the student's
image with its teachers).

Frames: the model sees the resized image (`model_wh`); every returned box is xyxy in pixels of
the original image as it stands upright (EXIF orientation applied, `image_wh`), clipped to it.
- head: `bbucli.infer.postprocess.HeadDecoder` (normalised cxcywh x `image_wh`; classes by the
  caption decoder's likelihood of each known class desc - from_checkpoint: the classes of its
  training data, which it stores (`Checkpoint.class_descs`) - or the greedy caption; top `top_k`,
  then `score_threshold`).
- lm: the greedy answer (`bbucli.infer.generation`) parsed by `parse_answer`; integer boxes
  of `model_wh` scaled per axis to `image_wh`; score = mean token log-probability of the object's
  `{...}` item (`bbucli.infer.answers`). An answer that is not one complete valid list
  is flagged `unparseable`; the valid objects before the problem are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from bbucli.chat.processor import ChatProcessorOutput
from bbucli.chat.prompts import Prompts
from bbucli.data.collators import StandardDataCollator
from bbucli.errors import ModelError, UsageError
from bbucli.evaluation.types import Detections
from bbucli.infer.answers import detections_from_answer
from bbucli.infer.generation import generate_answers
from bbucli.infer.postprocess import HeadDecoder
from bbucli.infer.prompting import (
    ImageInput,
    PreparedImage,
    PromptBuilder,
    TeachersInput,
    teacher_samples,
    teachers_per_image,
)
from bbucli.schema import Episode, Progress, Sample

if TYPE_CHECKING:
    from bbucli.chat.loading import VLProcessor
    from bbucli.model.bbu_model import BBUModel

Source = Literal["head", "lm"]
SOURCES: tuple[str, ...] = ("head", "lm")
DEFAULT_TOP_K = 100
DEFAULT_MAX_NEW_TOKENS = 1024


@dataclass(frozen=True, eq=False)
class Prediction:
    """One image's result. detections: what scoring reads; answer: the generated text (lm) or None;
    parse_error: why the answer is flagged unparseable, else None; prompt_tokens: prompt length;
    teachers: teacher episodes prepended; model_wh: the size the model saw."""

    detections: Detections
    answer: str | None
    parse_error: str | None
    prompt_tokens: int
    teachers: int
    model_wh: tuple[int, int]


class Inference:
    """A `BBUModel` + its processor + the training prompts, ready to predict (module doc).

    batch_size: images per forward / generate call (left-padded batches); max_tokens: the
    episode token budget under which teachers are dropped as in training (None: keep all);
    teachers: the teacher Samples every image gets when `predict` is given none (`teachers`);
    teacher_note: why there are none although the model may have been trained with some (an
    old checkpoint), for the caller to show once; None otherwise.
    """

    def __init__(
        self,
        model: BBUModel,
        processor: VLProcessor,
        prompts: Prompts,
        *,
        batch_size: int = 4,
        device: str | torch.device | None = None,
        max_tokens: int | None = None,
        class_descs: Sequence[str] | None = None,
        hypotheses: int = 1,
        teachers: Sequence[Sample] = (),
        teacher_note: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if hypotheses < 1:
            raise UsageError(f"hypotheses must be >= 1, got {hypotheses}")
        self.model = model.eval()
        self.processor = processor
        self.prompts = prompts
        self.batch_size = batch_size
        self.teachers = teacher_samples(teachers)
        self.teacher_note = teacher_note
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        if device is not None:
            self.model.to(self.device)
        tokenizer = processor.tokenizer
        self.tokenizer = tokenizer
        self.im_end_id = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        pad = tokenizer.pad_token_id
        self.pad_id = int(
            pad if pad is not None else tokenizer.convert_tokens_to_ids("<|endoftext|>")
        )
        self.collate = StandardDataCollator(self.pad_id, padding_side="left")
        self.prompt_builder = PromptBuilder(processor, prompts, max_tokens)
        self.decode_head = HeadDecoder(model, tokenizer, class_descs, hypotheses)

    @property
    def class_descs(self) -> tuple[str, ...]:
        """The class descs the head labels its queries with (empty: greedy captions)."""
        return self.decode_head.class_descs

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 4,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        hypotheses: int = 1,
        teachers: int | None = None,
    ) -> Inference:
        """Load a `bbu train` checkpoint folder (`bbucli.model.checkpoint`) with its training
        prompts, token budget and teachers (`of_checkpoint`); device default: CUDA when
        available, else CPU."""
        from bbucli.model.checkpoint import load_checkpoint

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        checkpoint = load_checkpoint(
            path, device=device, dtype=dtype, attn_implementation=attn_implementation
        )
        return cls.of_checkpoint(
            checkpoint,
            device=device,
            batch_size=batch_size,
            hypotheses=hypotheses,
            teachers=teachers,
        )

    @classmethod
    def of_checkpoint(
        cls,
        checkpoint: Any,
        *,
        device: str | torch.device,
        batch_size: int = 4,
        hypotheses: int = 1,
        teachers: int | None = None,
    ) -> Inference:
        """An `Inference` over an already loaded `Checkpoint`, with its prompts, token budget,
        trained class descs and teachers: the first `teachers` the checkpoint stores (None: all
        of them; 0: none). UsageError when it stores fewer than asked."""
        chosen, note = default_teachers(checkpoint, teachers)
        return cls(
            checkpoint.model,
            checkpoint.processor,
            checkpoint.prompts(),
            batch_size=batch_size,
            device=device,
            max_tokens=checkpoint.max_tokens,
            class_descs=checkpoint.class_descs(),
            hypotheses=hypotheses,
            teachers=chosen,
            teacher_note=note,
        )

    # ---- public ------------------------------------------------------------------------------

    def predict_detection(
        self,
        images: Sequence[ImageInput],
        prompt: str | Prompts | None = None,
        teachers: TeachersInput | Sequence[TeachersInput] = None,
        *,
        source: Source = "head",
        score_threshold: float | None = None,
        top_k: int | None = DEFAULT_TOP_K,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        keys: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> list[Detections]:
        """Detections per image, boxes xyxy in the original (EXIF-upright) image's pixels.

        images: file paths, PIL images or Episodes (their student image, with their teachers).
        prompt: the instruction of each user turn (a str) or
        both texts (`Prompts`); None: the training prompts. teachers: episodes shown first, as in
        training: an `Episode` (its teachers) or a list of `Sample`s for every image, or one such
        entry per image; relative image paths resolve against the working directory. None:
        `self.teachers` (the checkpoint's) for every image but an Episode, which brings its own;
        `[]`: none.
        keys: `Detections.image` of each image (default: the path as given, `image_<i>` for PIL).
        progress: called as ("predict", images done, images) after each batch.
        """
        found = self.predict(
            images,
            prompt,
            teachers,
            sources=(source,),
            score_threshold=score_threshold,
            top_k=top_k,
            max_new_tokens=max_new_tokens,
            keys=keys,
            progress=progress,
        )
        return [p.detections for p in found[source]]

    def predict(
        self,
        images: Sequence[ImageInput],
        prompt: str | Prompts | None = None,
        teachers: TeachersInput | Sequence[TeachersInput] = None,
        *,
        sources: Sequence[Source] = ("head",),
        score_threshold: float | None = None,
        top_k: int | None = DEFAULT_TOP_K,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        keys: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> dict[str, list[Prediction]]:
        """`predict_detection` for several sources over one preparation of each image:
        {source: one Prediction per image}, with the generated text and parse problems (lm)."""
        bad = [s for s in sources if s not in SOURCES]
        if bad or not sources:
            raise UsageError(f"source must be one of {', '.join(SOURCES)}, got {list(sources)!r}")
        if top_k is not None and top_k < 1:
            raise UsageError(f"top_k must be >= 1 or None, got {top_k}")
        if keys is not None and len(keys) != len(images):
            raise UsageError(f"{len(keys)} keys for {len(images)} images")
        if teachers is None:
            per_image = [() if isinstance(i, Episode) else self.teachers for i in images]
        else:
            per_image = teachers_per_image(teachers, len(images))
        results: dict[str, list[Prediction]] = {s: [] for s in sources}
        for start in range(0, len(images), self.batch_size):
            stop = min(start + self.batch_size, len(images))
            prepared = [
                self.prompt_builder.prepare(
                    images[i], per_image[i], prompt=prompt, key=keys[i] if keys else None, index=i
                )
                for i in range(start, stop)
            ]
            batch = self._to_device(self.collate([p.sample for p in prepared]))
            if "head" in results:
                results["head"] += self._head(batch, prepared, score_threshold, top_k)
            if "lm" in results:
                results["lm"] += self._lm(batch, prepared, score_threshold, top_k, max_new_tokens)
            if progress is not None:
                progress("predict", stop, len(images))
        return results

    def prepare(
        self, image: ImageInput, prompt: str | Prompts | None = None, teachers: TeachersInput = None
    ) -> ChatProcessorOutput:
        """The prompt tensors of one image (what the model reads; ends at the generation header);
        teachers None: as in `predict`."""
        if teachers is None:
            chosen = () if isinstance(image, Episode) else self.teachers
        else:
            chosen = teacher_samples(teachers)
        prepared = self.prompt_builder.prepare(image, chosen, prompt=prompt)
        return prepared.sample

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }

    # ---- the two sources ------------------------------------------------------------------------

    @torch.inference_mode()
    def _head(
        self,
        batch: dict[str, Any],
        prepared: list[PreparedImage],
        threshold: float | None,
        top_k: int | None,
    ) -> list[Prediction]:
        out = self.model(batch).head
        if out is None or out.pred_logits.shape[0] != len(prepared):
            raise ModelError("the detection head saw no student image")  # every prompt has one
        keys, whs = [p.key for p in prepared], [p.image_wh for p in prepared]
        found = self.decode_head(out, keys, whs, threshold, top_k)
        return [
            Prediction(dets, None, None, p.sample.length, p.teachers, p.model_wh)
            for p, dets in zip(prepared, found, strict=True)
        ]

    def _lm(
        self,
        batch: dict[str, Any],
        prepared: list[PreparedImage],
        threshold: float | None,
        top_k: int | None,
        max_new_tokens: int,
    ) -> list[Prediction]:
        answers = generate_answers(
            self.model.qwen,
            batch,
            eos_token_id=self.im_end_id,
            pad_token_id=self.pad_id,
            max_new_tokens=max_new_tokens,
        )
        predictions = []
        for p, answer in zip(prepared, answers, strict=True):
            dets, text, error = detections_from_answer(
                self.tokenizer,
                answer,
                p.key,
                p.image_wh,
                p.model_wh,
                score_threshold=threshold,
                top_k=top_k,
            )
            predictions.append(
                Prediction(dets, text, error, p.sample.length, p.teachers, p.model_wh)
            )
        return predictions


def default_teachers(checkpoint: Any, k: int | None) -> tuple[tuple[Sample, ...], str | None]:
    """`pick_teachers` of a loaded `Checkpoint`."""
    return pick_teachers(
        checkpoint.teachers, k, checkpoint.path, checkpoint.trained_with.num_teachers
    )


def pick_teachers(
    stored: Sequence[Sample] | None, k: int | None, where: Path, trained: int | None = None
) -> tuple[tuple[Sample, ...], str | None]:
    """(the first `k` of the teachers a checkpoint stores (None: all), a note when it stores none
    (`stored` None: saved before bbu kept them) although it may have been trained with some
    (`trained`: its `num_teachers`)). UsageError when `k` is more than it stores."""
    n = len(stored or ())
    if k is not None and not 0 <= k <= n:
        raise UsageError(
            f"--teachers {k}: checkpoint {where} stores {n} teacher example(s)",
            hint=f"ask for 0..{n} (0: none); `bbu eval --teacher-source episodes` takes the "
            "teachers each JSONL episode lists",
        )
    if stored is None:
        note = None
        if k is None and trained != 0:
            note = (
                f"checkpoint {where} carries no teacher examples (saved before bbu kept them): "
                "predicting without teachers, a prompt shape training may not have used"
            )
        return (), note
    return tuple(stored[:k] if k is not None else stored), None
