"""Benchmark: padding of standard batches vs packed bins, and tiny-model step time padded vs packed.

    python benchmarks/packing.py [--budget 8192] [--batch-size 4] [--max-tokens 8192]
                                 [--timing-samples 8] [--repeat 3] [--threads 1] [--padding-only]

The length mix is that of the bundled examples: examples/raw converted twice, with one and with two
teachers per student (train + val episodes of each), counted by `ChatProcessor.measure` exactly
as training tokenises them.

Padding: pad-token share of standard batches of --batch-size (file order, and sorted by length)
against the budget share packed bins of --budget leave unused (`bbucli.inspection.batching`, the
training sampler's `pack_bins`), on the real episodes and on 1,000 episodes drawn from their
lengths (a dataset of realistic size; bin packing fills better with more samples). Next to it:
first-fit decreasing alone, the lower bound ceil(tokens / budget), and at --budget the fewest bins
any packing can reach (the cutting-stock integer program, solvable here because the mix has few
distinct lengths), and the seconds `pack_bins` takes for 10,000 episodes.

Step time: forward + backward of the random-weight tiny Qwen2.5-VL (fp32, CPU, --threads torch
threads) over the first --timing-samples episodes, per real token; median of --repeat rounds after
a warm-up round, the configurations interleaved in each round (load from other processes on a
shared machine then falls on all of them alike). First the model body alone (vision tower +
decoder, a trivial loss over every slot), in four configurations:
  padded file order / length-sorted   `StandardDataCollator` batches of --batch-size, sdpa;
  packed, sdpa mask                    `PackedDataCollator` rows, transformers' own packed-sequence
                                       mask (what runs on CPU today: attention over the whole row,
                                       masked, O(L^2) per row);
  packed, sdpa_varlen                  the same rows under `model.attn: sdpa_varlen` (the default
                                       without flash-attn): causal sdpa run sample by sample, no
                                       mask (checked here to give the same states as the sdpa mask).
Then the training step: what `bbu train configs/tiny.yaml` runs per step, built by
`bbucli.train.build` from that config (detection head, multi-task loss: LM, boxes, objectness,
captions; attention `sdpa_varlen`) on the same K=1 train episodes from its dataset: forward, loss,
backward, padded (file order, length-sorted) vs packed rows of --budget, and vs packed rows with
as many samples per step as the padded batches (the smallest budget giving no more rows than
there are padded batches): every step pays the same fixed costs (the LM loss's draw of
`lm_max_tokens`, matching, the optimizer update), so only padding and attention differ; rows of
--budget take more, smaller steps than batches of --batch-size. Twice: with 256 answer
tokens scored by the LM loss per step (tiny.yaml's `loss.lm_max_tokens`), and with every answer
token (`lm_max_tokens=null`, what a real-size config does): the tiny model's (128 x 151k) lm_head
then costs most of the step, the same padded or packed.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp

from bbucli.chat.processor import ChatProcessorOutput
from bbucli.convert.pipeline import ConvertOptions, convert_dataset
from bbucli.data.bin_packing import first_fit_decreasing, pack_bins
from bbucli.data.collators import PackedDataCollator, StandardDataCollator
from bbucli.inspection.batching import batching_stats, packed_bins
from bbucli.inspection.source import InspectOptions, chat_processor
from bbucli.model.loading import load_model
from bbucli.model.varlen_attention import ATTN_VARLEN, varlen_kwargs
from bbucli.schema import read_episodes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "raw"
TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
PAD_ID = 151643


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def forward_hidden(model: Any, batch: dict, packed: bool) -> torch.Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "pixel_values", "image_grid_thw")}
    if not packed:
        inputs["attention_mask"] = batch["attention_mask"]
    elif model.config.text_config._attn_implementation == ATTN_VARLEN:
        inputs.update(varlen_kwargs(batch["cu_seqlens"], batch["input_ids"].device))  # as BBUModel
    return model.model(**inputs, use_cache=False).last_hidden_state


def step(model: Any, batch: dict, packed: bool) -> None:
    """One forward + backward of the body alone (vision tower and decoder layers, loss = mean
    square of the last hidden states over every slot)."""
    model.zero_grad(set_to_none=True)
    hidden = forward_hidden(model, batch, packed)
    loss = hidden.square().mean()
    loss.backward()


def set_text_attention(model: Any, name: str) -> None:
    model.config.text_config._attn_implementation = name


def length_mix(folder: Path, max_tokens: int) -> tuple[list[int], list[tuple[Path, Any]]]:
    episodes = []
    for k in (1, 2):
        out = folder / f"k{k}" / "data.jsonl"
        convert_dataset(EXAMPLES, out, ConvertOptions(teachers=k, val_ratio=0.25))
        for name in ("data.jsonl", "data.val.jsonl"):
            episodes += [(out.parent, e) for e in read_episodes(out.parent / name)]
    chat = chat_processor(InspectOptions(max_tokens=max_tokens))
    lengths = [chat.measure(e, root).tokens for root, e in episodes]
    return lengths, episodes


def print_padding(
    title: str, lengths: list[int], batch_size: int, budgets: list[int]
) -> list[dict[str, Any]]:
    """Print (and return) padding of standard batches against packed bins for each budget; the
    packed bins next to first-fit decreasing alone and to the lower bound ceil(tokens / budget)."""
    print(
        f"{title}: {len(lengths)} episodes, tokens min {min(lengths)} / median "
        f"{statistics.median(lengths):g} / max {max(lengths)}"
    )
    figures = []
    for budget in budgets:
        s = batching_stats(lengths, batch_size, budget)
        fitting = [n for n in lengths if n <= budget]
        bound_bins = -(-sum(fitting) // budget)
        ffd_bins = len(first_fit_decreasing(fitting, budget))
        figures.append(
            {
                "episodes": len(lengths),
                "budget": budget,
                "standard_pad_file_order": s.standard_pad_file_order,
                "standard_pad_sorted": s.standard_pad_sorted,
                "packed_bins": s.packed_bins,
                "packed_unused": s.packed_unused,
                "ffd_bins": ffd_bins,
                "ffd_unused": 1 - sum(fitting) / (ffd_bins * budget) if ffd_bins else 0.0,
                "lower_bound_bins": bound_bins,
                "lower_bound_unused": 1 - sum(fitting) / (bound_bins * budget) if fitting else 0.0,
            }
        )
        f = figures[-1]
        print(
            f"  B={batch_size}: pad {100 * s.standard_pad_file_order:5.1f}% file order, "
            f"{100 * s.standard_pad_sorted:5.1f}% length-sorted | packed {budget}: "
            f"{100 * s.packed_unused:4.1f}% of the budget unused, {s.packed_bins} bins "
            f"({s.samples_per_bin:.1f} samples/bin), no pad tokens; first-fit decreasing "
            f"{100 * f['ffd_unused']:.1f}% ({ffd_bins}), lower bound "
            f"{100 * f['lower_bound_unused']:.1f}% ({bound_bins})"
        )
    return figures


def packing_speed(lengths: list[int], budget: int, n: int = 10_000) -> float:
    """Seconds `pack_bins` takes for `n` episodes drawn from `lengths` (what the sampler pays
    once per run)."""
    drawn = random.Random(1).choices(lengths, k=n)
    start = time.perf_counter()
    pack_bins(drawn, budget)
    return time.perf_counter() - start


def optimum_bins(lengths: list[int], budget: int, max_patterns: int = 20_000) -> int | None:
    """The fewest bins any packing can use, for a mix of few distinct lengths: the cutting-stock
    integer program over every pattern (multiset of lengths fitting the budget), solved by
    scipy's HiGHS. None when there are too many patterns to list."""
    counts = collections.Counter(n for n in lengths if n <= budget)
    sizes = sorted(counts)
    if not sizes:
        return 0
    most = budget // sizes[0]
    patterns = []
    for r in range(1, most + 1):
        for combo in itertools.combinations_with_replacement(range(len(sizes)), r):
            if sum(sizes[i] for i in combo) <= budget:
                patterns.append(collections.Counter(combo))
                if len(patterns) > max_patterns:
                    return None
    uses = np.array([[p[i] for p in patterns] for i in range(len(sizes))], dtype=float)
    need = np.array([counts[n] for n in sizes], dtype=float)
    result = milp(
        np.ones(len(patterns)),
        constraints=LinearConstraint(uses, lb=need, ub=np.inf),
        integrality=np.ones(len(patterns)),
        bounds=Bounds(0, np.inf),
        options={"time_limit": 60},
    )
    return round(result.fun) if result.success else None


