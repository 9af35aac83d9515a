"""Shared by the BBUModel tests: the tiny Qwen2.5-VL, processed episodes (teachers, other pixels,
other answers), a text-only sample, the two collators and comparisons of head outputs.

The fixtures that build them (processor, root, chat, samples, model) are in conftest.py."""

from __future__ import annotations

from dataclasses import replace

import torch

from bbucli.chat.processor import ChatProcessorOutput
from bbucli.chat.rope import mrope_position_ids
from bbucli.data.collators import PackedDataCollator, StandardDataCollator
from bbucli.loss.multitask import build_caption_vocab
from bbucli.model.bbu_model import BBUModel
from bbucli.model.loading import load_model
from bbucli.schema import DetObject, Episode, Sample

PAD = 151643
DESCS = ("screw/install/ok", "label/sticker/mismatch")
HEAD = dict(width=64, layers=2, heads=4, ffn=128, caption_max_len=8)
SIZES = {
    "a.png": (56, 84),
    "a2.png": (56, 84),
    "b.png": (112, 56),
    "t.png": (84, 56),
    "t2.png": (84, 56),
}


def episode(student: str, teacher: str | None = None, boxes=((1, 2, 30, 40),)) -> Episode:
    objects = tuple(DetObject(b, DESCS[i % 2]) for i, b in enumerate(boxes))
    teachers = (
        () if teacher is None else (Sample((teacher,), (DetObject((2, 2, 20, 20), DESCS[1]),)),)
    )
    return Episode(student=Sample((student,), objects), teachers=teachers)


def text_only_sample(processor, question: str = "No image this time.") -> ChatProcessorOutput:
    """A 0-image conversation with one answer, built like ChatProcessor's output."""
    messages = [
        {"role": "system", "content": "Find objects."},
        {"role": "user", "content": question},
        {"role": "assistant", "content": "[]"},
    ]
    tok = processor.tokenizer
    prompt = tok(processor.apply_chat_template(messages[:2], add_generation_prompt=True))[
        "input_ids"
    ]
    ids = torch.tensor(tok(processor.apply_chat_template(messages))["input_ids"])
    segment = torch.zeros(len(ids), dtype=torch.int8)
    segment[len(prompt) : len(ids) - 1] = 2
    position_ids, delta = mrope_position_ids(ids, None, 2, processor.image_token_id)
    return ChatProcessorOutput(
        input_ids=ids,
        labels=torch.where(segment > 0, ids, -100),
        segment=segment,
        mm_token_type_ids=torch.zeros(len(ids), dtype=torch.int32),
        position_ids=position_ids,
        rope_delta=delta,
        pixel_values=torch.zeros(0, 1176),
        image_grid_thw=torch.zeros(0, 3, dtype=torch.long),
        gt_boxes=torch.zeros(0, 4),
        gt_descs=(),
        prompt_end=len(prompt),
        student_turn_start=int(torch.nonzero(ids == 151644)[1]),  # the user turn's <|im_start|>
        student_image_span=(len(prompt), len(prompt)),  # no image: empty
        student_wh=(0, 0),
    )


def with_new_answer(sample: ChatProcessorOutput) -> ChatProcessorOutput:
    """The same sample with every student-answer token (not its <|im_end|>) replaced."""
    ids = sample.input_ids.clone()
    answer = torch.nonzero(sample.segment == 2).flatten()[:-1]
    ids[answer] = (ids[answer] + 1000) % 150000
    return replace(sample, input_ids=ids, labels=torch.where(sample.segment > 0, ids, -100))


def build_model(processor, attn: str = "sdpa", **kwargs) -> BBUModel:
    qwen = load_model("tiny", seed=0, attn_implementation=attn)
    torch.manual_seed(0)
    vocab = build_caption_vocab(processor.tokenizer, DESCS)
    return BBUModel.from_qwen(qwen, caption_vocab=vocab, **HEAD, **kwargs).eval()


def run(model: BBUModel, batch: dict):
    with torch.no_grad():
        return model(batch)


def standard(*samples):
    return StandardDataCollator(PAD)(list(samples))


def packed(*samples):
    return PackedDataCollator()(list(samples))


def head_tensors(out, row: int) -> dict[str, torch.Tensor]:
    """Everything the head returns for one of its rows, padding queries dropped."""
    h = out.head
    n = int(h.query_mask[row].sum())
    tensors = {f"logits{k}": x[row, :n] for k, x in enumerate(h.logits)}
    tensors.update({f"boxes{k}": x[row, :n] for k, x in enumerate(h.boxes)})
    tensors["hidden"] = h.hidden[row, :n]
    tensors["token_logits"] = h.token_logits[row, : int(h.token_mask[row].sum())]
    return tensors


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def student_turn_positions(sample: ChatProcessorOutput, image_token_id: int) -> torch.Tensor:
    """The documented language memory, recomputed here: from the last <|im_start|> before the
    student's image up to prompt_end, without the student's image pads."""
    ids = sample.input_ids
    pads = torch.nonzero(ids == image_token_id).flatten()
    last_run_end = int(pads[-1]) + 1
    run_len = int(sample.image_grid_thw[-1].prod()) // 4
    run_start = last_run_end - run_len
    im_starts = torch.nonzero(ids[:run_start] == 151644).flatten()
    turn = int(im_starts[-1])
    return torch.cat((torch.arange(turn, run_start), torch.arange(last_run_end, sample.prompt_end)))
