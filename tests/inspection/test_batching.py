"""Padding maths of standard batches and packed bins."""

from __future__ import annotations

import pytest

from bbucli.data.sampler import TokenBudgetBatchSampler
from bbucli.inspection.batching import batching_stats, standard_padding, unused_budget


def test_standard_padding_by_hand():
    # Batches [10, 2] and [6, 6]: slots 2*10 + 2*6 = 32, real 24.
    assert standard_padding([10, 2, 6, 6], 2, sort=False) == pytest.approx(1 - 24 / 32)
    # [1, 9, 1, 9] in file order: [1, 9], [1, 9] -> slots 36; sorted: [1, 1], [9, 9] -> no pad.
    assert standard_padding([1, 9, 1, 9], 2, sort=False) == pytest.approx(1 - 20 / 36)
    assert standard_padding([1, 9, 1, 9], 2, sort=True) == 0.0
    assert standard_padding([5, 5, 5], 4, sort=False) == 0.0
    assert standard_padding([], 4, sort=False) == 0.0


def test_packed_matches_the_training_sampler():
    lengths = [3000, 2500, 1700, 2900, 800, 4100, 2200, 1900, 3100]
    stats = batching_stats(lengths, batch_size=4, batch_tokens=4096)
    sampler = TokenBudgetBatchSampler(lengths, 4096, shuffle=False)
    assert stats.packed_bins == len(sampler.bins)
    assert stats.packed_unused == pytest.approx(sampler.padding_fraction())
    assert stats.packed_oversized == sampler.num_oversized == 1
    assert unused_budget(lengths, sampler.bins, 4096) == pytest.approx(stats.packed_unused)
    assert stats.standard_batches == 3


def test_empty():
    stats = batching_stats([], 4, 8192)
    assert (stats.packed_bins, stats.packed_unused, stats.samples_per_bin) == (0, 0.0, 0.0)
