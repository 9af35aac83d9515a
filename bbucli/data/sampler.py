"""Token-budget batches: one bin of `bbucli.data.bin_packing.pack_bins` per batch.

The bins are packed once; their order is shuffled per epoch from `seed + epoch` and dealt to the
ranks of a distributed run (every rank computes the same bins: packing is deterministic).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from bbucli.data.bin_packing import pack_bins


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
