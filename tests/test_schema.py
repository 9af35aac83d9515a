"""schema: episode parsing with file:line errors, canonical ordering, atomic writes."""

from __future__ import annotations

import json

import pytest

from bbucli.errors import SchemaError
from bbucli.schema import (
    DetObject,
    Episode,
    RecordError,
    Sample,
    episode_from_dict,
    iter_episodes,
    objects_outside,
    outside_image,
    read_episodes,
    sort_objects,
    write_jsonl_atomic,
)

GOOD = {
    "teachers": [{"images": ["images/a.jpeg"], "objects": [{"bbox_2d": [1, 2, 30, 40], "desc": "螺丝/安装/正确"}]}],
    "student": {"images": ["images/b.jpeg"], "objects": []},
    "meta": {"id": "b"},
}


def test_round_trip():
    ep = episode_from_dict(GOOD)
    assert ep.teachers[0].objects[0] == DetObject((1, 2, 30, 40), "螺丝/安装/正确")
    assert ep.student.image == "images/b.jpeg"
    assert ep.to_dict() == GOOD
    assert [s.image for s in ep.samples] == ["images/a.jpeg", "images/b.jpeg"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("student"), "missing key 'student'"),
        (lambda d: d.update(extra=1), "unknown keys"),
        (lambda d: d["student"].update(images=["a.jpg", "b.jpg"]), "exactly one image"),
        (lambda d: d["teachers"][0]["objects"][0].update(bbox_2d=[1.5, 2, 3, 4]), "integers"),
        (lambda d: d["teachers"][0]["objects"][0].update(bbox_2d=[10, 2, 3, 4]), "x2 > x1"),
        (lambda d: d["teachers"][0]["objects"][0].update(desc=""), "desc"),
        (lambda d: d.update(teachers={}), "teachers must be a list"),
    ],
)
def test_invalid_records_name_the_field(mutate, message):
    raw = json.loads(json.dumps(GOOD))
    mutate(raw)
    with pytest.raises(ValueError, match=message):
        episode_from_dict(raw)


def test_reader_reports_every_bad_line(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(GOOD), "{not json", "", json.dumps({"student": 3}), json.dumps(GOOD)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = list(iter_episodes(path))
    assert [n for n, _ in items] == [1, 2, 4, 5]
    errors = [x for _, x in items if isinstance(x, RecordError)]
    assert [e.line for e in errors] == [2, 4]
    assert str(errors[0]).startswith(f"{path}:2: invalid JSON")
    with pytest.raises(SchemaError) as info:
        read_episodes(path)
    assert "data.jsonl:2" in info.value.message and "data.jsonl:4" in info.value.message


def test_missing_file_is_a_schema_error(tmp_path):
    with pytest.raises(SchemaError, match="cannot open"):
        read_episodes(tmp_path / "nope.jsonl")


def test_non_utf8_and_deeply_nested_lines_are_record_errors(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(GOOD).encode(), b'{"student": "\xff\xfe caf\xe9"}', b"[" * 100_000]
    path.write_bytes(b"\n".join([*lines, json.dumps(GOOD).encode()]) + b"\n")
    items = list(iter_episodes(path))
    assert [n for n, _ in items] == [1, 2, 3, 4]
    assert isinstance(items[0][1], Episode) and isinstance(items[3][1], Episode)
    assert str(items[1][1]) == f"{path}:2: not UTF-8 text: byte 0xff at byte 14"
    assert str(items[2][1]).startswith(f"{path}:3: invalid JSON")
    with pytest.raises(SchemaError) as info:
        read_episodes(path)
    assert "2 malformed record(s)" in info.value.message
    assert "data.jsonl:2: not UTF-8" in info.value.message


def test_binary_file_is_not_a_jsonl(tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.jpeg"
    Image.new("RGB", (32, 24), "gray").save(photo)
    with pytest.raises(SchemaError, match=r"photo\.jpeg is not a JSONL file"):
        read_episodes(photo)


def test_boxes_may_end_on_the_image_edge_but_not_past_it():
    inside = DetObject((0, 0, 532, 728), "a")
    over = [DetObject((0, 0, 533, 10), "b"), DetObject((0, 0, 5000, 5000), "c")]
    assert objects_outside([inside, *over], 532, 728) == over
    message = outside_image("images/x.jpeg", 532, 728, over * 2)
    assert message == (
        "4 box(es) outside the 532x728 image images/x.jpeg: [0, 0, 533, 10] b; "
        "[0, 0, 5000, 5000] c; [0, 0, 533, 10] b and 1 more"
    )


def test_sort_objects_by_y_then_x():
    objs = [DetObject((50, 10, 60, 20), "b"), DetObject((5, 10, 9, 20), "a"), DetObject((0, 0, 5, 5), "c")]
    assert [o.desc for o in sort_objects(objs)] == ["c", "a", "b"]


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path):
    path = tmp_path / "out.jsonl"
    ep = Episode(student=Sample(images=("images/x.jpeg",)))
    assert write_jsonl_atomic(path, [ep, ep]) == 2
    before = path.read_bytes()

    def broken():
        yield ep
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl_atomic(path, broken())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_writes_are_deterministic_utf8(tmp_path):
    ep = episode_from_dict(GOOD)
    write_jsonl_atomic(tmp_path / "a.jsonl", [ep])
    write_jsonl_atomic(tmp_path / "b.jsonl", [ep])
    data = (tmp_path / "a.jsonl").read_bytes()
    assert data == (tmp_path / "b.jsonl").read_bytes()
    assert "螺丝".encode() in data
