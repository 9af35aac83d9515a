"""Which teachers a student sees: one policy, blind to the student's labels, for `bbu convert`, the
per-epoch re-draw in training, `bbu eval` and `bbu predict`. Pure functions, no I/O, no torch.

- Training (`draw_teachers`): each student's K teachers are a seeded draw from the teacher pool,
  keyed by (seed, epoch, student id, pool id) and never the student itself. `bbu convert` writes
  the epoch-0 draw into the episodes; `data.teacher_resample` draws again for every later epoch.
- Inference (`inference_teachers`): one fixed set of K pool examples, the same for every image,
  stored in the checkpoint (`teachers/`); `bbu eval` and `bbu predict` prepend it.

Why: a photo in deployment has no labels, so the only rules `bbu predict` can apply ignore them, and
training and eval must follow such a rule too. Choosing teachers that cover the student's own
classes (what bbu did before) showed the student's rare or defect class in a teacher far more often
than chance and made eval optimistic, while predict ran a prompt shape training never used.
`draw_teachers` takes ids only, so it cannot read anyone's labels; the seeded hash makes the draw
the same on every rank, in a resumed run and for any input order, and varying teachers across
students and epochs teaches the model to read a teacher rather than memorise one. At inference a
fixed set keeps a prediction independent of the photo's name and lets the checkpoint carry just K
examples; each is a pool image, so it was a training teacher too. The set is chosen with the pool
images' own labels only (the pool is what every student may be shown): greedily the image adding
the most classes not yet shown, ties to the first image path, so K teachers show as many classes
as they can.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from bbucli.schema import Sample


def draw_teachers(
    student_id: str, pool_ids: Iterable[str], k: int, *, seed: int, epoch: int = 0
) -> list[str]:
    """Ids of `min(k, pool size without the student)` teachers for the student `student_id`.

    The pool ids ordered by a blake2b hash of (seed, epoch, student_id, pool id), first k taken;
    `student_id` itself is never drawn. A pure function of the arguments and of the *set* of
    `pool_ids` (repeats and order do not matter): no label of anyone is an input.
    """
    candidates = set(pool_ids) - {student_id}
    ordered = sorted(candidates, key=lambda t: (_stable_key(seed, epoch, student_id, t), t))
    return ordered[: max(k, 0)]


def inference_teachers(pool: Sequence[Sample], k: int) -> tuple[Sample, ...]:
    """The fixed `min(k, len(pool))` teachers every image is shown at inference, in prompt order.

    Greedy over the pool's own objects: next is the image adding the most classes (descs) not yet
    shown, ties to the smallest image path. A pure function of the set of pool samples (each
    image path counted once, the first sample of a repeated one kept)."""
    remaining = {}
    for sample in pool:
        remaining.setdefault(sample.image, sample)
    shown: set[str] = set()
    chosen: list[Sample] = []
    while remaining and len(chosen) < k:
        best = min(
            remaining,
            key=lambda image: (-len({o.desc for o in remaining[image].objects} - shown), image),
        )
        sample = remaining.pop(best)
        chosen.append(sample)
        shown |= {o.desc for o in sample.objects}
    return tuple(chosen)


def _stable_key(*parts: object) -> int:
    """A 64-bit integer from a process- and platform-independent hash of `parts`."""
    # surrogatepass: an id holding a surrogate (a name that was not UTF-8) still hashes.
    text = "\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")
