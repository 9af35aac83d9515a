"""Token-budget bin packing: every sample exactly once, bins within budget, rows filled (near the
fewest bins possible), deterministic, per-epoch order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbucli.data.bin_packing import (
    first_fit_decreasing,
    pack_bins,
    repair_bins,
    value_corrected_bins,
)
from bbucli.data.sampler import TokenBudgetBatchSampler

# Token counts of the bundled examples (examples/raw converted with one and with two teachers),
# in the order benchmarks/packing.py measures them.
EXAMPLE_LENGTHS = [
    2704, 2617, 2191, 1727, 2320, 2738, 2745, 2000, 2714, 2715, 2104, 2524,
    3862, 4080, 3654, 3055, 3648, 4201, 3431, 3463, 4177, 4043, 3567, 3682,
]  # fmt: skip


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


def unused(lengths: list[int], bins: list[list[int]], capacity: int) -> float:
    return 1 - sum(lengths) / (len(bins) * capacity)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=300), max_size=80),
    st.integers(min_value=1, max_value=256),
)
def test_pack_bins_places_every_sample_once_within_budget(
    lengths: list[int], capacity: int
) -> None:
    bins = pack_bins(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    for b in bins:
        assert sum(lengths[i] for i in b) <= capacity or len(b) == 1
    assert len(bins) <= len(first_fit_decreasing(lengths, capacity))
    assert bins == pack_bins(lengths, capacity)


def check_packing(lengths: list[int], capacity: int, bins: list[list[int]]) -> None:
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    for b in bins:
        assert sum(lengths[i] for i in b) <= capacity or len(b) == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=5000), max_size=400),
    st.sampled_from([4096, 8192, 16384]),
)
def test_pack_bins_invariants_with_many_distinct_lengths(lengths: list[int], capacity: int) -> None:
    # Past 64 distinct lengths the rows are built on rounded-up length classes: the bins must
    # still hold the true lengths within the budget.
    bins = pack_bins(lengths, capacity)
    check_packing(lengths, capacity, bins)
    assert len(bins) <= len(first_fit_decreasing(lengths, capacity))
    assert bins == pack_bins(list(lengths), capacity)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(EXAMPLE_LENGTHS), max_size=300),
    st.sampled_from([8192, 16384]),
)
def test_value_corrected_bins_invariants_on_few_distinct_lengths(
    lengths: list[int], capacity: int
) -> None:
    bins = value_corrected_bins(lengths, capacity)
    check_packing(lengths, capacity, bins)
    assert all(b and sum(lengths[i] for i in b) <= capacity for b in bins)
    assert bins == value_corrected_bins(tuple(lengths), capacity)


def test_value_corrected_bins_rounds_many_lengths_up_and_stays_within_capacity() -> None:
    rng = random.Random(3)
    lengths = [rng.randint(1, 8192) for _ in range(2000)]  # ~1,600 distinct lengths
    bins = value_corrected_bins(lengths, 8192)
    check_packing(lengths, 8192, bins)
    assert all(sum(lengths[i] for i in b) <= 8192 for b in bins)
    with pytest.raises(ValueError, match="1..capacity"):
        value_corrected_bins([8193], 8192)
    with pytest.raises(ValueError, match="1..capacity"):
        value_corrected_bins([0, 5], 8192)


def test_pack_bins_reaches_the_optimum_where_first_fit_decreasing_does_not() -> None:
    # First-fit decreasing pairs the 3431s (1330 tokens left in each row, nothing fits) and ends
    # with 5 rows; 4 rows of 3431 + 2524 + 2191 = 8146 hold everything, the lower bound
    # ceil(32584 / 8192) = 4. The repair alone does not find them (it stays at 5).
    lengths = [3431] * 4 + [2524] * 4 + [2191] * 4
    assert len(first_fit_decreasing(lengths, 8192)) == 5
    ffd_repaired = repair_bins(lengths, 8192, first_fit_decreasing(lengths, 8192))
    assert len(ffd_repaired) == 5
    bins = pack_bins(lengths, 8192)
    check_packing(lengths, 8192, bins)
    assert sorted(sorted(lengths[i] for i in b) for b in bins) == [[2191, 2524, 3431]] * 4


def test_pack_bins_comes_within_a_bin_of_the_optimum_on_the_example_mix() -> None:
    # 1,000 episodes drawn from the examples' lengths, as benchmarks/packing.py draws them: the
    # cutting-stock integer program (scipy HiGHS, in that benchmark) proves 383 bins the fewest
    # possible; first-fit decreasing takes 400, first-fit decreasing + repair 390.
    lengths = random.Random(0).choices(EXAMPLE_LENGTHS, k=1000)
    bins = pack_bins(lengths, 8192)
    check_packing(lengths, 8192, bins)
    assert len(first_fit_decreasing(lengths, 8192)) == 400
    assert 383 <= len(bins) <= 384
    # Twice the budget: the lower bound ceil(tokens / budget) is reached.
    assert len(pack_bins(lengths, 16384)) == -(-sum(lengths) // 16384) == 188


def test_pack_bins_fills_rows_of_the_training_length_mix() -> None:
    # Chat samples of 1,700-4,200 tokens (one or two teachers) in rows of 8192: 2-4 per row,
    # where first-fit decreasing leaves gaps no remaining sample fits.
    rng = random.Random(0)
    lengths = [rng.randint(1700, 4200) for _ in range(1000)]
    sampler = TokenBudgetBatchSampler(lengths, max_tokens_per_batch=8192, seed=1)
    bins = sampler.bins
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert max(sum(lengths[i] for i in b) for b in bins) <= 8192
    assert unused(lengths, first_fit_decreasing(lengths, 8192), 8192) > 0.05
    assert unused(lengths, bins, 8192) < 0.01
    assert sampler.padding_fraction() == pytest.approx(unused(lengths, bins, 8192))


def test_pack_bins_groups_hold_the_whole_mix_when_the_file_is_sorted_by_length() -> None:
    # 2,100 samples are repaired in 3 groups; the bins are dealt out by fill, so each group holds
    # a share of the whole mix whatever the file order, not a run of short or long samples.
    rng = random.Random(0)
    lengths = sorted(rng.randint(1700, 4200) for _ in range(2100))
    bins = pack_bins(lengths, 8192)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert max(sum(lengths[i] for i in b) for b in bins) <= 8192
    assert unused(lengths, bins, 8192) < 0.02


def test_pack_bins_is_deterministic_and_orders_bins_longest_first() -> None:
    rng = random.Random(2)
    lengths = [rng.choice([1727, 2000, 2715, 2738, 3055, 3654, 4043, 4201]) for _ in range(300)]
    bins = pack_bins(lengths, 8192)
    assert bins == pack_bins(list(lengths), 8192)
    for b in bins:
        assert b == sorted(b, key=lambda i: (-lengths[i], i))
    firsts = [(-lengths[b[0]], b[0]) for b in bins]
    assert firsts == sorted(firsts)


def test_repair_never_adds_bins_and_rejects_oversized() -> None:
    lengths = [5, 5, 5, 5, 6, 6]
    ffd = first_fit_decreasing(lengths, 10)
    assert len(repair_bins(lengths, 10, ffd)) <= len(ffd)
    with pytest.raises(ValueError, match="fit the capacity"):
        repair_bins([12], 10, [[0]])


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
