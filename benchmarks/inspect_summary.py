"""Benchmark: episodes/s of the `bbu inspect` summary (image headers only) against decoding every image.

(Not named inspect.py: run as a script, a file of that name shadows the standard library's
`inspect` for every script in this folder.)

    python benchmarks/inspect_summary.py [--episodes 10000] [--baseline-episodes 150] [--repeat 3] [--cores 1]

Converts examples/raw (16 photos, one teacher per student) into a temp folder, then writes three
JSONL files of --episodes episodes each by replicating its train/val episodes:
  replicated  every episode points at the converted images (13 files, the same answers again);
  jittered    the same images, every student box moved by a few pixels, so no two answers are
              alike and answer lengths cannot come from a cache of whole answers;
  distinct    jittered, and every student image is its own file (hard links of the converted
              JPEGs), so the per-path header cache never hits: what a 10k-photo export costs.
and times, pinned to --cores CPU cores with torch and tokenizer threads at 1:
  summary     `bbucli.inspection.summary.summarize` (the processor loaded beforehand);
  decode      only decoding every image of every episode (Image.open + exif_transpose + load):
              a lower bound for any count that decodes pixels;
  pipeline    `ChatProcessor.process_sample` per episode: decode + the Qwen2-VL pixel pipeline
              (resize, normalise, patchify) + tokenisation, i.e. counting by building the tensors.
Baselines run on the first --baseline-episodes episodes (they are slow; rates are per episode).
Each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from bbucli.convert.pipeline import ConvertOptions, convert_dataset  # noqa: E402
from bbucli.inspection.source import InspectOptions, chat_processor  # noqa: E402
from bbucli.inspection.summary import summarize  # noqa: E402
from bbucli.schema import read_episodes  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "raw"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pin(cores: int) -> str:
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        chosen = sorted(os.sched_getaffinity(0))[:cores]
        os.sched_setaffinity(0, chosen)
        return f"pinned to CPU {chosen}"
    return "not pinned (no sched_setaffinity)"


def base_records(folder: Path) -> list[dict]:
    convert_dataset(EXAMPLES, folder / "data.jsonl", ConvertOptions(val_ratio=0.25))
    lines = []
    for name in ("data.jsonl", "data.val.jsonl"):
        lines += (folder / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line]


def jitter(record: dict, rng: random.Random, sizes: dict[str, tuple[int, int]]) -> dict:
    record = json.loads(json.dumps(record))
    w, h = sizes[record["student"]["images"][0]]
    for obj in record["student"]["objects"]:
        x1, y1, x2, y2 = obj["bbox_2d"]
        dx, dy = rng.randint(-3, 3), rng.randint(-3, 3)
        dx, dy = max(-x1, min(dx, w - x2)), max(-y1, min(dy, h - y2))
        obj["bbox_2d"] = [x1 + dx, y1 + dy, x2 + dx, y2 + dy]
    return record


def write_variants(folder: Path, base: list[dict], n: int) -> dict[str, Path]:
    rng = random.Random(0)
    sizes = {}
    for r in base:
        for s in [*r["teachers"], r["student"]]:
            with Image.open(folder / s["images"][0]) as im:
                sizes[s["images"][0]] = im.size
    replicated = [base[i % len(base)] for i in range(n)]
    jittered = [jitter(r, rng, sizes) for r in replicated]
    (folder / "distinct").mkdir()
    distinct = []
    for i, r in enumerate(jittered):
        r = json.loads(json.dumps(r))
        source = folder / r["student"]["images"][0]
        link = Path("distinct") / f"{i:06d}{source.suffix}"
        os.link(source, folder / link)
        sizes[str(link)] = sizes[r["student"]["images"][0]]
        r["student"]["images"] = [str(link)]
        distinct.append(r)
    paths = {}
    for name, records in (
        ("replicated", replicated),
        ("jittered", jittered),
        ("distinct", distinct),
    ):
        path = folder / f"{name}.jsonl"
        path.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
        )
        paths[name] = path
    return paths


def median_rate(run: Callable[[], int], repeat: int) -> float:
    """Median episodes/s of `run` (which returns how many episodes it handled)."""
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        count = run()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def decode_all(path: Path, limit: int) -> int:
    episodes = read_episodes(path)[:limit]
    for episode in episodes:
        for sample in episode.samples:
            with Image.open(path.parent / sample.image) as im:
                ImageOps.exif_transpose(im).load()
    return len(episodes)


def process_all(path: Path, limit: int) -> int:
    chat = chat_processor(InspectOptions())
    episodes = read_episodes(path)[:limit]
    for episode in episodes:
        chat.process_sample(episode, path.parent)
    return len(episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--baseline-episodes", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cores", type=int, default=1)
    args = parser.parse_args()
    pinned = pin(args.cores)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {pinned}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, Pillow {Image.__version__}"
    )
    chat_processor(InspectOptions())  # load the tokenizer once, outside the timings

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_variants(folder, base_records(folder), args.episodes)
        print(f"{args.episodes} episodes per file (1 teacher + 1 student each), 532x728 JPEGs\n")
        print(
            f"{'file':<11} {'summary eps/s':>14} {'decode eps/s':>13} {'pipeline eps/s':>15} "
            f"{'x decode':>9} {'x pipeline':>11}"
        )
        limit = args.baseline_episodes
        for name, path in paths.items():
            summary = median_rate(lambda p=path: summarize(p).episodes, args.repeat)
            decode = median_rate(lambda p=path: decode_all(p, limit), args.repeat)
            pipeline = median_rate(lambda p=path: process_all(p, limit), max(1, args.repeat - 2))
            print(
                f"{name:<11} {summary:>14,.0f} {decode:>13,.0f} {pipeline:>15,.1f} "
                f"{summary / decode:>8.1f}x {summary / pipeline:>10.0f}x"
            )
        final = summarize(paths["distinct"])
        print(
            f"\nsummary of 'distinct': {final.episodes} episodes, {final.images} images, "
            f"tokens median {final.tokens.median:g}, {len(final.problems)} problems"
        )


if __name__ == "__main__":
    main()
