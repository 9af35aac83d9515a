"""Benchmark of Hungarian matching: how the cost matrices are built, per image, at batch 8.

Compares, at 100 queries x 5 / 20 / 50 objects:
- naive: a Python double loop over (query, target) pairs, then scipy per image;
- cross-batch: DETR's way, one (B*Q, sum N) matrix over all images, copied to the host, split,
  scipy on the diagonal blocks (same cost code as ours, only the shape differs);
- ours: `HungarianMatcher()`, every image's (Q, N_i) matrix in one batched pass (targets padded),
  one host copy, scipy per image; also split into cost building and assignment alone;
- ours x4 layers: `HungarianMatcher().match_layers` with 4 decoder layers, per image and layer.

Run: `python benchmarks/matcher.py [--repeats 15]`. Prints medians over repeats, in ms per image.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from functools import partial

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from bbucli.loss.matcher import HungarianMatcher

MATCHER = HungarianMatcher()

BATCH, QUERIES, OBJECTS = 8, 100, (5, 20, 50)


def random_boxes(gen: torch.Generator, *shape: int) -> torch.Tensor:
    wh = torch.rand(*shape, 2, generator=gen) * 0.4 + 0.02
    centre = wh / 2 + torch.rand(*shape, 2, generator=gen) * (1 - wh)
    return torch.cat((centre, wh), dim=-1)


def naive_pair_cost(logit: float, pred: list[float], tgt: list[float]) -> float:
    p = 1 / (1 + math.exp(-logit))
    obj = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)
    l1 = sum(abs(a - b) for a, b in zip(pred, tgt, strict=True))
    ax1, ay1, ax2, ay2 = (
        pred[0] - pred[2] / 2,
        pred[1] - pred[3] / 2,
        pred[0] + pred[2] / 2,
        pred[1] + pred[3] / 2,
    )
    bx1, by1, bx2, by2 = (
        tgt[0] - tgt[2] / 2,
        tgt[1] - tgt[3] / 2,
        tgt[0] + tgt[2] / 2,
        tgt[1] + tgt[3] / 2,
    )
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return 2.0 * obj + 5.0 * l1 - 2.0 * (inter / union - (hull - union) / hull)


def naive(logits, boxes, targets):
    out = []
    for image, tgt in enumerate(targets):
        lg, bx, tg = logits[image].tolist(), boxes[image].tolist(), tgt.tolist()
        cost = [[naive_pair_cost(lg[q], bx[q], t) for t in tg] for q in range(len(lg))]
        out.append(linear_sum_assignment(np.asarray(cost)))
    return out


def cross_batch(logits, boxes, targets):
    sizes = [len(t) for t in targets]
    cost = MATCHER.cost(logits.reshape(1, -1), boxes.reshape(1, -1, 4), torch.cat(targets)[None])
    cost = cost.view(len(targets), logits.shape[1], -1).cpu()
    return [linear_sum_assignment(c[i].numpy()) for i, c in enumerate(cost.split(sizes, -1))]


def assign_only(host_costs: np.ndarray, sizes: list[int]):
    return [linear_sum_assignment(c[:, :n]) for c, n in zip(host_costs, sizes, strict=True)]


def cost_only(logits, boxes, targets):
    padded = torch.nn.utils.rnn.pad_sequence(list(targets), batch_first=True, padding_value=0.5)
    return MATCHER.cost(logits, boxes, padded).cpu()


def interleaved_medians(fns: dict, repeats: int, inner: dict) -> dict[str, float]:
    """Median ms per call of each function; the variants take turns within every repeat so that
    load from other processes on a shared CPU falls on all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - start) / inner[name] * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"batch {BATCH}, {QUERIES} queries, torch threads {torch.get_num_threads()}, "
        f"median of {args.repeats} interleaved repeats, ms per image"
    )
    header = (
        f"{'Q x N':>8} {'naive':>8} {'x-batch':>8} {'ours':>8} {'cost':>8} {'assign':>8} "
        f"{'ours x4L':>9} {'vs naive':>9} {'vs x-batch':>10}"
    )
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    for n in OBJECTS:
        logits = torch.randn(BATCH, QUERIES, generator=gen) * 2
        boxes = random_boxes(gen, BATCH, QUERIES)
        targets = [random_boxes(gen, n) for _ in range(BATCH)]
        layers = [
            (torch.randn(BATCH, QUERIES, generator=gen), random_boxes(gen, BATCH, QUERIES))
            for _ in range(4)
        ]
        host_costs = cost_only(logits, boxes, targets).numpy()
        fns = {
            "naive": partial(naive, logits, boxes, targets),
            "cross": partial(cross_batch, logits, boxes, targets),
            "ours": partial(MATCHER, logits, boxes, targets),
            "cost": partial(cost_only, logits, boxes, targets),
            "assign": partial(assign_only, host_costs, [n] * BATCH),
            "layers": partial(MATCHER.match_layers, layers, targets),
        }
        inner = {name: 1 if name == "naive" else 10 for name in fns}
        ms = {name: t / BATCH for name, t in interleaved_medians(fns, args.repeats, inner).items()}
        print(
            f"{f'{QUERIES}x{n}':>8} "
            + " ".join(f"{ms[k]:8.3f}" for k in ("naive", "cross", "ours", "cost", "assign"))
            + f" {ms['layers'] / 4:9.3f} {ms['naive'] / ms['ours']:8.0f}x"
            + f" {ms['cross'] / ms['ours']:9.1f}x"
        )
    print(
        "ours = cost + one host copy + assign; ours x4L = match_layers over 4 decoder layers, "
        "per image and layer"
    )


if __name__ == "__main__":
    main()