def training_parts(folder: Path, lm_max_tokens: int | None) -> tuple[Any, Any, Any]:
    """(BBUModel, MultiTaskLoss, train EpisodeDataset) of configs/tiny.yaml on the K=1 conversion
    in `folder` (`length_mix` wrote it), built as `bbu train` builds them."""
    from bbucli.train.build import (
        build_loss,
        build_model,
        build_vocabulary,
        freeze_idle,
        learning_rates,
    )
    from bbucli.train.build_data import build_conversation, load_datasets
    from bbucli.train.config.loading import load_config

    data = folder / "k1"
    overrides = [
        f"data.train={data / 'data.jsonl'}",
        f"data.val={data / 'data.val.jsonl'}",
        f"data.teachers={data / 'data.teachers.jsonl'}",
        "data.max_tokens=8192",
        "data.max_tokens_per_batch=8192",
        "model.attn=sdpa_varlen",
        f"train.output_dir={folder / 'run'}",
        f"loss.lm_max_tokens={'null' if lm_max_tokens is None else lm_max_tokens}",
    ]
    cfg = load_config(TINY_CONFIG, overrides, target="cpu")
    conversation = build_conversation(cfg)
    datasets = load_datasets(cfg, conversation.chat)
    vocab = build_vocabulary(cfg, conversation.processor, conversation.classes)
    model = build_model(cfg, vocab, learning_rates(cfg))
    loss = build_loss(cfg, conversation.processor, vocab)
    freeze_idle(model, loss)
    return model, loss, datasets.train


