"""Benchmark: images/s resizing phone photos for `bbu convert`, against a naive Pillow baseline.

    python benchmarks/convert.py [--images 48] [--size 1440x1920] [--workers 1 2 4] [--repeat 3]
                                [--noise 3.0]

Writes N photo-like JPEGs (quality 92, a quarter of them stored sideways or upside down with an
EXIF orientation, as phones do) into a temp folder, then times, in the same run:
  (a) naive: open, exif_transpose, LANCZOS resize to the smart_resize target, save JPEG;
  (b) ours:  bbucli.convert.images.resize_to_file: JPEG draft decode (libjpeg scales by 1/2 here),
             BICUBIC resample of that by torch's antialiased uint8 kernel on one thread (Pillow's
             filter, SIMD), EXIF transpose of the small result, save JPEG;
  (c) ours in a process pool of each --workers size.
Both paths write the same JPEG settings (quality 95, 4:4:4), so the ratio measures the pipeline.
Each figure is the best of --repeat runs, (a) and (b) taking turns in each. Also prints PSNR of
(b) against (a) before encoding (the quality guard), the same for (b) with a BILINEAR resample
(cheaper, less sharp), and where (b)'s time goes: a cProfile of resize_to_file over every photo,
its time split by the C call that spends it (JPEG decode, resample, copies of the pixels between
Pillow and torch, transpose, JPEG encode, file system), with the speed-up that would remain if
resampling cost nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import platform
import pstats
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from bbucli.convert.images import open_resized, resize_to_file
from bbucli.geometry import resized_wh

MAX_PIXELS = 512 * 28 * 28
# Orientation -> transpose turning upright pixels into the stored ones (exif_transpose inverts it).
_STORE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def photo_like(wh: tuple[int, int], seed: int, noise: float = 3.0) -> Image.Image:
    """A cabinet-photo stand-in with a phone photo's entropy: lit background, panels, screws,
    cables, text, slight blur and sensor noise of std `noise` (3.0: ~2 bits/pixel at q92)."""
    rng = np.random.default_rng(seed)
    w, h = wh
    image = Image.fromarray(rng.integers(40, 200, size=(6, 5, 3), dtype=np.uint8))
    image = image.resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    scale = w / 1440

    def rand_colour() -> tuple[int, int, int]:
        r, g, b = (int(v) for v in rng.integers(0, 256, 3))
        return r, g, b

    for _ in range(40):
        x, y = int(rng.integers(0, w - 50)), int(rng.integers(0, h - 50))
        bw, bh = int(rng.integers(40, 500) * scale), int(rng.integers(20, 300) * scale)
        draw.rectangle((x, y, x + bw, y + bh), fill=rand_colour(), outline=(20, 20, 20), width=2)
    for _ in range(120):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(4, 14) * scale)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(190, 190, 180), outline=(60, 60, 60))
        draw.line((x - r + 2, y, x + r - 2, y), fill=(50, 50, 50), width=2)
    for _ in range(30):
        points = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(4)]
        draw.line(points, fill=rand_colour(), width=int(rng.integers(2, 10)), joint="curve")
    for _ in range(60):
        xy = (int(rng.integers(0, w - 120)), int(rng.integers(0, h - 20)))
        draw.text(xy, "".join(chr(int(c)) for c in rng.integers(65, 91, 8)), fill=(0, 0, 0))
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.int16)
    noise = rng.standard_normal(pixels.shape, dtype=np.float32) * noise
    return Image.fromarray(
        np.clip(pixels + noise.round().astype(np.int16), 0, 255).astype(np.uint8)
    )


def orientation_for(seed: int) -> int:
    """Every 4th photo is stored rotated, cycling EXIF orientations 6, 8, 3."""
    return (6, 8, 3)[(seed // 4) % 3] if seed % 4 == 0 else 1


def write_photo(args: tuple[Path, tuple[int, int], int, float]) -> Path:
    """Photo `seed` as an upright `wh` JPEG; every 4th is stored rotated with EXIF 6, 8 or 3."""
    folder, wh, seed, noise = args
    upright = photo_like(wh, seed, noise)
    orientation = orientation_for(seed)
    exif = Image.Exif()
    if orientation != 1:
        upright = upright.transpose(_STORE[orientation])
        exif[0x0112] = orientation
    path = folder / f"photo{seed:03d}.jpg"
    upright.save(path, "JPEG", quality=92, exif=exif.tobytes())
    return path


def naive(src: Path, dst: Path, dst_wh: tuple[int, int]) -> None:
    with Image.open(src) as image:
        upright = ImageOps.exif_transpose(image)
    if upright.mode != "RGB":
        upright = upright.convert("RGB")
    upright.resize(dst_wh, Image.Resampling.LANCZOS).save(dst, "JPEG", quality=95, subsampling=0)


def ours(src: Path, dst: Path, dst_wh: tuple[int, int]) -> None:
    resize_to_file(src, dst, dst_wh)


def ours_bilinear(src: Path, dst: Path, dst_wh: tuple[int, int]) -> None:
    resize_to_file(src, dst, dst_wh, resample=Image.Resampling.BILINEAR)


def _job(args: tuple[str, Path, Path, tuple[int, int]]) -> None:
    name, src, dst, dst_wh = args
    (naive if name == "naive" else ours)(src, dst, dst_wh)


def time_serial(
    paths: Sequence[tuple[Callable[[Path, Path, tuple[int, int]], None], list]], repeat: int
) -> list[tuple[float, float]]:
    """Best wall-clock and best CPU seconds of this process over `repeat` runs of all jobs, for
    each `(fn, jobs)`; the paths take turns within each run, so that load from other processes
    on a shared machine falls on all of them alike (CPU time is what to compare there)."""
    best = [(math.inf, math.inf) for _ in paths]
    for _ in range(repeat):
        for k, (fn, jobs) in enumerate(paths):
            wall, cpu = time.perf_counter(), time.process_time()
            for src, dst, dst_wh in jobs:
                fn(src, dst, dst_wh)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[k] = (min(best[k][0], wall), min(best[k][1], cpu))
    return best


def time_pool(workers: int, jobs, repeat: int) -> float:
    tasks = [("ours", src, dst, dst_wh) for src, dst, dst_wh in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_job, tasks[:workers]))  # start and warm every worker first
        best = math.inf
        for _ in range(repeat):
            start = time.perf_counter()
            list(pool.map(_job, tasks, chunksize=2))
            best = min(best, time.perf_counter() - start)
    return best


# cProfile entries (file, line, name) -> stage: the C calls that do the work in resize_to_file.
_STAGES = (
    ("decode", ("'decode' of 'ImagingDecoder'",)),
    (
        "resample",
        (
            "'resize' of 'ImagingCore'",
            "'reduce' of 'ImagingCore'",
            "_upsample_bicubic2d_aa",
            "_upsample_bilinear2d_aa",
        ),
    ),
    ("pixel copies", ("numpy.array", "'join' of 'bytes'", "PIL._imaging.fill")),
    ("transpose", ("'transpose' of 'ImagingCore'",)),
    ("encode", ("'encode_to_file' of 'ImagingEncoder'", "'encode' of 'ImagingEncoder'")),
    ("file system", ("posix.", "'close' of '_io", "'write' of '_io", "io.open", "_io.open")),
)
# Pillow's raw codec packs pixels for numpy (Image.tobytes) and unpacks torch's result
# (Image.frombytes) through the same C methods as the JPEG codec: the caller tells them apart.
_COPY_CALLERS = ("tobytes", "frombytes")


def profile_stages(jobs) -> dict[str, float]:
    """Seconds per image of resize_to_file, by stage (cProfile, one pass over `jobs`)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for src, dst, dst_wh in jobs:
        ours(src, dst, dst_wh)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())  # tottime of every function
    stages = dict.fromkeys([name for name, _ in _STAGES] + ["Python"], 0.0)
    for (_, _, function), entry in stats.items():
        stage = next((name for name, keys in _STAGES if any(k in function for k in keys)), "Python")
        seconds = entry[2]
        if stage in ("decode", "encode"):
            copies = sum(t[2] for c, t in entry[4].items() if c[2] in _COPY_CALLERS)
            stages["pixel copies"] += copies
            seconds -= copies
        stages[stage] += seconds
    assert abs(sum(stages.values()) - total) < 1e-9
    return {name: seconds / len(jobs) for name, seconds in stages.items()}


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return 10.0 * math.log10(255.0**2 / max(float(np.mean((x - y) ** 2)), 1e-12))


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cores} cores, {model}, Python {platform.python_version()}, Pillow {PIL.__version__}, "
        f"torch {torch.__version__}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="number of photos (default 48)")
    parser.add_argument("--size", default="1440x1920", help="upright WxH of the photos")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="pool sizes")
    parser.add_argument(
        "--noise", type=float, default=3.0, help="sensor noise std; less noise decodes faster"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure, best kept")
    return parser


def measure(args: argparse.Namespace) -> dict:
    """Print every figure of this benchmark and return them (benchmarks/packing_report.py)."""
    wh = tuple(int(v) for v in args.size.lower().split("x"))
    dst_wh = resized_wh(wh, max_pixels=MAX_PIXELS)

    with tempfile.TemporaryDirectory(prefix="bbu-bench-") as tmp:
        folder = Path(tmp)
        (folder / "naive").mkdir()
        (folder / "ours").mkdir()
        with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
            sources = list(
                pool.map(write_photo, [(folder, wh, s, args.noise) for s in range(args.images)])
            )
        mb = sum(p.stat().st_size for p in sources) / len(sources) / 1e6
        jobs_naive = [(p, folder / "naive" / f"{p.stem}.jpeg", dst_wh) for p in sources]
        jobs_ours = [(p, folder / "ours" / f"{p.stem}.jpeg", dst_wh) for p in sources]

        print(f"machine: {machine()}")
        print(
            f"input:   {args.images} JPEGs {wh[0]}x{wh[1]} q92 ({mb:.2f} MB each), "
            f"{sum(orientation_for(s) != 1 for s in range(args.images))} "
            f"with EXIF rotation; target {dst_wh[0]}x{dst_wh[1]} (max_pixels {MAX_PIXELS})"
        )
        load_before = os.getloadavg()[0]
        (t_naive, cpu_naive), (t_ours, cpu_ours), (t_bilinear, cpu_bilinear) = time_serial(
            [(naive, jobs_naive), (ours, jobs_ours), (ours_bilinear, jobs_ours)], args.repeat
        )
        rows = [
            ("naive Pillow", 1, t_naive, cpu_naive),
            ("bbu resize_to_file", 1, t_ours, cpu_ours),
            ("bbu, BILINEAR resample", 1, t_bilinear, cpu_bilinear),
        ]
        rows += [
            ("bbu resize_to_file, pool", w, time_pool(w, jobs_ours, args.repeat), None)
            for w in args.workers
        ]
        load_after = os.getloadavg()[0]
        stages = profile_stages(jobs_ours)
        scores, scores_bilinear = [], []
        for src, _, _ in jobs_ours[: min(12, len(jobs_ours))]:
            with Image.open(src) as image:
                reference = ImageOps.exif_transpose(image).convert("RGB")
            reference = reference.resize(dst_wh, Image.Resampling.LANCZOS)
            scores.append(psnr(open_resized(src, dst_wh)[0], reference))
            bilinear = open_resized(src, dst_wh, resample=Image.Resampling.BILINEAR)[0]
            scores_bilinear.append(psnr(bilinear, reference))

    n = args.images
    print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after timing")
    header = f"{'path':<28}{'workers':>8}{'images/s':>10}{'ms/image':>10}{'vs naive':>10}"
    print(f"\n{header}{'images/CPU-s':>14}")
    for name, workers, seconds, cpu in rows:
        per_cpu = f"{n / cpu:>14.1f}" if cpu else f"{'':>14}"
        print(
            f"{name:<28}{workers:>8}{n / seconds:>10.1f}{seconds / n * 1e3:>10.1f}"
            f"{t_naive / seconds:>9.2f}x{per_cpu}"
        )
    print(
        f"\nsingle-process speed-up (b)/(a): {t_naive / t_ours:.2f}x wall, "
        f"{cpu_naive / cpu_ours:.2f}x CPU time"
    )
    print(
        f"PSNR of ours vs naive, before JPEG encoding ({len(scores)} images): "
        f"min {min(scores):.1f} dB, mean {sum(scores) / len(scores):.1f} dB "
        f"(BILINEAR: min {min(scores_bilinear):.1f} dB, "
        f"mean {sum(scores_bilinear) / len(scores_bilinear):.1f} dB)"
    )
    profiled = sum(stages.values())
    print(f"\nwhere resize_to_file's time goes (cProfile, {profiled * 1e3:.1f} ms/image profiled):")
    for name, seconds in stages.items():
        print(f"  {name:<12}{seconds * 1e3:6.2f} ms  {100 * seconds / profiled:4.0f}%")
    ceiling = t_naive / n / max(profiled - stages["resample"], 1e-9)
    print(f"  speed-up vs naive if resampling were free: {ceiling:.2f}x")
    return {
        "machine": machine(),
        "images": n,
        "size": list(wh),
        "target": list(dst_wh),
        "load_average": [load_before, load_after],
        "images_per_s": {
            f"{name}{'' if workers == 1 and 'pool' not in name else f', {workers} workers'}": (
                n / seconds
            )
            for name, workers, seconds, _ in rows
        },
        "speedup_vs_naive": t_naive / t_ours,
        "speedup_vs_naive_cpu": cpu_naive / cpu_ours,
        "speedup_bilinear_vs_naive": t_naive / t_bilinear,
        "psnr_db": {"min": min(scores), "mean": sum(scores) / len(scores)},
        "psnr_bilinear_db": {
            "min": min(scores_bilinear),
            "mean": sum(scores_bilinear) / len(scores_bilinear),
        },
        "stage_ms_per_image": {name: seconds * 1e3 for name, seconds in stages.items()},
        "speedup_ceiling_free_resample": ceiling,
    }


def main(argv: Sequence[str] | None = None) -> None:
    measure(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
