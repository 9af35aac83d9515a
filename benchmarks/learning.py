"""Benchmark: AP50 and AP of the detection head on the val split against wall time, for the
`bbu demo` run, and a PNG curve.

    python benchmarks/learning.py [--out DIR] [--minutes M | --steps N] [--every K] [--seed S]
                                  [--json FILE] [--png FILE]

Runs the demo's own loop through `bbucli.demo.run.run_demo` with its defaults (raw set, config,
images, training length): only the flags given here are passed on. --every K adds the overrides
`train.save_strategy=steps train.save_steps=K`; `train.save_total_limit=null` is always added so
the checkpoint rotation deletes none. Every "save" event of the training records the step, the
training seconds (since the Trainer began) and the demo seconds (since `run_demo` was called:
conversion, inspection, the timing dry run and model building included).

After the demo returns, every saved checkpoint-N is evaluated on the val split with
`evaluate_checkpoint` (head only, nothing written). The final checkpoint is the demo's own
evaluation (its AP50 / AP are reused), at the time training ended; a checkpoint-N of the last step
holds the same weights and is not evaluated twice. The per-checkpoint evaluation runs after the
demo, so neither time axis counts it. Saving more often than the demo does adds the saving time to
both axes; the "save s" column is the time from the end of a checkpoint's optimizer step to its
save event (logging, the Trainer's own eval at that step and the save).

Prints the table (step | train s | demo s | AP50 | AP) and the machine; writes the JSON (rows,
machine, the demo's max_steps, seed and minutes, its demo.json numbers) and the PNG: AP50 and AP
against training seconds, a dashed line at AP50 0.5. Each checkpoint of the tiny model is a few
hundred MB (weights twice plus the optimizer state): mind the disk with a small --every.
Defaults: --out runs/learning-<timestamp>, --json benchmarks/results/learning.json,
--png benchmarks/results/learning.png.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from bbucli.demo.run import DEMO_HYPOTHESES, DemoProgress, DemoResult, run_demo
from bbucli.evaluation.plots import font

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
AP50_TARGET = 0.5
AP50_COLOR, AP_COLOR, TARGET_COLOR = (31, 119, 180), (255, 127, 14), (120, 120, 120)
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 900, 580, 80, 40, 90, 70


@dataclass(frozen=True)
class CurvePoint:
    """One evaluated checkpoint. train_s: seconds since the Trainer began when it was saved;
    demo_s: seconds since run_demo was called; save_s: from the end of its optimizer step to
    its save event; ap50 / ap: the head on the val split (None: undefined)."""

    step: int
    train_s: float
    demo_s: float
    ap50: float | None
    ap: float | None
    checkpoint: str
    save_s: float = 0.0


@dataclass(frozen=True)
class Save:
    step: int
    train_s: float
    demo_s: float
    save_s: float
    path: Path


class SaveRecorder:
    """The progress callback of run_demo: keeps every checkpoint save and the end of training."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.saves: list[Save] = []
        self.end: tuple[float, float] | None = None  # (train_s, demo_s)
        self.step_end_s: dict[int, float] = {}
        self.stage = ""

    def __call__(self, event: DemoProgress) -> None:
        demo_s = time.perf_counter() - self.started
        if event.stage != self.stage:
            self.stage = event.stage
            print(f"[{demo_s:7.1f} s] {event.stage}", flush=True)
        train = event.train
        if train is None:
            return
        if train.kind == "step":
            self.step_end_s[train.step] = train.elapsed_s
        elif train.kind == "save" and train.path is not None:
            save_s = train.elapsed_s - self.step_end_s.get(train.step, train.elapsed_s)
            self.saves.append(Save(train.step, train.elapsed_s, demo_s, save_s, train.path))
            print(
                f"[{demo_s:7.1f} s] saved {train.path.name} (step {train.step}/{train.max_steps}, "
                f"{train.elapsed_s:.1f} s of training)",
                flush=True,
            )
        elif train.kind == "end":
            self.end = (train.elapsed_s, demo_s)


