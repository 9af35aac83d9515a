"""Teacher pool and train/val split. Pure functions, no I/O.

Every image ends up in exactly one of: the teacher pool, train, val. Teachers are never students.
Each student's teachers are then drawn from the pool by `bbucli.teachers.draw_teachers`, which
never looks at the student's labels; only the pool is chosen from labels (its images' own).
All randomness comes from a stable hash of `(seed, purpose, ids)` (blake2b, not Python's salted
`hash()`), so results depend only on the arguments, not on input order, process or platform.

Selection works on *features* of an image:
- classes: its distinct descs;
- buckets: its object count (0, 1, 2-3, 4-7, 8-15, 16-31, 32+) and the size bucket of each box by
  area as a fraction of the image (tiny < 0.1%, small < 1%, medium < 5%, large). An image without
  objects has no bucket feature, so it is never chosen to show diversity, only at random.
Greedy cover, rarest feature first: take the uncovered class held by the fewest candidates, pick
the candidate holding it that covers the most other uncovered classes (each weighted by
1 / frequency, so rare ones count more), break ties by new buckets, then by the seeded hash. Every
pick covers at least one new class, so `len(classes)` picks always cover every class. Then the
buckets not yet covered are covered the same way, and any room left is filled at random.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

_COUNT_EDGES = (1, 2, 4, 8, 16, 32)
_SIZE_EDGES = ((0.001, "tiny"), (0.01, "small"), (0.05, "medium"))


@dataclass(frozen=True)
class ImageSummary:
    """What selection needs to know about one image.

    `descs` and `boxes_area_frac` have one entry per object; `boxes_area_frac` is box area /
    image area, in [0, 1], the same in any frame (original or resized).
    """

    id: str
    descs: tuple[str, ...] = ()
    boxes_area_frac: tuple[float, ...] = ()

    @property
    def classes(self) -> frozenset[str]:
        """The distinct descs present in the image."""
        return frozenset(self.descs)

    @property
    def buckets(self) -> frozenset[str]:
        """Object-count and box-size bucket features (empty for an image without objects)."""
        if not self.descs:
            return frozenset()
        count = sum(len(self.descs) >= edge for edge in _COUNT_EDGES)
        return frozenset(
            {f"count:{count}", *(f"size:{_size_bucket(a)}" for a in self.boxes_area_frac)}
        )


def select_teacher_pool(images: Sequence[ImageSummary], pool_size: int, seed: int) -> list[str]:
    """Ids of up to `pool_size` teacher images, in the order they were chosen.

    Classes first (every class is covered when `pool_size >= number of classes`), then count and
    box-size buckets, then seeded random. `pool_size >= len(images)` takes every image.
    """
    candidates = _index(images)
    return _select(candidates, _classes, _buckets, pool_size, (seed, "pool"))


def split_train_val(ids: Iterable[str], val_ratio: float, seed: int) -> tuple[list[str], list[str]]:
    """Split `ids` (the non-teacher images) into `(train_ids, val_ids)`, each sorted.

    The seeded shuffle orders ids by a hash of `(seed, id)`, so adding images moves few others
    across the split. `n_val = floor(n * val_ratio + 0.5)` (half rounds up, not to even), then
    clamped to `[1, n - 1]` when `val_ratio > 0` and `n >= 2`: a requested val set is never
    empty, and train always keeps an image. A single image goes to train.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    unique = list(ids)
    if len(set(unique)) != len(unique):
        raise ValueError("duplicate image ids in split_train_val")
    ordered = sorted(unique, key=lambda i: (_stable_key(seed, "split", i), i))
    n = len(ordered)
    n_val = int(n * val_ratio + 0.5)
    if val_ratio > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    elif n < 2:
        n_val = 0
    return sorted(ordered[n_val:]), sorted(ordered[:n_val])


def _select(
    candidates: dict[str, ImageSummary],
    primary: Callable[[ImageSummary], frozenset[str]],
    secondary: Callable[[ImageSummary], frozenset[str]],
    budget: int,
    salt: tuple[object, ...],
) -> list[str]:
    """Up to `budget` ids: cover the `primary` features (ties broken by new `secondary` ones),
    then the `secondary` features still uncovered, then seeded random."""
    first = {i: primary(im) for i, im in candidates.items()}
    second = {i: secondary(im) for i, im in candidates.items()}
    chosen = _greedy_cover(first, budget, salt, prefer=second)
    covered = frozenset().union(*(second[i] for i in chosen))
    rest = {i: fs - covered for i, fs in second.items() if i not in chosen}
    chosen += _greedy_cover(rest, budget - len(chosen), salt)
    fill = sorted(candidates.keys() - set(chosen), key=lambda i: _stable_key(*salt, "fill", i))
    return chosen + fill[: max(budget - len(chosen), 0)]


def _greedy_cover(
    held: dict[str, frozenset[str]],
    budget: int,
    salt: tuple[object, ...],
    prefer: dict[str, frozenset[str]] | None = None,
) -> list[str]:
    """Up to `budget` ids from `held` (`{id: features}`) that cover all their features, rarest
    feature first (module docstring); equal scores go to the id with the most uncovered `prefer`
    features, then to the seeded hash. Each pick covers at least one new feature."""
    held = dict(held)
    frequency = Counter(f for fs in held.values() for f in fs)
    uncovered = set(frequency)
    preferred = set().union(*prefer.values()) if prefer else set()
    chosen: list[str] = []
    while uncovered and len(chosen) < budget:
        rarest = min(uncovered, key=lambda f: (frequency[f], f))
        best = max(
            (i for i, fs in held.items() if rarest in fs),
            # fsum is exact, so the score does not depend on (salted) set iteration order.
            key=lambda i: (
                math.fsum(1.0 / frequency[f] for f in held[i] & uncovered),
                len(prefer[i] & preferred) if prefer else 0,
                -_stable_key(*salt, i),
                i,
            ),
        )
        chosen.append(best)
        uncovered -= held.pop(best)
        if prefer:
            preferred -= prefer[best]
    return chosen


def _stable_key(*parts: object) -> int:
    """A 64-bit integer from a process- and platform-independent hash of `parts`."""
    # surrogatepass: an id holding a surrogate (a name that was not UTF-8) still hashes.
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _size_bucket(area_frac: float) -> str:
    for edge, name in _SIZE_EDGES:
        if area_frac < edge:
            return name
    return "large"


def _classes(image: ImageSummary) -> frozenset[str]:
    return image.classes


def _buckets(image: ImageSummary) -> frozenset[str]:
    return image.buckets


def _index(images: Iterable[ImageSummary]) -> dict[str, ImageSummary]:
    """`{id: image}`; raises ValueError on a repeated id (ids are the images' identity)."""
    by_id: dict[str, ImageSummary] = {}
    for image in images:
        if image.id in by_id:
            raise ValueError(f"duplicate image id {image.id!r}")
        by_id[image.id] = image
    return by_id
