"""Teacher pool, train/val split and the teachers convert writes: invariants, coverage,
determinism, and students' teachers drawn without their labels."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbucli.convert.pipeline import ConvertOptions, convert_dataset
from bbucli.convert.split import ImageSummary, select_teacher_pool, split_train_val
from bbucli.schema import read_episodes
from bbucli.teachers import draw_teachers

CLASSES = [f"type{i}/prop/state" for i in range(8)]


@st.composite
def summaries(draw: st.DrawFn, max_images: int = 40) -> list[ImageSummary]:
    n = draw(st.integers(0, max_images))
    images = []
    for i in range(n):
        count = draw(st.integers(0, 12))
        descs = tuple(draw(st.sampled_from(CLASSES)) for _ in range(count))
        areas = tuple(draw(st.floats(0.0, 1.0)) for _ in range(count))
        images.append(ImageSummary(f"img{i:03d}", descs, areas))
    return images


def image(id_: str, *descs: str, area: float = 0.01) -> ImageSummary:
    return ImageSummary(id_, descs, (area,) * len(descs))


@settings(max_examples=150, deadline=None)
@given(
    images=summaries(),
    pool_size=st.integers(0, 50),
    val_ratio=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**32),
)
def test_every_image_in_exactly_one_place(
    images: list[ImageSummary], pool_size: int, val_ratio: float, seed: int
) -> None:
    all_ids = {im.id for im in images}
    pool = select_teacher_pool(images, pool_size, seed)
    assert len(pool) == len(set(pool)) == min(pool_size, len(images))
    rest = sorted(all_ids - set(pool))
    train, val = split_train_val(rest, val_ratio, seed)
    assert not set(train) & set(val) and not set(pool) & (set(train) | set(val))
    assert set(pool) | set(train) | set(val) == all_ids
    if val_ratio > 0 and len(rest) >= 2:
        assert 1 <= len(val) <= len(rest) - 1


@settings(max_examples=150, deadline=None)
@given(images=summaries(), extra=st.integers(0, 5), seed=st.integers(0, 2**32))
def test_pool_covers_every_class_when_it_has_room(
    images: list[ImageSummary], extra: int, seed: int
) -> None:
    classes = {d for im in images for d in im.descs}
    pool = set(select_teacher_pool(images, len(classes) + extra, seed))
    assert {d for im in images if im.id in pool for d in im.descs} == classes


@settings(max_examples=60, deadline=None)
@given(images=summaries(), seed=st.integers(0, 2**32), data=st.data())
def test_results_depend_on_the_arguments_not_on_input_order(
    images: list[ImageSummary], seed: int, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(images))
    assert select_teacher_pool(images, 5, seed) == select_teacher_pool(shuffled, 5, seed)
    ids = [im.id for im in images]
    assert split_train_val(ids, 0.2, seed) == split_train_val(reversed(ids), 0.2, seed)


def test_rare_class_enters_the_pool_first() -> None:
    common = [image(f"c{i:02d}", CLASSES[0], CLASSES[1]) for i in range(30)]
    rare = [image("r1", CLASSES[0], CLASSES[7]), image("r2", CLASSES[7])]
    pool = select_teacher_pool(common + rare, 1, seed=0)
    assert pool == ["r1"]  # the rare class, plus as much else as possible
    pool = select_teacher_pool(common + rare, 2, seed=0)
    assert {d for im in common + rare if im.id in pool for d in im.descs} == {
        CLASSES[0],
        CLASSES[1],
        CLASSES[7],
    }


def test_pool_then_fills_count_and_size_buckets_before_random() -> None:
    small = [image(f"s{i:02d}", CLASSES[0], area=0.0005) for i in range(20)]
    crowded = image("crowded", *([CLASSES[0]] * 20), area=0.0005)
    large = image("large", CLASSES[0], area=0.3)
    pool = select_teacher_pool([*small, crowded, large], 3, seed=1)
    assert {"crowded", "large"} <= set(pool)


def test_edge_cases() -> None:
    images = [image(f"i{n}", CLASSES[n % 3]) for n in range(4)]
    assert sorted(select_teacher_pool(images, 10, seed=0)) == ["i0", "i1", "i2", "i3"]
    assert select_teacher_pool([], 3, seed=0) == []
    assert select_teacher_pool(images, 0, seed=0) == []
    assert split_train_val([], 0.2, seed=0) == ([], [])
    assert split_train_val(["only"], 0.5, seed=0) == (["only"], [])
    assert split_train_val(["a", "b"], 0.01, seed=0)[1] != []  # rounds to 0, clamped to 1
    assert split_train_val(["a", "b", "c"], 0.0, seed=0) == (["a", "b", "c"], [])
    assert len(split_train_val([str(i) for i in range(10)], 0.25, seed=0)[1]) == 3  # 2.5 -> 3
    with pytest.raises(ValueError, match="val_ratio"):
        split_train_val(["a"], 1.0, seed=0)
    with pytest.raises(ValueError, match="duplicate"):
        select_teacher_pool([images[0], images[0]], 1, seed=0)


def test_seed_changes_the_random_part_only() -> None:
    images = [image(f"i{n:02d}", CLASSES[0]) for n in range(40)]
    pools = {tuple(select_teacher_pool(images, 5, seed)) for seed in range(5)}
    assert len(pools) > 1  # all tie: the seeded hash decides
    splits = {tuple(split_train_val([im.id for im in images], 0.3, s)[1]) for s in range(5)}
    assert len(splits) > 1


def test_ids_that_are_not_utf8_text_still_hash():
    odd = "\udcb2\udce2"  # a surrogate-escaped file name that is not UTF-8
    train, val = split_train_val([odd, "a", "b"], 0.34, seed=0)
    assert sorted(train + val) == sorted([odd, "a", "b"]) and len(val) == 1


def test_convert_draws_each_students_teachers_without_its_labels(rawset, tmp_path):
    """Every written episode's teachers are `draw_teachers` of the student's id over the pool;
    with one pool image per class, the student's own class is shown about one time in four
    (choosing by the student's labels, as bbu did before, showed it every time)."""
    labels = [f"cls{i}/x/y" for i in range(4)]
    for n in range(24):
        rawset.vendor(f"img{n:02d}", objects=[((20, 30, 60, 80), labels[n % 4])])
    out = tmp_path / "d.jsonl"
    options = ConvertOptions(teachers=1, pool=4, val_ratio=0.5, unknown="keep", seed=3)
    report = convert_dataset(rawset.root, out, options)
    assert {labels[int(t[3:]) % 4] for t in report.teacher_pool} == set(labels)  # one per class
    episodes = read_episodes(out) + read_episodes(out.with_name("d.val.jsonl"))
    hits = 0
    for episode in episodes:
        drawn = draw_teachers(episode.meta["id"], report.teacher_pool, 1, seed=3)
        assert [t.image for t in episode.teachers] == [f"images/{t}.jpeg" for t in drawn]
        hits += episode.teachers[0].objects[0].desc == episode.student.objects[0].desc
    assert len(episodes) == 20 and hits < len(episodes) / 2
