"""Token-budget batches: bin packing of samples by token count, one bin per batch.

Each bin is one batch (one packed row for `PackedDataCollator`) holding samples whose token counts
sum to at most `max_tokens_per_batch`. `pack_bins` is first-fit decreasing followed by a repair
that empties the least-full bins into the others (`repair_bins`): with samples of 1,700-4,200
tokens a row of 8192 holds 2-4 of them, and first-fit decreasing leaves gaps no remaining sample
fits. Unused budget, first-fit decreasing -> `pack_bins`: 6.3% -> 3.9% on 1,000 samples drawn
from the examples' lengths (where no packing can do better than 2.1%), ~7% -> 1.5-2% on uniform
mixes (benchmarks/packing.py, tests/data/test_sampler.py). Packing is deterministic (ties broken by
index), so every rank of a distributed run computes the same bins; the bin order is shuffled per
epoch from `seed + epoch`. A sample longer than the budget gets a bin of its own: it is never
dropped here (the ChatProcessor's `max_tokens` is the place that skips and counts samples).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator, Sequence


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack sample indices into bins of total length <= `capacity` (oversized samples alone).

    Samples are placed longest first into the first (lowest-numbered) bin with room; within a bin
    the indices keep that placement order. O(N log N) with a max-segment-tree over bin capacities.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    # tree[1] is the root; leaves tree[size + b] hold the room left in bin b (unopened bins: all of it).
    tree = [capacity] * (2 * size)
    bins: list[list[int]] = []
    oversized: list[list[int]] = []
    for i in order:
        need = int(lengths[i])
        if need > capacity:
            oversized.append([i])
            continue
        node = 1
        while node < size:  # descend to the leftmost leaf with room >= need; the root always has it
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        tree[node] -= need
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return oversized + bins


# The repair works on groups of at most this many samples, so its cost grows linearly with the
# dataset; a group of 1,000 fills about as well as the whole set did in our tests.
_REPAIR_GROUP = 1000


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack sample indices into bins of total length <= `capacity`, filling the bins tighter than
    `first_fit_decreasing`: first-fit decreasing, then `repair_bins`, on groups of at most 1,000
    samples dealt out of the length order (every group holds the whole length mix, also when the
    file order is sorted or grouped by length). Oversized samples alone and first; within a bin,
    longest first (ties by index). Deterministic."""
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    lengths = [int(n) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    oversized = [[i] for i in order if lengths[i] > capacity]
    fitting = [i for i in order if lengths[i] <= capacity]
    groups = -(-len(fitting) // _REPAIR_GROUP)
    bins: list[list[int]] = []
    for g in range(groups):
        members = sorted(fitting[g::groups])
        local = [lengths[i] for i in members]
        packed = repair_bins(local, capacity, first_fit_decreasing(local, capacity))
        bins += [[members[j] for j in b] for b in packed]
    return oversized + _canonical(lengths, bins)


def repair_bins(
    lengths: Sequence[int],
    capacity: int,
    bins: Sequence[Sequence[int]],
    *,
    open_bins: int = 16,
    max_open_bins: int = 64,
    patience: int = 2,
) -> list[list[int]]:
    """Fewer bins for the same samples (every bin within `capacity`): a local search after a
    constructive packing (in the manner of Levine and Ducatelle's bin-packing local search).

    A round empties the `open_bins` least-full bins; their samples become free. Every other bin,
    in turn, swaps up to 2 of its samples for up to 2 free ones whenever that makes it fuller
    (best gain first), until no bin gains; the samples still free are packed into new bins by
    first-fit decreasing. A round that ends with fewer bins is kept; after `patience` rounds
    without one, `open_bins` doubles, up to `max_open_bins`. Stops at the lower bound
    ceil(tokens / capacity). Returns the best packing seen, bins sorted as `first_fit_decreasing`
    sorts them (longest first, ties by index). Every sample must fit `capacity`.
    """
    lengths = [int(n) for n in lengths]
    if any(lengths[i] > capacity for b in bins for i in b):
        raise ValueError("repair_bins takes samples that fit the capacity only")
    current = [list(b) for b in bins if b]
    best = [list(b) for b in current]
    lower = -(-sum(lengths[i] for b in current for i in b) // capacity)
    stale = 0
    while len(best) > lower and open_bins <= max_open_bins:
        current = _repair_round(lengths, capacity, current, open_bins)
        if len(current) < len(best):
            best, stale = [list(b) for b in current], 0
        else:
            stale += 1
            if stale >= patience:
                open_bins, stale = 2 * open_bins, 0
    return _canonical(lengths, best)


def _repair_round(
    lengths: list[int], capacity: int, bins: list[list[int]], open_bins: int
) -> list[list[int]]:
    """One round of `repair_bins`: returns new bins (the input lists are modified)."""
    bins = sorted(bins, key=lambda b: (sum(lengths[i] for i in b), min(b)))
    free = sorted((lengths[i], i) for b in bins[:open_bins] for i in b)  # (length, index)
    kept = bins[open_bins:]
    fills = [sum(lengths[i] for i in b) for b in kept]
    changed = True
    while changed and free:
        changed = False
        # Pairs of free samples by total; a pair whose samples left the free set stays listed
        # until the next pass (skipped by `_best_free_subset`), which is far cheaper than
        # rebuilding the list after every swap.
        pair_sums = sorted((a[0] + b[0], a[1], b[1]) for a, b in itertools.combinations(free, 2))
        is_free = {i for _, i in free}
        for n, b in enumerate(kept):
            room = capacity - fills[n]
            if room <= 0:
                continue
            choice = None  # (gain, samples out of the bin, free samples into it)
            for size in (0, 1, 2):
                for out in itertools.combinations(b, size):
                    lo = sum(lengths[i] for i in out)
                    got = _best_free_subset(free, pair_sums, is_free, lo, lo + room)
                    if got is not None and (choice is None or got[0] - lo > choice[0]):
                        choice = (got[0] - lo, out, got[1])
            if choice is None:
                continue
            gain, out, into = choice
            for i in into:
                free.remove((lengths[i], i))
                is_free.discard(i)
                b.append(i)
            new_pairs = []
            for i in out:
                b.remove(i)
                new_pairs += [(length + lengths[i], j, i) for length, j in free]
                bisect.insort(free, (lengths[i], i))
                is_free.add(i)
            if new_pairs:  # two sorted runs: timsort merges them in linear time
                pair_sums = sorted(pair_sums + sorted(new_pairs))
            fills[n] += gain
            changed = True
    rest = first_fit_decreasing([length for length, _ in free], capacity)
    return kept + [[free[j][1] for j in b] for b in rest]


def _best_free_subset(
    free: list[tuple[int, int]],
    pair_sums: list[tuple[int, int, int]],
    is_free: set[int],
    lo: int,
    hi: int,
) -> tuple[int, tuple[int, ...]] | None:
    """The free sample or pair with the largest total in (lo, hi]: `(total, indices)` or None.
    free: sorted (length, index); pair_sums: sorted (total, index, index), pairs with a sample
    not in `is_free` skipped."""
    best = None
    k = bisect.bisect_right(free, (hi, 1 << 62)) - 1
    if k >= 0 and free[k][0] > lo:
        best = (free[k][0], (free[k][1],))
    k = bisect.bisect_right(pair_sums, (hi, 1 << 62, 0)) - 1
    while k >= 0 and pair_sums[k][0] > lo and (best is None or pair_sums[k][0] > best[0]):
        total, i, j = pair_sums[k]
        if i in is_free and j in is_free:
            return total, (i, j)
        k -= 1
    return best


def _canonical(lengths: list[int], bins: list[list[int]]) -> list[list[int]]:
    """Each bin longest first, the bins by their first sample, ties by index (FFD's order)."""

    def key(i: int) -> tuple[int, int]:
        return -lengths[i], i

    return sorted((sorted(b, key=key) for b in bins), key=lambda b: key(b[0]))


class TokenBudgetBatchSampler:
    """Yields lists of dataset indices, one list per bin, for `DataLoader(batch_sampler=...)`.

    lengths: the token count of every sample (e.g. from `ChatProcessor.count_tokens`).
    max_tokens_per_batch: the bin capacity. shuffle: shuffle bin order each epoch with `seed + epoch`
    (`set_epoch` as with `DistributedSampler`). num_replicas/rank: give each rank every
    `num_replicas`-th bin of the (identically shuffled) order, padded by repeating bins so that
    every rank runs the same number of steps.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens_per_batch: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.lengths = [int(n) for n in lengths]
        self.max_tokens_per_batch = int(max_tokens_per_batch)
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.bins = pack_bins(self.lengths, self.max_tokens_per_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_oversized(self) -> int:
        """Bins holding one sample longer than the budget."""
        return sum(1 for b in self.bins if self.lengths[b[0]] > self.max_tokens_per_batch)

    def padding_fraction(self) -> float:
        """Unused share of the budget over all bins: 1 - tokens / (bins * budget), oversized excluded."""
        fitting = [b for b in self.bins if self.lengths[b[0]] <= self.max_tokens_per_batch]
        if not fitting:
            return 0.0
        used = sum(self.lengths[i] for b in fitting for i in b)
        return 1.0 - used / (len(fitting) * self.max_tokens_per_batch)

    def _epoch_bins(self) -> list[list[int]]:
        order = list(range(len(self.bins)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        if self.num_replicas > 1 and order:
            total = -(-len(order) // self.num_replicas) * self.num_replicas
            order = (order * (total // len(order) + 1))[:total]
            order = order[self.rank :: self.num_replicas]
        return [list(self.bins[i]) for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._epoch_bins())

    def __len__(self) -> int:
        return -(-len(self.bins) // self.num_replicas)
