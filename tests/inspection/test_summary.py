"""The whole-file summary against the ChatProcessor itself, and bad input reported by line."""

from __future__ import annotations

import json
import statistics
from collections import Counter

import pytest
import torch

from bbucli.inspection.source import InspectOptions, chat_processor
from bbucli.inspection.summary import Distribution, summarize
from bbucli.schema import read_episodes


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_counts_equal_the_processed_samples(converted):
    summary = summarize(converted)
    chat = chat_processor(InspectOptions(), source=converted)
    samples = [chat.process_sample(e, converted.parent) for e in read_episodes(converted)]
    lengths = [s.length for s in samples]
    # Counted from headers == len(input_ids) of the processed sample, episode by episode.
    assert [chat.measure(e, converted.parent).tokens for e in read_episodes(converted)] == lengths
    assert (summary.records, summary.episodes, summary.fitting) == (9, 9, 9)
    assert (summary.tokens.min, summary.tokens.max) == (min(lengths), max(lengths))
    assert summary.tokens.median == statistics.median(lengths)
    split = summary.token_split
    assert split.total == sum(lengths)
    assert split.vision == sum(int(s.mm_token_type_ids.sum()) for s in samples)
    assert split.answer == sum(int((s.segment > 0).sum()) for s in samples)
    assert split.text == split.total - split.vision - split.answer
    assert sum(summary.token_split.shares.values()) == pytest.approx(1.0)
    assert summary.vision_per_image.max == max(
        int(s.image_grid_thw.prod(-1).max()) // 4 for s in samples
    )


def test_dataset_counts_and_classes(converted, records):
    summary = summarize(converted)
    images = {s["images"][0] for r in records for s in [*r["teachers"], r["student"]]}
    students = Counter(o["desc"] for r in records for o in r["student"]["objects"])
    teachers = Counter(o["desc"] for r in records for t in r["teachers"] for o in t["objects"])
    assert summary.images == len(images) and summary.image_refs == 18
    assert summary.teachers == 9 and summary.images_resized == 0
    assert summary.student_objects == sum(students.values())
    assert summary.teacher_objects == sum(teachers.values())
    assert {c.desc: (c.student, c.teacher) for c in summary.classes} == {
        d: (students[d], teachers[d]) for d in students | teachers
    }
    assert [c.student for c in summary.classes] == sorted(
        (c.student for c in summary.classes), reverse=True
    )
    assert summary.problems == () and summary.over_budget == 0


def test_batching_is_over_the_fitting_lengths(converted):
    summary = summarize(converted, InspectOptions(batch_size=3, batch_tokens=6000))
    b = summary.batching
    assert (b.samples, b.batch_size, b.standard_batches, b.batch_tokens) == (9, 3, 3, 6000)
    assert 0 <= b.standard_pad_sorted <= b.standard_pad_file_order < 1
    assert b.packed_bins >= -(-summary.token_split.total // 6000)
    assert b.samples_per_bin == pytest.approx(9 / b.packed_bins)


def test_bad_lines_are_problems_and_the_rest_is_inspected(make_bad):
    path, kinds = make_bad()
    progress = []
    summary = summarize(path, progress=lambda *a: progress.append(a))
    assert {p.line: p.kind for p in summary.problems} == kinds
    messages = [str(p) for p in summary.problems]
    assert messages[0].startswith(f"{path}:2: invalid JSON")
    assert messages[1] == f"{path}:3: missing key 'student'"
    assert messages[2].startswith(f"{path}:4: image not found:") and "nowhere.jpeg" in messages[2]
    assert "even without teachers" in messages[3] and "skipped" in messages[3]
    assert "1 of 1 teacher(s) dropped" in messages[4]
    # Lines 1, 6, 7, 8 inspected; 6 is skipped by the budget, 7 loses its teacher.
    assert (summary.records, summary.episodes, summary.fitting) == (7, 4, 3)
    assert (summary.skipped, summary.teachers_dropped, summary.over_budget) == (1, 1, 2)
    assert progress[-1] == ("inspect", 7, 7)
    json.dumps(summary.to_dict())  # problems serialise too


def test_no_budget_counts_everything(make_bad):
    path, _ = make_bad("bad_nobudget.jsonl")
    summary = summarize(path, InspectOptions(max_tokens=None))
    assert [p.kind for p in summary.problems] == [
        "invalid_record",
        "invalid_record",
        "missing_image",
    ]
    assert summary.fitting == 4 and summary.over_budget == 0


def test_distribution_nearest_rank():
    d = Distribution.of(list(range(1, 101)))
    assert (d.min, d.median, d.p95, d.max, d.count) == (1, 50.5, 95, 100, 100)
    assert Distribution.of([7]).p95 == 7
    assert Distribution.of([]).count == 0