def machine() -> dict[str, object]:
    """CPU model, core count, torch version and threads, the GPU when there is one."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
    }


def machine_line(info: dict[str, object]) -> str:
    gpu = f", {info['gpu']}" if info.get("gpu") else ""
    threads = info["torch_threads"]
    return f"{info['cpu']}, {info['cores']} cores{gpu}, torch {info['torch']} ({threads} thread{'s' * (threads != 1)})"


def _final_is_last(run_dir: Path) -> bool:
    """final/ holds the last step's weights unless the Trainer reloaded the best at the end."""
    from bbucli.errors import BbuError
    from bbucli.train.config.overrides import read_yaml

    try:
        data, _ = read_yaml(run_dir / "config.yaml")
    except BbuError:  # a missing or odd config only costs one more evaluation
        return False
    return not (data.get("train") or {}).get("load_best_model_at_end", False)


def evaluate_saves(recorder: SaveRecorder, result: DemoResult) -> list[CurvePoint]:
    """One point per saved checkpoint (evaluated now on the val split) plus the final one (the
    demo's own evaluation), in step order."""
    from bbucli.convert.pipeline import output_paths
    from bbucli.infer.checkpoint_eval import evaluate_checkpoint

    val = output_paths(result.data)["val"]
    last_step = result.train.global_step
    skip_last = _final_is_last(result.run_dir)
    todo = [s for s in recorder.saves if not (skip_last and s.step == last_step)]
    points = []
    for i, save in enumerate(todo, 1):
        if not save.path.is_dir():
            print(f"{save.path} is gone (deleted by the rotation?): skipped", file=sys.stderr)
            continue
        print(f"evaluating {save.path.name} ({i}/{len(todo)})", flush=True)
        run = evaluate_checkpoint(
            save.path, val, None, sources=("head",), write=False, hypotheses=DEMO_HYPOTHESES
        )
        coco = run.sources[0].result.coco
        points.append(
            CurvePoint(
                save.step,
                save.train_s,
                save.demo_s,
                coco.get("AP50"),
                coco.get("AP"),
                str(save.path),
                save.save_s,
            )
        )
    at_last = next((s for s in recorder.saves if s.step == last_step), None)
    train_s, demo_s = recorder.end or (result.train.runtime_s, result.seconds)
    points.append(
        CurvePoint(
            last_step,
            at_last.train_s if at_last else train_s,
            at_last.demo_s if at_last else demo_s,
            result.ap50,
            result.ap,
            str(result.checkpoint),
            at_last.save_s if at_last else 0.0,
        )
    )
    return sorted(points, key=lambda p: (p.step, p.checkpoint == str(result.checkpoint)))


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_table(rows: Sequence[CurvePoint]) -> str:
    """The text table: step | train s | demo s | save s | AP50 | AP | checkpoint folder."""
    lines = [
        f"{'step':>6}{'train s':>10}{'demo s':>10}{'save s':>9}{'AP50':>8}{'AP':>8}  checkpoint"
    ]
    for r in rows:
        lines.append(
            f"{r.step:>6}{r.train_s:>10.1f}{r.demo_s:>10.1f}{r.save_s:>9.1f}{_f(r.ap50):>8}{_f(r.ap):>8}  {Path(r.checkpoint).name}"
        )
    return "\n".join(lines)


def nice_ticks(high: float, count: int = 6) -> list[float]:
    """Round tick values 0, d, 2d, ... covering [0, high] with about `count` intervals."""
    high = max(high, 1e-9)
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(high / step - 1e-9) + 1)]


