"""Bin packing of samples by token count: the rows of `data.packing`.

Each bin is one batch (one packed row for `PackedDataCollator`) holding samples whose token counts
sum to at most `max_tokens_per_batch`. With samples of 1,700-4,200 tokens a row of 8192 holds 2-4
of them, and which samples share a row decides how many rows there are: first-fit decreasing pairs
long samples with each other and leaves gaps no remaining sample fits. `pack_bins` builds rows by
sequential value correction (`value_corrected_bins`, which learns over a few passes which samples
need short partners early) or first-fit decreasing, whichever needs fewer bins, then a repair
empties the least-full bins into the others (`repair_bins`). Unused budget, first-fit decreasing
-> `pack_bins`: 6.3% (400 bins) -> 2.4% (384) on 1,000 samples drawn from the examples' lengths,
where the fewest bins possible are 383 (2.1%); 6.9% -> 0.7% on 1,000 uniform in 1,700-4,200
(benchmarks/packing.py, tests/data/test_sampler.py); 0.1 s for 10,000 samples of the examples'
lengths. Packing is deterministic (ties broken by index), so every rank of a distributed run
computes the same bins. A sample longer than the budget gets a bin of its own: it is never dropped
here (the ChatProcessor's `max_tokens` is the place that skips and counts samples).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence


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


# The repair works on groups of about this many samples, so its cost grows linearly with the
# dataset; groups of 1,000 came within half a percent of the bins of repairing the whole set.
_REPAIR_GROUP = 1000
# `value_corrected_bins` builds rows from length classes (each sample counted at the longest
# length of its class): with few classes one row repeats many times, so building every row costs
# little at any dataset size, and the repair takes back the rounding (half a class on average).
_LENGTH_CLASSES = 64
# More passes or a longer row search found no fewer bins in our comparisons (the best pass was
# among the first five).
_VALUE_PASSES = 10
_ROW_SEARCH_NODES = 1000
# Started from value-corrected rows, repair rounds with more than 16 bins emptied found no fewer
# bins in our comparisons and took most of the time (10,000 uniform samples: 2.3 s against 1.2 s).
_REPAIR_OPEN_BINS = 16


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack sample indices into bins of total length <= `capacity`, filling the bins tighter than
    `first_fit_decreasing`: the fewer bins of `value_corrected_bins` and first-fit decreasing,
    then `repair_bins` on groups of about 1,000 samples (bins dealt out by fill, so every group
    holds the whole length mix). Oversized samples alone and first; within a bin, longest first
    (ties by index). Deterministic."""
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    lengths = [int(n) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    oversized = [[i] for i in order if lengths[i] > capacity]
    fitting = [i for i in order if lengths[i] <= capacity]
    local = [lengths[i] for i in fitting]
    start = first_fit_decreasing(local, capacity)
    if local and min(local) > 0:
        valued = value_corrected_bins(local, capacity)
        if len(valued) < len(start):
            start = valued
    start.sort(key=lambda b: (sum(local[j] for j in b), min(b)))
    groups = -(-len(local) // _REPAIR_GROUP)
    bins: list[list[int]] = []
    for g in range(groups):
        members = sorted(j for b in start[g::groups] for j in b)
        position = {j: k for k, j in enumerate(members)}
        packed = repair_bins(
            [local[j] for j in members],
            capacity,
            [[position[j] for j in b] for b in start[g::groups]],
            max_open_bins=_REPAIR_OPEN_BINS,
        )
        bins += [[fitting[members[k]] for k in b] for b in packed]
    return oversized + _canonical(lengths, bins)


def value_corrected_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack sample indices into bins of total length <= `capacity` row by row, each row the most
    valuable set of the samples left (sequential value correction, after Mukhacheva, Belov and
    Scheithauer's heuristic for cutting stock). A sample's value starts at its length; after each
    pass over the data it moves halfway towards its fair share of the rows it landed in,
    length x capacity / (row total), so samples that ended in rows with room to spare are worth
    more the next pass and get placed while there are still partners that fill a row with them.
    (First-fit decreasing pairs long samples with each other, leaving rows with room no sample
    left can use, and packs the short ones together at the end.) The best of `_VALUE_PASSES`
    passes (fewest bins, the first on ties), stopping at ceil(tokens / capacity). Lengths are
    counted at the longest of their class (at most `_LENGTH_CLASSES` classes of about equal
    sample counts; exact when there are no more distinct lengths), so bins are within capacity
    but can have room that `repair_bins` fills. Bins in row order. Deterministic. Every sample
    must have 1..capacity tokens.
    """
    lengths = [int(n) for n in lengths]
    if any(n > capacity or n <= 0 for n in lengths):
        raise ValueError("value_corrected_bins takes samples of 1..capacity tokens only")
    if not lengths:
        return []
    rounded = _length_classes(lengths, _LENGTH_CLASSES)
    members: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (-rounded[i], -lengths[i], i)):
        members.setdefault(rounded[i], []).append(i)
    sizes = sorted(members, reverse=True)
    counts = [len(members[n]) for n in sizes]
    lower = -(-sum(rounded) // capacity)
    values = [float(n) for n in sizes]
    best: list[tuple[list[tuple[int, int]], int]] = []
    best_bins = len(lengths) + 1
    for _ in range(_VALUE_PASSES):
        left = list(counts)
        rows: list[tuple[list[tuple[int, int]], int]] = []  # (class, copies) per row, repeats
        share = [0.0] * len(sizes)
        while any(left):
            row = _most_valuable_row(sizes, values, left, capacity)
            repeats = min(left[k] // copies for k, copies in row)
            total = sum(sizes[k] * copies for k, copies in row)
            for k, copies in row:
                left[k] -= repeats * copies
                share[k] += repeats * copies * sizes[k] * capacity / total
            rows.append((row, repeats))
        used = sum(repeats for _, repeats in rows)
        if used < best_bins:
            best, best_bins = rows, used
        if best_bins <= lower:
            break
        values = [(v + share[k] / counts[k]) / 2 for k, v in enumerate(values)]
    bins = []
    taken = [0] * len(sizes)
    for row, repeats in best:
        for _ in range(repeats):
            b = []
            for k, copies in row:
                b += members[sizes[k]][taken[k] : taken[k] + copies]
                taken[k] += copies
            bins.append(b)
    return bins


def _length_classes(lengths: list[int], most: int) -> list[int]:
    """Each length rounded up to the longest of its class: at most `most` classes of about equal
    sample counts over the sorted lengths (the lengths unchanged when there are that few)."""
    counts: dict[int, int] = {}
    for n in lengths:
        counts[n] = counts.get(n, 0) + 1
    if len(counts) <= most:
        return list(lengths)
    top: dict[int, int] = {}
    pending: list[int] = []
    seen, cut = 0, 1
    for n in sorted(counts):
        pending.append(n)
        seen += counts[n]
        if seen * most >= cut * len(lengths):  # the class reaches the next cut: close it
            top.update((m, n) for m in pending)
            pending = []
            while seen * most >= cut * len(lengths):
                cut += 1
    return [top[n] for n in lengths]


def _most_valuable_row(
    sizes: list[int], values: list[float], left: list[int], capacity: int
) -> list[tuple[int, int]]:
    """The (class, copies) of greatest total value with total size <= capacity and copies <= left:
    depth-first branch and bound over the classes by value per token, most copies first; after
    `_ROW_SEARCH_NODES` nodes, the best row found so far. Recursion depth <= number of classes."""
    order = sorted(
        (k for k in range(len(sizes)) if left[k] and sizes[k] <= capacity),
        key=lambda k: (-values[k] / sizes[k], -sizes[k], k),
    )
    size = [sizes[k] for k in order]
    value = [values[k] for k in order]
    density = [values[k] / sizes[k] for k in order]
    path: list[tuple[int, int]] = []
    best: list[tuple[int, int]] = []
    best_value = 0.0
    nodes = 0

    def search(start: int, room: int, total: float) -> None:
        nonlocal best, best_value, nodes
        nodes += 1
        if total > best_value:
            best, best_value = list(path), total
        for p in range(start, len(order)):
            # by value per token: nothing from class p on adds more than `room` at p's rate
            if nodes >= _ROW_SEARCH_NODES or total + room * density[p] <= best_value:
                return
            if size[p] > room:
                continue
            for copies in range(min(left[order[p]], room // size[p]), 0, -1):
                path.append((order[p], copies))
                search(p + 1, room - copies * size[p], total + copies * value[p])
                path.pop()
                if nodes >= _ROW_SEARCH_NODES:
                    return

    search(0, capacity, 0.0)
    return best


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
