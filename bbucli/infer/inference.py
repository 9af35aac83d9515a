"""`Inference`: a trained checkpoint -> `Detections` per image, in the original image's pixels.

    inference = Inference.from_checkpoint("runs/tiny/checkpoint-100")
    [dets] = inference.predict_detection(["photo.jpeg"])                 # detection head
    [dets] = inference.predict_detection(["photo.jpeg"], source="lm")    # generated answer

Prompts are built exactly as in training (`bbucli.infer.prompting`: `ChatProcessor` on an
episode whose student is the image, cut at `prompt_end`), with the checkpoint's chat template,
pixel limits and training prompts; optional teacher episodes come first.

Frames: the model sees the resized image (`model_wh`); every returned box is xyxy in pixels of
the original image as it stands upright (EXIF orientation applied, `image_wh`), clipped to it.
- head: normalised cxcywh x `image_wh` (the resize is a per-axis scaling); padded queries
  (`query_mask` False) are skipped. With known classes (`class_descs`, from_checkpoint: the
  taxonomy's descs the caption vocabulary can spell) each query is labelled by the caption
  decoder's likelihood of every class desc (teacher-forced, softmax over the classes) and
  score = sigmoid(objectness) x p(class); a query yields its `hypotheses` best classes (DETR's
  top-k over query x class pairs; 1: one box per query). Without classes: desc = the greedy
  caption (compact vocabulary -> Qwen ids -> text), score = sigmoid(objectness). The top `top_k`
  by score are kept, then those >= `score_threshold`.
- lm: the greedy answer (`bbucli.infer.generation`) parsed by `parse_answer`; integer boxes
  of `model_wh` scaled per axis to `image_wh`; score = mean token log-probability of the object's
  `{...}` item (`bbucli.infer.answers`). An answer that is not one complete valid list
  is flagged `unparseable`; the valid objects before the problem are kept.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from bbucli.chat.processor import ChatProcessorOutput
from bbucli.chat.prompts import Prompts
from bbucli.data.collators import StandardDataCollator
from bbucli.errors import ModelError, UsageError
from bbucli.infer.answers import UNCAPTIONED, detections_from_answer
from bbucli.infer.generation import generate_answers
from bbucli.infer.prompting import (
    ImageInput,
    PreparedImage,
    PromptBuilder,
    TeachersInput,
    teacher_samples,
    teachers_per_image,
)
from bbucli.evaluation.types import Detections
from bbucli.geometry import denormalize_cxcywh
from bbucli.model.caption_vocab import PAD, UNK, CaptionVocab
from bbucli.loss.multitask import caption_token_ids

if TYPE_CHECKING:
    from bbucli.chat.loading import VLProcessor
    from bbucli.model.bbu_model import BBUModel
    from bbucli.model.head import HeadOutput

Source = Literal["head", "lm"]
SOURCES: tuple[str, ...] = ("head", "lm")
DEFAULT_TOP_K = 100
DEFAULT_MAX_NEW_TOKENS = 1024
#: progress(done, total): images finished so far.
Progress = Callable[[int, int], None]


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
    episode token budget under which teachers are dropped as in training (None: keep all).
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
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if hypotheses < 1:
            raise UsageError(f"hypotheses must be >= 1, got {hypotheses}")
        self.model = model.eval()
        self.processor = processor
        self.prompts = prompts
        self.batch_size = batch_size
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
        self.hypotheses = hypotheses
        self.class_descs: tuple[str, ...] = ()
        self._class_targets: torch.Tensor | None = None
        vocab = model.caption_vocab
        if class_descs and vocab is not None and model.head.caption_decoder is not None:
            # Only descs the vocabulary can spell: an unknown token is UNK, never generated.
            ids = {d: caption_token_ids(tokenizer, d) for d in dict.fromkeys(class_descs)}
            known = [d for d, t in ids.items() if UNK not in vocab.encode(t)]
            if known:
                self.class_descs = tuple(known)
                max_len = model.head.config.caption_max_len
                self._class_targets = vocab.targets([ids[d] for d in known], max_len)

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
    ) -> Inference:
        """Load a `bbu train` checkpoint folder (`bbucli.model.checkpoint`) with its training
        prompts and token budget; device default: CUDA when available, else CPU."""
        from bbucli.model.checkpoint import load_checkpoint

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        checkpoint = load_checkpoint(
            path, device=device, dtype=dtype, attn_implementation=attn_implementation
        )
        return cls(
            checkpoint.model,
            checkpoint.processor,
            checkpoint.prompts(),
            batch_size=batch_size,
            device=device,
            max_tokens=checkpoint.max_tokens,
            class_descs=checkpoint.class_descs(),
            hypotheses=hypotheses,
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

        images: file paths or PIL images. prompt: the instruction of each user turn (a str) or
        both texts (`Prompts`); None: the training prompts. teachers: episodes shown first, as in
        training: an `Episode` (its teachers) or a list of `Sample`s for every image, or one such
        entry per image; relative image paths resolve against the working directory.
        keys: `Detections.image` of each image (default: the path as given, `image_<i>` for PIL).
        """
        found = self.predict(images, prompt, teachers, sources=(source,), score_threshold=score_threshold,
                             top_k=top_k, max_new_tokens=max_new_tokens, keys=keys, progress=progress)  # fmt: skip
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
        per_image = teachers_per_image(teachers, len(images))
        results: dict[str, list[Prediction]] = {s: [] for s in sources}
        with tempfile.TemporaryDirectory(prefix="bbu-predict-") as scratch:
            for start in range(0, len(images), self.batch_size):
                stop = min(start + self.batch_size, len(images))
                prepared = [
                    self.prompt_builder.prepare(
                        images[i],
                        per_image[i],
                        prompt=prompt,
                        key=keys[i] if keys else None,
                        index=i,
                        scratch=Path(scratch),
                    )
                    for i in range(start, stop)
                ]
                batch = self._to_device(self.collate([p.sample for p in prepared]))
                if "head" in results:
                    results["head"] += self._head(batch, prepared, score_threshold, top_k)
                if "lm" in results:
                    results["lm"] += self._lm(
                        batch, prepared, score_threshold, top_k, max_new_tokens
                    )
                if progress is not None:
                    progress(stop, len(images))
        return results

    def prepare(
        self, image: ImageInput, prompt: str | Prompts | None = None, teachers: TeachersInput = None
    ) -> ChatProcessorOutput:
        """The prompt tensors of one image (what the model reads; ends at the generation header)."""
        with tempfile.TemporaryDirectory(prefix="bbu-predict-") as scratch:
            prepared = self.prompt_builder.prepare(
                image, teacher_samples(teachers), prompt=prompt, scratch=Path(scratch)
            )
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
        if self._class_targets is not None:
            chosen = self._class_pairs(out, threshold, top_k)
        else:
            chosen = self._greedy(out, threshold, top_k)
        predictions = []
        for row, (p, (keep, scores, descs)) in enumerate(zip(prepared, chosen, strict=True)):
            boxes = denormalize_cxcywh(out.pred_boxes[row, keep].float().cpu(), p.image_wh).numpy()
            scores = scores.cpu().numpy()
            valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            row_descs = [d for d, v in zip(descs, valid, strict=True) if v]
            dets = Detections(
                p.key,
                boxes[valid],
                tuple(row_descs),
                scores[valid],
                image_wh=p.image_wh,
                source="head",
            )
            predictions.append(
                Prediction(dets, None, None, p.sample.length, p.teachers, p.model_wh)
            )
        return predictions

    def _greedy(
        self, out: HeadOutput, threshold: float | None, top_k: int | None
    ) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """Per row: (kept queries, their objectness, their greedy captions), best first."""
        kept = []
        for row in range(out.hidden.shape[0]):
            n = int(out.query_mask[row].sum())  # valid queries come first
            scores = torch.sigmoid(out.pred_logits[row, :n].float())
            order = _best_first(scores, top_k, threshold)
            kept.append((order, scores[order]))
        descs = self._captions(out.hidden, [order for order, _ in kept])
        return [(order, scores, d) for (order, scores), d in zip(kept, descs, strict=True)]

    def _class_pairs(
        self, out: HeadOutput, threshold: float | None, top_k: int | None
    ) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """Per row: (query of each kept (query, class) pair, objectness x p(class), class desc),
        best first; each query gives its `hypotheses` most likely classes."""
        n_classes, per_query = len(self.class_descs), min(self.hypotheses, len(self.class_descs))
        class_targets = self._class_targets.to(out.hidden.device)
        chosen = []
        for row in range(out.hidden.shape[0]):
            n = int(out.query_mask[row].sum())  # valid queries come first
            hidden = out.hidden[row, :n].float().repeat_interleave(n_classes, 0)
            targets = class_targets.repeat(n, 1)  # (n * C, L)
            logits = self.model.head.caption_logits(hidden, targets).float()
            nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD, reduction="none")
            p_class = (-nll.sum(-1)).view(n, n_classes).softmax(-1)
            best, classes = p_class.topk(per_query, dim=-1)
            scores = (torch.sigmoid(out.pred_logits[row, :n].float())[:, None] * best).flatten()
            order = _best_first(scores, top_k, threshold)
            descs = [self.class_descs[int(c)] for c in classes.flatten()[order]]
            chosen.append((order // per_query, scores[order], descs))
        return chosen

    def _captions(self, hidden: torch.Tensor, keep_per_row: list[torch.Tensor]) -> list[list[str]]:
        """Greedy captions of the kept queries, decoded to text (UNCAPTIONED when empty or when
        the head has no caption decoder)."""
        vocab: CaptionVocab | None = self.model.caption_vocab
        counts = [len(k) for k in keep_per_row]
        if vocab is None or self.model.head.caption_decoder is None or not sum(counts):
            return [[UNCAPTIONED] * n for n in counts]
        chosen = torch.cat([hidden[row, keep] for row, keep in enumerate(keep_per_row)])
        compact = self.model.head.generate_captions(chosen.float()).cpu()
        texts = [
            self.tokenizer.decode(vocab.decode(row), skip_special_tokens=True).strip()
            for row in compact
        ]
        texts = [t or UNCAPTIONED for t in texts]
        out, at = [], 0
        for n in counts:
            out.append(texts[at : at + n])
            at += n
        return out

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


def _best_first(scores: torch.Tensor, top_k: int | None, threshold: float | None) -> torch.Tensor:
    """Indices of `scores` (1-D) from best to worst, at most top_k of them, none below threshold."""
    order = torch.argsort(scores, descending=True)
    if top_k is not None:
        order = order[:top_k]
    if threshold is not None:
        order = order[scores[order] >= threshold]
    return order
