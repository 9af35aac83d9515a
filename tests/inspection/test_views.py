"""One episode in detail, its tensors after each stage, its token stream, a string's ids."""

from __future__ import annotations

import json

import pytest
import torch

from bbucli.errors import DataError, UsageError
from bbucli.inspection.episode import describe, episode_detail, process_record
from bbucli.inspection.source import InspectOptions, chat_processor, read_record
from bbucli.inspection.tensors import tensors_view
from bbucli.inspection.tokens import text_tokens, token_stream
from bbucli.schema import read_episodes


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_detail_splits_the_processed_sample_by_turn(converted, records):
    record = process_record(converted, 1)
    detail = describe(record)
    out = record.output
    assert (detail.index, detail.line, detail.tokens) == (1, 2, out.length)
    assert [t.role for t in detail.turns] == ["system", "teacher 1", "student"]
    assert sum(t.tokens for t in detail.turns) == out.length
    assert detail.vision_tokens == int(out.mm_token_type_ids.sum())
    assert detail.answer_tokens == int((out.segment > 0).sum())
    teacher, student = detail.turns[1:]
    assert teacher.image == records[1]["teachers"][0]["images"][0]
    assert student.image == records[1]["student"]["images"][0]
    assert student.objects == len(records[1]["student"]["objects"])
    for turn, thw in zip(detail.turns[1:], out.image_grid_thw.tolist(), strict=True):
        assert list(turn.grid_thw) == thw
        assert turn.vision_tokens == thw[0] * thw[1] * thw[2] // 4
        assert turn.model_wh == (thw[2] * 14, thw[1] * 14) == turn.stored_wh
    assert (teacher.answer_segment, student.answer_segment) == (1, 2)
    assert student.answer_tokens == int((out.segment == 2).sum())
    assert detail.prompt_end == out.prompt_end and not detail.skipped
    assert detail.episode_id == records[1]["meta"]["id"]
    json.dumps(detail.to_dict())


def test_detail_of_an_episode_the_budget_changes(make_bad):
    path, _ = make_bad("bad_detail.jsonl")
    # Record 4 (line 6): the student alone is over budget; record 5 (line 7) loses its teacher.
    skipped = episode_detail(path, 4)
    assert skipped.skipped and skipped.line == 6 and skipped.tokens > 4096
    dropped = episode_detail(path, 5)
    assert dropped.teachers_dropped == 1 and [t.role for t in dropped.turns] == [
        "system",
        "student",
    ]
    with pytest.raises(DataError, match=r"bad_detail.jsonl:2: invalid JSON"):
        episode_detail(path, 1)
    with pytest.raises(DataError, match=r"bad_detail.jsonl:4: image not found"):
        episode_detail(path, 3)
    with pytest.raises(DataError, match="no index 7"):
        read_record(path, 7)
    with pytest.raises(UsageError):
        read_record(path, -1)


def test_tensors_after_each_stage(converted):
    view = tensors_view(converted, 2, InspectOptions(batch_size=3))
    assert view.lines == (3, 4, 5) and view.left_out == ()
    stages = {s.stage.split(" ")[0]: {t.name: t for t in s.tensors} for s in view.stages}
    single, standard, packed = (
        stages["ChatProcessor"],
        stages["StandardDataCollator"],
        stages["PackedDataCollator"],
    )
    chat = chat_processor(InspectOptions(), source=converted)
    lengths = [
        len(chat.process_sample(e, converted.parent).input_ids) for e in _episodes(converted, 2, 3)
    ]
    assert single["input_ids"].shape == (lengths[0],) and single["input_ids"].dtype == "torch.int64"
    assert single["position_ids"].shape == (3, lengths[0])
    assert single["pixel_values"].shape[1] == 1176 and single["segment"].dtype == "torch.int8"
    assert standard["input_ids"].shape == (3, max(lengths))
    assert standard["position_ids"].shape == (3, 3, max(lengths))
    assert standard["attention_mask"].shape == (3, max(lengths))
    assert packed["input_ids"].shape == (1, sum(lengths))
    assert packed["position_ids"].shape == (4, 1, sum(lengths))
    cu = packed["cu_seqlens"]
    assert cu.shape == (4,) and cu.dtype == "torch.int32"
    assert cu.value == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    assert "attention_mask" not in packed and packed["use_cache"].value is False
    assert packed["gt_boxes"].note.startswith("3: ")
    json.dumps(view.to_dict())


def _episodes(path, start, count):
    return read_episodes(path)[start : start + count]


def test_tensors_batch_leaves_out_bad_records(make_bad):
    path, _ = make_bad("bad_tensors.jsonl")
    view = tensors_view(path, 0, InspectOptions(batch_size=3))
    assert view.lines == (1, 7, 8)
    assert [why.split(": ")[0].rsplit(":", 1)[1] for why in view.left_out] == ["2", "3", "4", "6"]


def test_token_stream_covers_every_token_with_its_segment(converted):
    record = process_record(converted, 0)
    stream = token_stream(converted, 0)
    out = record.output
    assert sum(p.tokens for p in stream.pieces) == stream.tokens == out.length
    ids = [i for p in stream.pieces for i in p.ids * p.repeat]
    assert ids == out.input_ids.tolist()
    segments = [p.segment for p in stream.pieces for _ in range(p.tokens)]
    assert segments == out.segment.tolist()
    pads = [p for p in stream.pieces if p.text == "<|image_pad|>"]
    assert [p.repeat for p in pads] == [int(t.prod()) // 4 for t in out.image_grid_thw]
    student = "".join(p.text for p in stream.pieces if p.segment == 2)
    assert student.startswith('[{"bbox_2d": [') and student.endswith("]<|im_end|>")
    assert "\ufffd" not in "".join(p.text for p in stream.pieces)  # CJK bytes joined


def test_text_ids():
    assert text_tokens("Hello world").ids == (9707, 1879)
    view = text_tokens("<|vision_start|><|image_pad|><|vision_end|>Hello world 螺丝")
    assert view.ids[:5] == (151652, 151655, 151653, 9707, 1879)
    assert [p.text for p in view.pieces][:5] == [
        "<|vision_start|>",
        "<|image_pad|>",
        "<|vision_end|>",
        "Hello",
        " world",
    ]
    assert "".join(p.text for p in view.pieces) == view.text
