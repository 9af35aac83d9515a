"""Where a training step's time goes on the real 3B shape: stage timings and a torch profile.

    python benchmarks/gpu_profile.py --device cuda --out DIR     (GPU; DIR gets two files)
    python benchmarks/gpu_profile.py --device cpu --tiny --out DIR   (how it is tested here)

`benchmarks/gpu.py` measured a 3B step on one H200 at about 6% model FLOPs utilisation, with
steps of a 7B taking only about 1.5 s more than a 3B's: most of the step does not scale with the
decoder. This script, on the same model, config and packed row (it reuses gpu.py's set-up), times
the stages of one step with the device synchronised between them (vision tower forward alone,
BBUModel forward, multi-task loss, backward, optimizer step), then runs one step under
`torch.profiler` and writes:
  DIR/gpu_profile.json   stage seconds, kernel launches, device-busy share of the step
  DIR/gpu_profile.txt    the top operators by self device time and by self CPU time
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu  # noqa: E402  (benchmarks/gpu.py: the shared set-up)

from bbucli.data.collators import PackedDataCollator  # noqa: E402
from bbucli.model.param_groups import build_param_groups  # noqa: E402
from bbucli.train.build import learning_rates  # noqa: E402


def stage_times(bbu: Any, cfg: Any, loss_fn: Any, batch: dict, device: torch.device) -> dict:
    """Seconds of each stage of one training step, synchronised between stages."""
    groups = build_param_groups(bbu, learning_rates(cfg), cfg.optim.weight_decay)
    optimizer = torch.optim.AdamW(groups, fused=device.type == "cuda")
    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Any) -> Any:
        gpu.sync(device)
        start = time.perf_counter()
        result = fn()
        gpu.sync(device)
        times.setdefault(name, []).append(time.perf_counter() - start)
        return result

    inner = bbu.qwen.model
    for step in range(3):
        optimizer.zero_grad(set_to_none=True)
        with gpu.autocast(device):
            with torch.no_grad():
                timed(
                    "vision_forward_no_grad",
                    lambda: inner.get_image_features(
                        batch["pixel_values"], batch["image_grid_thw"]
                    ),
                )
            out = timed("bbu_forward", lambda: bbu(batch))
            total = timed("loss", lambda s=step, o=out: loss_fn(bbu, o, batch, step=s + 1).total)
        timed("backward", total.backward)
        timed("optimizer", optimizer.step)
    optimizer.zero_grad(set_to_none=True)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}  # median of 3


def profile_step(bbu: Any, cfg: Any, loss_fn: Any, batch: dict, device: torch.device) -> tuple:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    gpu.sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        with gpu.autocast(device):
            out = bbu(batch)
            total = loss_fn(bbu, out, batch, step=1).total
        total.backward()
        gpu.sync(device)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    device_key = "self_device_time_total"
    busy_us = sum(getattr(e, device_key, 0) for e in events)
    launches = sum(e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cuLaunch")))
    by_device = events.table(sort_by=device_key, row_limit=30, max_name_column_width=70)
    by_cpu = events.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70)
    summary = {
        "profiled_step_wall_s": wall,
        "device_busy_s": busy_us / 1e6,
        "device_busy_share": busy_us / 1e6 / wall if wall else 0.0,
        "kernel_launches": launches,
    }
    text = f"== by self device time ==\n{by_device}\n\n== by self CPU time ==\n{by_cpu}\n"
    return summary, text


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--vision-attn", choices=("windows", "sdpa"), default="windows")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": gpu.machine(device)}
    with tempfile.TemporaryDirectory() as tmp:
        parts: dict[str, Any] = {}
        setup_args = gpu.parse_args(
            [
                "--device",
                args.device,
                "--vision-attn",
                args.vision_attn,
                *(["--tiny"] if args.tiny else []),
            ]
        )
        report["setup"] = gpu.setup(setup_args, Path(tmp), "3b", device, parts)
        bbu, cfg, loss_fn = parts["bbu"], parts["cfg"], parts["loss_fn"]
        bbu.train()
        if (cfg.train.model_extra or {}).get("activation_checkpointing"):
            bbu.activation_checkpointing_enable()
        batch = gpu.to_device(PackedDataCollator()(parts["data"]["row"]), device)
        report["stage_seconds"] = stage_times(bbu, cfg, loss_fn, batch, device)
        print(json.dumps(report["stage_seconds"], indent=1), flush=True)
        report["profile"], text = profile_step(bbu, cfg, loss_fn, batch, device)
        print(json.dumps(report["profile"], indent=1), flush=True)
    (args.out / "gpu_profile.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "gpu_profile.txt").write_text(text)
    print(text[:6000])
    return report


if __name__ == "__main__":
    main()