def training_step_times(
    folder: Path, args: argparse.Namespace, lm_max_tokens: int | None
) -> dict[str, Any]:
    """Median seconds of `bbu train`'s forward + loss + backward over the first
    --timing-samples train episodes: padded (file order, length-sorted) vs packed rows of
    --budget, and vs packed rows as few as the padded batches (`equal_steps_budget`)."""
    model, loss_fn, dataset = training_parts(folder, lm_max_tokens)
    samples = [dataset[i] for i in range(min(args.timing_samples, len(dataset)))]
    real = sum(s.length for s in samples)
    lengths = [s.length for s in samples]
    b = args.batch_size
    standard, packed = StandardDataCollator(PAD_ID), PackedDataCollator()
    ordered = sorted(samples, key=lambda s: s.length)
    padded = [standard(samples[i : i + b]) for i in range(0, len(samples), b)]
    equal = equal_steps_budget(lengths, len(padded))
    configs = {
        "padded, file order": padded,
        "padded, length-sorted": [standard(ordered[i : i + b]) for i in range(0, len(ordered), b)],
        "packed, sdpa_varlen": [
            packed([samples[i] for i in bin_]) for bin_ in packed_bins(lengths, args.budget)
        ],
        "packed, equal steps": [
            packed([samples[i] for i in bin_]) for bin_ in packed_bins(lengths, equal)
        ],
    }

    def step(batch: dict) -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model, model(dict(batch)), batch, step=1).total.backward()

    times: dict[str, list[float]] = {name: [] for name in configs}
    for round_ in range(args.repeat + 1):  # interleaved; the first round is a warm-up
        for name, batches in configs.items():
            start = time.perf_counter()
            for batch in batches:
                step(batch)
            if round_:
                times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    title = "every answer token" if lm_max_tokens is None else f"{lm_max_tokens} per step"
    print(f" bbu train step (configs/tiny.yaml), LM loss over {title}:")
    for name, batches in configs.items():
        slots = sum(batch["input_ids"].numel() for batch in batches)
        budget = {
            "packed, sdpa_varlen": f", rows of {args.budget}",
            "packed, equal steps": (f", rows of {equal}"),
        }.get(name, "")
        print(
            f"  {name:<29} {len(batches)} steps{budget}, {slots:>6,} slots "
            f"({100 * (1 - real / slots):4.1f}% pad): {seconds[name]:6.2f} s, "
            f"{1e6 * seconds[name] / real:6.1f} us/real token"
        )
    for name in ("packed, sdpa_varlen", "packed, equal steps"):
        print(
            f"  -> {name}: {seconds['padded, file order'] / seconds[name]:.2f}x padded file "
            f"order, {seconds['padded, length-sorted'] / seconds[name]:.2f}x padded length-sorted "
            "(per real token)"
        )
    return {
        "episodes": len(samples),
        "real_tokens": real,
        "equal_steps_budget": equal,
        "seconds": seconds,
    }


