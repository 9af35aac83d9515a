"""Inference from an untrained checkpoint on raw-size photos of examples/raw (one EXIF-rotated):
boxes in the upright original frame, the head's count rules, the training smart_resize, teachers
prepended as in training, lm answers with their log-probabilities, and answer parsing/scoring
checked by hand on known answers."""

from __future__ import annotations

import tempfile
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from bbucli.chat.answer import render_answer
from bbucli.chat.loading import load_processor
from bbucli.chat.prompts import Prompts
from bbucli.errors import UsageError
from bbucli.geometry import resized_wh
from bbucli.infer.answers import (
    GeneratedAnswer,
    detections_from_answer,
    item_spans,
    token_char_spans,
)
from bbucli.infer.generation import generate_answers
from bbucli.infer.inference import Inference
from bbucli.infer.prompting import PromptBuilder, teacher_samples
from bbucli.loss.multitask import build_caption_vocab, caption_token_ids
from bbucli.model.bbu_model import BBUModel
from bbucli.model.caption_vocab import PAD
from bbucli.model.checkpoint import save_checkpoint
from bbucli.model.loading import load_model
from bbucli.schema import DetObject, Episode, Sample

RAW = Path(__file__).resolve().parents[2] / "examples" / "raw"
UPRIGHT = RAW / "QC-20230221-0002857_21408.jpeg"  # 1440x1920, no EXIF orientation
ROTATED = RAW / "QC-20230223-0002865_21610.jpeg"  # stored 1920x1440, EXIF 6: upright 1440x1920
DESCS = ("screw/install/ok", "label/sticker/mismatch", "挡风板/安装")
MAX_PIXELS = 48 * 28 * 28
MAX_QUERIES = 30


@pytest.fixture(autouse=True)
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(inference):
    return inference.tokenizer