def render_curve(rows: Sequence[CurvePoint], title: str) -> Image.Image:
    """AP50 and AP (y, 0..1) against training seconds (x), a dashed line at the AP50 target;
    `title` may hold two lines."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    small, big = font(13), font(16)
    left, top, right, bottom = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    xs = nice_ticks(max((r.train_s for r in rows), default=1.0))
    x_max = xs[-1]

    def at(x: float, y: float) -> tuple[float, float]:
        return left + x / x_max * (right - left), bottom - y * (bottom - top)

    draw.multiline_text((left, 10), title, fill=(0, 0, 0), font=big, spacing=6)
    for x in xs:
        px, _ = at(x, 0)
        draw.line([(px, top), (px, bottom)], fill=(228, 228, 228))
        draw.text((px - 10, bottom + 6), f"{x:g}", fill=(60, 60, 60), font=small)
    for i in range(6):
        y = i / 5
        _, py = at(0, y)
        draw.line([(left, py), (right, py)], fill=(228, 228, 228))
        draw.text((left - 32, py - 7), f"{y:.1f}", fill=(60, 60, 60), font=small)
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    draw.text(
        ((left + right) // 2 - 170, bottom + 28),
        "training seconds (checkpoint evaluation not counted)",
        fill=(0, 0, 0),
        font=small,
    )
    draw.text((8, top - 22), "AP (head, val split)", fill=(0, 0, 0), font=small)

    _, ty = at(0, AP50_TARGET)
    for x0 in range(left, right, 14):
        draw.line([(x0, ty), (min(x0 + 8, right), ty)], fill=TARGET_COLOR, width=2)
    draw.text((right - 90, ty - 18), "AP50 target", fill=TARGET_COLOR, font=small)

    # AP50 wide underneath, AP narrow on top: where they are equal (both 0 early on) both show.
    series = (
        ("AP50", AP50_COLOR, [r.ap50 for r in rows], 6),
        ("AP (0.5:0.95)", AP_COLOR, [r.ap for r in rows], 3),
    )
    for _, color, values, width in series:
        points = [at(r.train_s, v) for r, v in zip(rows, values, strict=True) if v is not None]
        if len(points) > 1:
            draw.line(points, fill=color, width=width)
        r = width // 2 + 3
        for px, py in points:
            draw.ellipse([px - r, py - r, px + r, py + r], fill=color)
    for i, (name, color, _, width) in enumerate(series):
        y = top + 10 + 20 * i
        draw.line([(left + 12, y + 7), (left + 40, y + 7)], fill=color, width=width)
        draw.text((left + 48, y), name, fill=(0, 0, 0), font=small)
    return image


def plot_curve(rows: Sequence[CurvePoint], png: str | Path, title: str) -> Path:
    """Write `render_curve(rows, title)` to `png` (parent folders made)."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    render_curve(rows, title).save(png, format="PNG", optimize=True)
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="demo folder (default: runs/learning-<timestamp>)"
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--minutes", type=float, default=None, help="the demo's time budget (default: the demo's)"
    )
    length.add_argument(
        "--steps", type=int, default=None, help="training steps instead of a budget"
    )
    parser.add_argument(
        "--every",
        type=int,
        default=None,
        help="save (and evaluate) a checkpoint every K steps (default: the config's save_steps)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the demo (default: the demo's)"
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "learning.json")
    parser.add_argument("--png", type=Path, default=RESULTS / "learning.png")
    args = parser.parse_args()
    if args.every is not None and args.every < 1:
        parser.error(f"--every must be >= 1, got {args.every}")

    out = args.out or REPO / "runs" / time.strftime("learning-%Y%m%d-%H%M%S")
    overrides = ["train.save_total_limit=null"]
    if args.every is not None:
        overrides += ["train.save_strategy=steps", f"train.save_steps={args.every}"]
    kwargs: dict[str, object] = {"overrides": overrides}
    for name, value in (("minutes", args.minutes), ("max_steps", args.steps), ("seed", args.seed)):
        if value is not None:
            kwargs[name] = value

    recorder = SaveRecorder()
    result = run_demo(out, progress=recorder, **kwargs)
    rows = evaluate_saves(recorder, result)

    info = machine()
    seed = (
        args.seed
        if args.seed is not None
        else inspect.signature(run_demo).parameters["seed"].default
    )
    minutes = args.minutes  # None: the demo planned no time budget (a step count)
    print()
    print(render_table(rows))
    print(
        f"\n{result.max_steps} steps, seed {seed}, demo {result.seconds / 60:.1f} min in all "
        f"({result.train.runtime_s:.0f} s training); out {result.out_dir}"
    )
    print(f"machine: {machine_line(info)}")

    title = f"bbu demo: {result.max_steps} steps, {result.seconds / 60:.1f} min in all\n{machine_line(info)}"
    png = plot_curve(rows, args.png, title)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": info,
        "max_steps": result.max_steps,
        "seed": seed,
        "minutes": minutes,
        "every": args.every,
        "planned_from_s": result.planned_from_s,
        "rows": [asdict(r) for r in rows],
        "demo": result.to_dict(),
    }
    args.json.write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json} and {png}")


if __name__ == "__main__":
    main()
