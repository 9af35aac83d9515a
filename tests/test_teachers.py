"""The teacher policy: per-student draws that never read a student's labels, and the fixed set
inference shows every image."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bbucli.data.dataset import redraw_teachers
from bbucli.schema import DetObject, Sample
from bbucli.teachers import draw_teachers, inference_teachers

CLASSES = [f"type{i}/prop/state" for i in range(6)]
ids = st.lists(st.text("abcdefgh", min_size=1, max_size=3), max_size=12)


def sample(image: str, *descs: str) -> Sample:
    return Sample((image,), tuple(DetObject((0, 0, 10, 10), d) for d in descs))


@settings(max_examples=200, deadline=None)
@given(
    student=st.text("abcdefgh", min_size=1, max_size=3),
    pool=ids,
    k=st.integers(0, 8),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 5),
    data=st.data(),
)
def test_a_draw_is_k_distinct_pool_ids_never_the_student_whatever_the_order(
    student: str, pool: list[str], k: int, seed: int, epoch: int, data: st.DataObject
) -> None:
    drawn = draw_teachers(student, pool, k, seed=seed, epoch=epoch)
    assert len(drawn) == len(set(drawn)) == min(k, len(set(pool) - {student}))
    assert set(drawn) <= set(pool) and student not in drawn
    shuffled = data.draw(st.permutations(pool + pool[:2]))  # reordered, with repeats
    assert draw_teachers(student, shuffled, k, seed=seed, epoch=epoch) == drawn


@settings(max_examples=100, deadline=None)
@given(
    mine=st.lists(st.sampled_from(CLASSES), max_size=5),
    other=st.lists(st.sampled_from(CLASSES), max_size=5),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**32),
    epoch=st.integers(1, 4),
)
def test_the_redraw_never_reads_the_students_labels(
    mine: list[str], other: list[str], k: int, seed: int, epoch: int
) -> None:
    """The same student image with any two label sets gets the same teachers: before, a teacher
    sharing the student's class was preferred, so these two students got different ones."""
    pool = [sample(f"images/t{i}.jpeg", c) for i, c in enumerate(CLASSES)]
    first = redraw_teachers(sample("images/s.jpeg", *mine), pool, k, seed=seed, epoch=epoch)
    second = redraw_teachers(sample("images/s.jpeg", *other), pool, k, seed=seed, epoch=epoch)
    assert first == second and len(first) == k
    expected = draw_teachers("images/s.jpeg", [t.image for t in pool], k, seed=seed, epoch=epoch)
    assert [t.image for t in first] == expected


def test_the_redraw_shows_the_students_class_at_the_rate_of_chance() -> None:
    """One teacher per class: a student of class c drew the teacher of c every time before; a
    label-blind draw does so about once in len(CLASSES)."""
    pool = [sample(f"images/t{i}.jpeg", c) for i, c in enumerate(CLASSES)]
    hits = 0
    students = 600
    for n in range(students):
        own = CLASSES[n % len(CLASSES)]
        [teacher] = redraw_teachers(sample(f"images/s{n}.jpeg", own), pool, 1, seed=0, epoch=1)
        hits += teacher.objects[0].desc == own
    assert 0.5 / len(CLASSES) < hits / students < 2.0 / len(CLASSES)


def test_draws_change_with_seed_epoch_and_student() -> None:
    pool = [f"t{i}" for i in range(20)]
    base = draw_teachers("s", pool, 3, seed=0, epoch=0)
    assert draw_teachers("s", pool, 3, seed=0, epoch=0) == base
    assert draw_teachers("s", pool, 3, seed=1, epoch=0) != base
    assert draw_teachers("s", pool, 3, seed=0, epoch=1) != base
    assert draw_teachers("other", pool, 3, seed=0, epoch=0) != base


def test_inference_teachers_cover_the_most_classes_first_and_ignore_order() -> None:
    pool = [
        sample("images/a.jpeg", CLASSES[0]),
        sample("images/b.jpeg", CLASSES[0], CLASSES[1], CLASSES[2]),
        sample("images/c.jpeg", CLASSES[3], CLASSES[4]),
        sample("images/d.jpeg", CLASSES[1], CLASSES[3]),
        sample("images/e.jpeg"),
    ]
    chosen = [t.image for t in inference_teachers(pool, 3)]
    # b shows 3 classes; then c adds 2 (d adds 1); then a, d and e add none: the smallest path.
    assert chosen == ["images/b.jpeg", "images/c.jpeg", "images/a.jpeg"]
    assert inference_teachers(list(reversed(pool)), 3) == inference_teachers(pool, 3)
    assert len(inference_teachers(pool, 10)) == 5
    assert inference_teachers(pool, 0) == () and inference_teachers([], 2) == ()