@pytest.fixture(scope="module")
def inference(tmp_path_factory) -> Inference:
    processor = load_processor("tiny", max_pixels=MAX_PIXELS)
    torch.manual_seed(0)
    vocab = build_caption_vocab(processor.tokenizer, DESCS)
    model = BBUModel.from_qwen(
        load_model("tiny"),
        caption_vocab=vocab,
        width=64,
        layers=2,
        heads=4,
        ffn=128,
        caption_max_len=8,
        max_queries=MAX_QUERIES,
    )
    # Short prompts keep the CPU forward cheap; the prompts a checkpoint carries are used as saved.
    prompts = Prompts(system="Find every object.", instruction="Detect.")
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", model, processor, prompts=prompts)
    return Inference.from_checkpoint(path, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Sample:
    """A small teacher image with one object, at a path relative to nothing (absolute)."""
    folder = tmp_path_factory.mktemp("teacher")
    pixels = np.random.default_rng(0).integers(0, 256, (140, 112, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "t.png")
    return Sample((str(folder / "t.png"),), (DetObject((10, 20, 60, 90), DESCS[0]),))


def inside(boxes: np.ndarray, wh: tuple[float, float]) -> bool:
    return bool(((boxes >= 0) & (boxes <= np.array([wh[0], wh[1], wh[0], wh[1]]))).all())


def test_head_boxes_are_in_the_upright_original_frame(inference):
    dets = inference.predict_detection([UPRIGHT, ROTATED], top_k=None)
    for d, image in zip(dets, (UPRIGHT, ROTATED), strict=True):
        assert d.image == str(image) and d.source == "head" and not d.unparseable
        assert d.image_wh == (1440.0, 1920.0)  # the rotated file is 1920x1440 on disk
        assert inside(d.boxes_px, d.image_wh)
        assert ((d.boxes_px[:, 2] > d.boxes_px[:, 0]) & (d.boxes_px[:, 3] > d.boxes_px[:, 1])).all()
        # every real query, capped by max_queries; scores sorted, objectness probabilities
        model_wh = resized_wh((1440, 1920), 3136, MAX_PIXELS)
        assert len(d) == min((model_wh[0] // 28) * (model_wh[1] // 28), MAX_QUERIES)
        assert (np.diff(d.scores) <= 0).all() and ((d.scores > 0) & (d.scores < 1)).all()
        assert all(isinstance(desc, str) and desc for desc in d.descs)


def test_top_k_and_threshold(inference):
    [all_boxes] = inference.predict_detection([UPRIGHT], top_k=None)
    [five] = inference.predict_detection([UPRIGHT], top_k=5)
    assert len(five) == 5 and np.allclose(five.scores, all_boxes.scores[:5])
    cut = float(np.median(all_boxes.scores))
    [kept] = inference.predict_detection([UPRIGHT], top_k=None, score_threshold=cut)
    assert len(kept) == int((all_boxes.scores >= cut).sum()) and (kept.scores >= cut).all()
    [none] = inference.predict_detection([UPRIGHT], score_threshold=1.01)
    assert len(none) == 0 and none.boxes_px.shape == (0, 4)


def test_head_classes_come_from_the_caption_likelihood_of_each_class(inference):
    """Each query's class probabilities are the softmax of the caption decoder's log-likelihood
    of every class desc, recomputed here query by query; score = objectness x p(class)."""
    model, vocab = inference.model, inference.model.caption_vocab
    every, best = (
        Inference(
            model,
            inference.processor,
            inference.prompts,
            device="cpu",
            class_descs=[*DESCS, "未知类别"],
            hypotheses=h,
        )
        for h in (3, 1)
    )
    assert every.class_descs == DESCS  # a desc the caption vocabulary cannot spell is left out
    batch = inference.collate([inference.prepare(UPRIGHT)])
    with torch.no_grad():
        head = model(batch).head
        n = int(head.query_mask[0].sum())
        targets = vocab.targets([caption_token_ids(inference.tokenizer, d) for d in DESCS], 8)
        likelihood = torch.zeros(n, len(DESCS))
        for q in range(n):
            for c in range(len(DESCS)):
                logits = model.head.caption_logits(head.hidden[0, q][None], targets[c][None])[0]
                likelihood[q, c] = -F.cross_entropy(logits, targets[c], ignore_index=PAD, reduction="sum")
        p_class = likelihood.softmax(-1)
        objectness = torch.sigmoid(head.pred_logits[0, :n])
    [dets] = every.predict_detection([UPRIGHT], top_k=None)
    expected = (objectness[:, None] * p_class).flatten().sort(descending=True).values
    assert len(dets) == 3 * n and np.allclose(dets.scores, expected.numpy(), atol=1e-6)
    assert sorted(dets.descs) == sorted(DESCS * n)
    [one] = best.predict_detection([UPRIGHT], top_k=None)
    top, which = p_class.max(-1)
    order = (objectness * top).argsort(descending=True)
    assert np.allclose(one.scores, (objectness * top)[order].numpy(), atol=1e-6)
    assert list(one.descs) == [DESCS[int(c)] for c in which[order]]
    # Without known classes the head falls back to greedy captions scored by objectness.
    [greedy] = Inference(model, inference.processor, inference.prompts, device="cpu").predict_detection([UPRIGHT], top_k=None)
    assert np.allclose(greedy.scores, objectness.sort(descending=True).values.numpy(), atol=1e-6)


def test_a_pil_image_gives_what_its_file_gives(inference):
    with Image.open(ROTATED) as opened:
        opened.load()
        [from_pil] = inference.predict_detection([opened], top_k=10)
    [from_file] = inference.predict_detection([ROTATED], top_k=10)
    assert from_pil.image == "image_0" and from_pil.image_wh == from_file.image_wh
    assert np.allclose(from_pil.boxes_px, from_file.boxes_px, atol=1e-3)
    assert np.allclose(from_pil.scores, from_file.scores, atol=1e-5)


def test_in_memory_images_write_no_scratch_files(inference, tmp_path, monkeypatch):
    # No temporary folder can be made: a scratch file would fail; the pixels stay in memory.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "absent"))
    with Image.open(ROTATED) as opened:
        opened.load()
        [found] = inference.predict([opened], top_k=3)["head"]
    assert found.detections.image == "image_0" and len(found.detections) <= 3
    assert not (tmp_path / "absent").exists()


def test_an_episode_image_brings_its_teachers(inference, teacher):
    episode = Episode(student=Sample((str(UPRIGHT),), ()), teachers=(teacher,))
    [from_episode] = inference.predict([episode], top_k=5)["head"]
    [from_path] = inference.predict([UPRIGHT], teachers=[teacher], top_k=5)["head"]
    assert from_episode.detections.image == str(UPRIGHT) and from_episode.teachers == 1
    assert from_episode.prompt_tokens == from_path.prompt_tokens
    assert np.allclose(from_episode.detections.boxes_px, from_path.detections.boxes_px, atol=1e-3)
    with pytest.raises(UsageError, match="own teachers"):
        inference.predict([episode], teachers=[teacher])


def test_the_image_takes_the_training_smart_resize(inference):
    sample = inference.prepare(ROTATED)
    processor = inference.processor
    assert sample.student_wh == resized_wh((1440, 1920), processor.min_pixels, processor.max_pixels)
    w, h = sample.student_wh
    assert int((sample.input_ids == processor.image_token_id).sum()) == (w // 28) * (h // 28)
    tail = inference.tokenizer.decode(sample.input_ids[-5:])
    assert tail.endswith("<|im_end|>\n<|im_start|>assistant\n") and sample.prompt_end == sample.length


def test_teachers_are_prepended_as_in_training(inference, teacher):
    alone = inference.prepare(UPRIGHT)
    taught = inference.prepare(UPRIGHT, teachers=[teacher])
    processor, tok = inference.processor, inference.tokenizer
    # The teacher image is 112x140: smart_resize to 112x140 (a fixed point), 4 x 5 = 20 vision tokens.
    pads = lambda s: int((s.input_ids == processor.image_token_id).sum())  # noqa: E731
    assert pads(taught) == pads(alone) + 20
    answer = tok(render_answer(teacher.objects), add_special_tokens=False)["input_ids"]
    turn = tok("<|im_start|>user\n<|vision_start|>", add_special_tokens=False)["input_ids"]
    # system prompt, then the teacher's user turn + answer, then the very same student turn
    n_system = alone.length - len(alone.input_ids[len(_prefix(alone, turn)) :])
    assert torch.equal(taught.input_ids[:n_system], alone.input_ids[:n_system])
    assert torch.equal(taught.input_ids[-(alone.length - n_system) :], alone.input_ids[n_system:])
    extra = taught.input_ids[n_system : taught.length - (alone.length - n_system)].tolist()
    assert _contains(extra, answer)
    assert taught.length - alone.length == len(extra)
    # an Episode works too, and per-image teacher lists go with their images
    episode = Episode(student=Sample(("ignored.png",)), teachers=(teacher,))
    assert torch.equal(inference.prepare(UPRIGHT, teachers=episode).input_ids, taught.input_ids)
    preds = inference.predict([UPRIGHT, UPRIGHT], teachers=[[teacher], None], top_k=3)["head"]
    assert (preds[0].teachers, preds[1].teachers) == (1, 0)
    assert preds[0].prompt_tokens == taught.length and preds[1].prompt_tokens == alone.length


def test_the_token_budget_drops_teachers_as_in_training(inference, teacher):
    alone = inference.prepare(UPRIGHT).length
    taught = inference.prepare(UPRIGHT, teachers=[teacher]).length
    # The budget counts the prompt plus the student's empty answer "[]" and its <|im_end|>.
    for budget, kept, length in ((taught + 5, 1, taught), (alone + 5, 0, alone), (10, 0, alone)):
        builder = PromptBuilder(inference.processor, inference.prompts, max_tokens=budget)
        prepared = builder.prepare(UPRIGHT, teacher_samples([teacher]))
        assert (prepared.teachers, prepared.sample.length) == (kept, length), budget


def _prefix(sample, turn: list[int]) -> list[int]:
    """The tokens before the student's `<|im_start|>user\\n<|vision_start|>` (the last one)."""
    ids = sample.input_ids.tolist()
    starts = [i for i in range(len(ids) - len(turn) + 1) if ids[i : i + len(turn)] == turn]
    return ids[: starts[-1]]


def _contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i : i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def test_lm_source_runs_and_reports_unparseable_answers(inference):
    found = inference.predict([UPRIGHT, ROTATED], sources=("head", "lm"), max_new_tokens=6, top_k=3)
    assert len(found["head"]) == len(found["lm"]) == 2
    for p in found["lm"]:
        d = p.detections
        assert d.source == "lm" and d.image_wh == (1440.0, 1920.0) and inside(d.boxes_px, d.image_wh)
        assert isinstance(p.answer, str) and np.isfinite(d.scores).all()
        assert d.unparseable == (p.parse_error is not None and not p.parse_error.startswith("the answer did not end"))


def test_greedy_logprobs_match_a_forward_and_left_padding(inference, teacher):
    """The recorded log-probabilities are those of the generated tokens under a plain forward, and
    a left-padded batch generates what each prompt generates alone."""
    samples = [inference.prepare(UPRIGHT), inference.prepare(UPRIGHT, teachers=[teacher])]
    qwen = inference.model.qwen
    pad, eos = inference.pad_id, inference.im_end_id
    batch = inference.collate(samples)
    together = generate_answers(qwen, batch, eos_token_id=eos, pad_token_id=pad, max_new_tokens=5)
    for sample, answer in zip(samples, together, strict=True):
        [alone] = generate_answers(qwen, inference.collate([sample]), eos_token_id=eos, pad_token_id=pad, max_new_tokens=5)
        assert alone.token_ids == answer.token_ids
        assert np.allclose(alone.logprobs, answer.logprobs, atol=1e-4)
        single = inference.collate([sample])
        ids = torch.cat([single["input_ids"], torch.tensor([answer.token_ids])], dim=1)
        with torch.no_grad():
            logits = qwen(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pixel_values=single["pixel_values"],
                image_grid_thw=single["image_grid_thw"],
                mm_token_type_ids=(ids == 151655).int(),
                use_cache=False,
            ).logits[0]
        n = len(answer.token_ids)
        logp = torch.log_softmax(logits[-n - 1 : -1].float(), dim=-1)
        expected = logp[torch.arange(n), torch.tensor(answer.token_ids)]
        assert np.allclose(answer.logprobs, expected.numpy(), atol=1e-4)


# ---- answers parsed and scored by hand -----------------------------------------------------------


def answer_of(tokenizer, text: str, logprob=lambda k: -0.1 * (k + 1), stopped: bool = True) -> GeneratedAnswer:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return GeneratedAnswer(tuple(ids), tuple(logprob(k) for k in range(len(ids))), stopped)


def test_token_spans_cover_the_decoded_text(tokenizer):
    text = render_answer([DetObject((1, 2, 30, 40), "挡风板/安装"), DetObject((5, 6, 7, 8), "screw/install/ok")])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    decoded, spans = token_char_spans(tokenizer, ids)
    assert decoded == tokenizer.decode(ids, skip_special_tokens=False) == text + "<|im_end|>"
    assert len(spans) == len(ids) and spans[0][0] == 0 and spans[-1][1] == len(decoded)
    assert all(e > s for s, e in spans) and all(b[0] <= a[1] for a, b in pairwise(spans))
    assert item_spans(text) == [(1, text.index("}") + 1), (text.index("}") + 3, len(text) - 1)]


def test_answer_scores_are_the_mean_over_each_objects_tokens(tokenizer):
    objects = [DetObject((10, 20, 30, 40), "挡风板/安装"), DetObject((50, 60, 70, 80), "screw/install/ok")]
    text = render_answer(objects)
    answer = answer_of(tokenizer, text)
    dets, decoded, error = detections_from_answer(tokenizer, answer, "a.jpg", (200, 400), (100, 100))
    assert decoded == text and error is None and not dets.unparseable and dets.source == "lm"
    # boxes: model frame 100x100 -> original 200x400, per axis; earlier tokens score higher here
    assert dets.boxes_px.tolist() == [[20, 80, 60, 160], [100, 240, 140, 320]]
    assert dets.descs == ("挡风板/安装", "screw/install/ok") and dets.scores[0] > dets.scores[1]
    _, spans = token_char_spans(tokenizer, answer.token_ids)
    for desc, score in zip(dets.descs, dets.scores, strict=True):
        start = text.rfind("{", 0, text.index(desc))
        end = text.index("}", text.index(desc)) + 1
        tokens = [k for k, (s, e) in enumerate(spans) if s < end and e > start]
        assert score == pytest.approx(np.mean([answer.logprobs[k] for k in tokens]))
        # the span's tokens: from the one holding "{" to the one holding "}", nothing of the other item
        assert spans[tokens[0]][0] <= start < spans[tokens[0]][1] and spans[tokens[-1]][0] < end <= spans[tokens[-1]][1]
        assert "label" not in text[spans[tokens[0]][0] : start] and "bbox" not in text[end : spans[tokens[-1]][1]]


def test_truncated_clipped_and_bad_answers(tokenizer):
    full = render_answer([DetObject((10, 10, 50, 50), "a/b"), DetObject((90, 90, 150, 150), "c/d"), DetObject((1, 1, 9, 9), "e/f")])
    cut = full[: full.rindex("{") + 12]  # the third object is cut off by max_new_tokens
    dets, _, error = detections_from_answer(tokenizer, answer_of(tokenizer, cut, stopped=False), "x", (100, 100), (100, 100))
    assert dets.unparseable and "truncated" in error
    assert sorted(dets.descs) == ["a/b", "c/d"]
    assert dets.boxes_px[list(dets.descs).index("c/d")].tolist() == [90, 90, 100, 100]  # clipped to the frame
    outside = render_answer([DetObject((120, 120, 150, 150), "a/b")])
    dets, _, error = detections_from_answer(tokenizer, answer_of(tokenizer, outside), "x", (100, 100), (100, 100))
    assert len(dets) == 0 and not dets.unparseable and error is None
    dets, text, error = detections_from_answer(tokenizer, answer_of(tokenizer, "I see nothing."), "x", (100, 100), (100, 100))
    assert dets.unparseable and len(dets) == 0 and text == "I see nothing." and error == "no JSON list found"
    dets, _, error = detections_from_answer(tokenizer, answer_of(tokenizer, "[]"), "x", (100, 100), (100, 100))
    assert not dets.unparseable and len(dets) == 0 and error is None
    dets, _, error = detections_from_answer(tokenizer, answer_of(tokenizer, "[]", stopped=False), "x", (100, 100), (100, 100))
    assert not dets.unparseable and "max_new_tokens" in error


def test_upright_frame_of_an_exif_file_matches_pillow():
    with Image.open(ROTATED) as opened:
        assert opened.size == (1920, 1440)
        assert ImageOps.exif_transpose(opened).size == (1440, 1920)
