"""Token-budget bin packing: every sample exactly once, bins within budget, deterministic, per-epoch order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbucli.data.sampler import TokenBudgetBatchSampler, first_fit_decreasing


def naive_ffd(lengths: list[int], capacity: int) -> list[list[int]]:
    """Textbook O(N * bins) first-fit-decreasing, oversized samples first and alone."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    oversized = [[i] for i in order if lengths[i] > capacity]
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        if lengths[i] > capacity:
            continue
        for b, left in enumerate(room):
            if left >= lengths[i]:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return oversized + bins


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=300), max_size=80),
    st.integers(min_value=1, max_value=256),
)
def test_ffd_packs_every_sample_once_within_budget(lengths: list[int], capacity: int) -> None:
    bins = first_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    for b in bins:
        assert sum(lengths[i] for i in b) <= capacity or len(b) == 1
    assert bins == naive_ffd(lengths, capacity)


def test_oversized_sample_gets_its_own_bin() -> None:
    sampler = TokenBudgetBatchSampler([10, 500, 20, 30], max_tokens_per_batch=64, shuffle=False)
    assert sampler.bins == [[1], [3, 2, 0]]
    assert sampler.num_oversized == 1
    assert sorted(i for b in sampler for i in b) == [0, 1, 2, 3]


def test_packing_is_tight_on_a_realistic_mix() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(300, 1800) for _ in range(2000)]
    sampler = TokenBudgetBatchSampler(lengths, max_tokens_per_batch=8192)
    assert sampler.padding_fraction() < 0.02
    assert len(sampler) == len(sampler.bins) == len(list(sampler))


def test_seeded_per_epoch_shuffle() -> None:
    lengths = [random.Random(1).randint(1, 100) for _ in range(200)]
    a = TokenBudgetBatchSampler(lengths, 256, seed=3)
    b = TokenBudgetBatchSampler(lengths, 256, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert first != second and sorted(map(sorted, first)) == sorted(map(sorted, second))
    assert list(TokenBudgetBatchSampler(lengths, 256, seed=4)) != first
    assert list(TokenBudgetBatchSampler(lengths, 256, shuffle=False)) == a.bins


def test_replicas_split_bins_evenly() -> None:
    lengths = list(range(1, 50))
    ranks = [
        TokenBudgetBatchSampler(lengths, 100, seed=0, num_replicas=3, rank=r) for r in range(3)
    ]
    per_rank = [list(s) for s in ranks]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0])
    seen = {i for p in per_rank for b in p for i in b}
    assert seen == set(range(len(lengths)))
    with pytest.raises(ValueError, match="rank"):
        TokenBudgetBatchSampler(lengths, 100, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="capacity"):
        first_fit_decreasing([1], 0)
