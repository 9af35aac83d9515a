"""How a list of sample lengths batches: padded batches of B against packed token-budget bins.

Pure functions of token counts (no tensors), shared by `bbu inspect` and benchmarks/packing.py.
A padded batch costs B x (its longest sample) token slots; a packed bin holds whole samples up to
the budget (`bbucli.data.bin_packing.pack_bins`, what training uses) and its row is exactly
as long as its samples, so it carries no padding at all: what a bin can waste is budget left
unused, i.e. more steps (or more memory reserved) than the tokens need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bbucli.data.bin_packing import pack_bins
from bbucli.inspection.jsonable import to_jsonable


def standard_padding(lengths: Sequence[int], batch_size: int, *, sort: bool) -> float:
    """Share of pad tokens when `lengths` are cut into consecutive batches of `batch_size`, each
    padded to its longest: 1 - sum(lengths) / sum(batch rows x longest). sort=True first orders the
    lengths (what a length-grouping sampler approaches); sort=False keeps the given (file) order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(lengths) if sort else list(lengths)
    slots = sum(
        len(order[i : i + batch_size]) * max(order[i : i + batch_size])
        for i in range(0, len(order), batch_size)
    )
    return 1.0 - sum(order) / slots if slots else 0.0


def packed_bins(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Bins of sample indices as training packs them (`pack_bins`: value correction or first-fit
    decreasing, then a repair that empties the least-full bins; oversized samples alone)."""
    return pack_bins(lengths, budget)


def unused_budget(lengths: Sequence[int], bins: Sequence[Sequence[int]], budget: int) -> float:
    """1 - tokens / (bins x budget) over the bins that fit the budget (oversized ones excluded)."""
    fitting = [b for b in bins if sum(lengths[i] for i in b) <= budget]
    if not fitting:
        return 0.0
    return 1.0 - sum(lengths[i] for b in fitting for i in b) / (len(fitting) * budget)


@dataclass(frozen=True)
class BatchingStats:
    """Padded against packed for one set of lengths (the episodes that fit `max_tokens`).

    standard_pad_file_order / standard_pad_sorted: pad-token share of batches of `batch_size`
    in file order / sorted by length; packed_unused: budget share left empty in the packed bins
    (their rows carry no pad tokens); packed_oversized: samples longer than `batch_tokens`, each
    in a bin of its own; samples_per_bin: mean samples in a bin.
    """

    samples: int
    batch_size: int
    standard_batches: int
    standard_pad_file_order: float
    standard_pad_sorted: float
    batch_tokens: int
    packed_bins: int
    packed_unused: float
    packed_oversized: int
    samples_per_bin: float

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def batching_stats(lengths: Sequence[int], batch_size: int, batch_tokens: int) -> BatchingStats:
    """`BatchingStats` of `lengths` (token counts of samples) for B = batch_size and one budget."""
    bins = packed_bins(lengths, batch_tokens) if lengths else []
    return BatchingStats(
        samples=len(lengths),
        batch_size=batch_size,
        standard_batches=-(-len(lengths) // batch_size),
        standard_pad_file_order=standard_padding(lengths, batch_size, sort=False),
        standard_pad_sorted=standard_padding(lengths, batch_size, sort=True),
        batch_tokens=batch_tokens,
        packed_bins=len(bins),
        packed_unused=unused_budget(lengths, bins, batch_tokens),
        packed_oversized=sum(1 for n in lengths if n > batch_tokens),
        samples_per_bin=len(lengths) / len(bins) if bins else 0.0,
    )
