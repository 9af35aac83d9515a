"""Benchmark report: packing that pays and convert at the decoder's limit, side by side in one run.

    python benchmarks/packing_report.py [--json benchmarks/results/packing.json] [--repeat 3]
                                        [--images 48]

Runs benchmarks/packing.py (padded vs packed time per real token, tiny model, CPU, one thread:
`bbu train`'s step and the model body; unused budget in packed rows) and benchmarks/convert.py (images/s against naive Pillow on
one core, with the PSNR quality guard), prints their full output, then the three headline figures
next to their goals, and writes every figure to --json. The step-time and convert ratios come
from interleaved runs, so they hold on a shared machine better than the absolute times do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import convert  # noqa: E402  (benchmarks/convert.py, a sibling script)
import packing  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "packing.json"


def summary(padding: dict[str, Any], images: dict[str, Any]) -> list[str]:
    """The headline lines: packed vs padded, unused budget, convert speed and quality.
    padding: what `packing.measure` returns; images: what `convert.measure` returns."""
    lines = []
    for key, title in (
        ("train_step", "bbu train step (configs/tiny.yaml: 256 LM tokens per step)"),
        ("train_step_all_tokens", "bbu train step, LM loss over every answer token"),
    ):
        r = padding[key]
        seconds = r["seconds"]
        for packed, rows in (
            ("packed, equal steps", f"rows of {r['equal_steps_budget']}, as many steps as padded"),
            ("packed, sdpa_varlen", "rows of 8192, more and smaller steps"),
        ):
            lines.append(
                f"packed vs padded per real token, {title}, {rows}: "
                f"{seconds['padded, file order'] / seconds[packed]:.2f}x file order, "
                f"{seconds['padded, length-sorted'] / seconds[packed]:.2f}x length-sorted "
                "(goal >= 1.3x)"
            )
    seconds = padding["step_body"]["seconds"]
    lines.append(
        "packed (sdpa_varlen) vs padded per real token, model body (vision + decoder): "
        f"{seconds['padded, file order'] / seconds['packed, sdpa_varlen']:.2f}x file order, "
        f"{seconds['padded, length-sorted'] / seconds['packed, sdpa_varlen']:.2f}x length-sorted "
        "(goal >= 1.3x)"
    )
    for key, title in (("padding_examples", "examples"), ("padding_drawn_1000", "1,000 drawn")):
        row = padding[key][0]
        best = padding[f"optimum_bins_{key.removeprefix('padding_')}"]
        fewest = f", fewest possible {best} bins" if best else ""
        lines.append(
            f"unused budget in packed rows of {row['budget']}, {title}: "
            f"{100 * row['packed_unused']:.1f}% ({row['packed_bins']} bins{fewest}; first-fit "
            f"decreasing {100 * row['ffd_unused']:.1f}%, lower bound "
            f"{100 * row['lower_bound_unused']:.1f}%) (goal <= 2%)"
        )
    rates = images["images_per_s"]
    lines.append(
        f"convert {images['size'][0]}x{images['size'][1]}: {rates['bbu resize_to_file']:.1f} "
        f"images/s vs {rates['naive Pillow']:.1f} naive Pillow on one core "
        f"({images['speedup_vs_naive']:.2f}x wall, {images['speedup_vs_naive_cpu']:.2f}x CPU; "
        f"goal >= 3x), PSNR vs naive min {images['psnr_db']['min']:.1f} dB"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per timing")
    parser.add_argument("--images", type=int, default=48, help="photos for the convert benchmark")
    args = parser.parse_args()

    print("== benchmarks/packing.py ==")
    step = packing.measure(packing.build_parser().parse_args(["--repeat", str(args.repeat)]))
    print("\n== benchmarks/convert.py ==")
    images = convert.measure(
        convert.build_parser().parse_args(
            ["--images", str(args.images), "--repeat", str(args.repeat), "--workers", "2"]
        )
    )
    load = os.getloadavg()
    print(f"\n== side by side (load average {load[0]:.2f} at the end) ==")
    lines = summary(step, images)
    for line in lines:
        print(line)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": images["machine"],
        "load_average_end": load[0],
        "summary": lines,
        "packing": step,
        "convert": images,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