def equal_steps_budget(lengths: list[int], steps: int, granularity: int = 1024) -> int:
    """The smallest budget (a multiple of `granularity`) whose packed rows are no more than
    `steps`: packed rows then carry as many samples per step as the padded batches, so the
    per-step costs (the LM loss's `lm_max_tokens` draw, matching, the optimizer update) are
    paid as often on both sides."""
    budget = -(-max(lengths) // granularity) * granularity
    while len(packed_bins(lengths, budget)) > steps:
        budget += granularity
    return budget


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--timing-samples", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--padding-only", action="store_true", help="skip the step timings (seconds, not minutes)"
    )
    return parser


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Print every figure of this benchmark and return them (benchmarks/packing_report.py)."""
    results: dict[str, Any] = {}
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n"
    )

    with tempfile.TemporaryDirectory() as tmp:
        lengths, episodes = length_mix(Path(tmp), args.max_tokens)
        budgets = [args.budget, 2 * args.budget, 4 * args.budget]
        results["padding_examples"] = print_padding(
            "examples, K=1 and K=2", lengths, args.batch_size, budgets
        )
        drawn = random.Random(0).choices(lengths, k=1000)
        results["padding_drawn_1000"] = print_padding(
            "1,000 drawn from that mix", drawn, args.batch_size, budgets
        )
        for key, mix in (("examples", lengths), ("drawn_1000", drawn)):
            best = optimum_bins(mix, args.budget)
            results[f"optimum_bins_{key}"] = best
            if best:
                fitting = sum(n for n in mix if n <= args.budget)
                print(
                    f"fewest bins possible at {args.budget}, {key}: {best} "
                    f"({100 * (1 - fitting / (best * args.budget)):.1f}% unused; cutting-stock "
                    "integer program)"
                )
        results["pack_seconds_10k"] = packing_speed(lengths, args.budget)
        print(f"pack_bins on 10,000 drawn episodes: {results['pack_seconds_10k']:.2f} s")
        if args.padding_only:
            return results

        chat = chat_processor(InspectOptions(max_tokens=args.max_tokens))
        chosen = episodes[: args.timing_samples]
        samples: list[ChatProcessorOutput] = [chat.process_sample(e, root) for root, e in chosen]
        real = sum(s.length for s in samples)
        b = args.batch_size
        file_order = [samples[i : i + b] for i in range(0, len(samples), b)]
        ordered = sorted(samples, key=lambda s: s.length)
        by_length = [ordered[i : i + b] for i in range(0, len(ordered), b)]
        bins = [
            [samples[i] for i in bin_]
            for bin_ in packed_bins([s.length for s in samples], args.budget)
        ]
        standard, packed = StandardDataCollator(PAD_ID), PackedDataCollator()
        padded_file = [standard(batch) for batch in file_order]
        padded_sorted = [standard(batch) for batch in by_length]
        rows = [packed(bin_) for bin_ in bins]

        model = load_model("tiny", attn_implementation="sdpa")
        with torch.no_grad():
            reference = forward_hidden(model, rows[0], packed=True)
            set_text_attention(model, ATTN_VARLEN)
            diff = (forward_hidden(model, rows[0], packed=True) - reference).abs().max().item()
            set_text_attention(model, "sdpa")
        print(
            f"\nstep time on {len(samples)} episodes ({real:,} real tokens), median of "
            f"{args.repeat}; sdpa_varlen == sdpa mask within {diff:.1e}"
        )

        configs = (
            ("padded, file order", padded_file, False, "sdpa"),
            ("padded, length-sorted", padded_sorted, False, "sdpa"),
            ("packed, sdpa mask", rows, True, "sdpa"),
            ("packed, sdpa_varlen", rows, True, ATTN_VARLEN),
        )
        print(" body only (vision + decoder):")
        times: dict[str, list[float]] = {name: [] for name, *_ in configs}
        # Round-robin over the configurations, so that load from other processes on a shared
        # machine falls on all of them alike; the first round is a warm-up.
        for round_ in range(args.repeat + 1):
            for name, batches, is_packed, attention in configs:
                set_text_attention(model, attention)
                start = time.perf_counter()
                for batch in batches:
                    step(model, batch, is_packed)
                if round_:
                    times[name].append(time.perf_counter() - start)
        seconds = {name: statistics.median(t) for name, t in times.items()}
        results["step_body"] = {
            "episodes": len(samples),
            "real_tokens": real,
            "seconds": seconds,
            "varlen_max_abs_diff": diff,
        }
        for name, batches, _, _ in configs:
            slots = sum(batch["input_ids"].numel() for batch in batches)
            print(
                f"  {name:<29} {len(batches)} steps, {slots:>6,} slots "
                f"({100 * (1 - real / slots):4.1f}% pad): {seconds[name]:6.2f} s, "
                f"{1e6 * seconds[name] / real:6.1f} us/real token"
            )
        for name in ("packed, sdpa mask", "packed, sdpa_varlen"):
            print(
                f"  -> {name}: {seconds['padded, file order'] / seconds[name]:.2f}x padded "
                f"file order, {seconds['padded, length-sorted'] / seconds[name]:.2f}x padded "
                "length-sorted (per real token)"
            )
        for key, lm_max_tokens in (("train_step", 256), ("train_step_all_tokens", None)):
            results[key] = training_step_times(Path(tmp), args, lm_max_tokens)
    return results


def main() -> None:
    measure(build_parser().parse_args())


if __name__ == "__main__":
    main()
