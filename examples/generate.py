"""Regenerate the synthetic BBU raw annotation sample (vendor "markResult" format) in examples/raw/.

    python examples/generate.py --out examples/raw --n 16 --seed 0 --width 1440 --height 1920

Same arguments, same bytes: see bbucli.demo.synthetic.generate_raw_set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from bbucli.demo.synthetic import generate_raw_set
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bbucli.demo.synthetic import generate_raw_set


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "raw", help="output folder"
    )
    parser.add_argument("--n", type=int, default=16, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--width", type=int, default=1440, help="upright image width in pixels")
    parser.add_argument("--height", type=int, default=1920, help="upright image height in pixels")
    parser.add_argument(
        "--exif-rotated-every",
        type=int,
        default=6,
        help="store every k-th image EXIF-rotated (0: none)",
    )
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality")
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    args = build_parser().parse_args(argv)
    return generate_raw_set(
        args.out,
        args.n,
        seed=args.seed,
        size=(args.width, args.height),
        exif_rotated_every=args.exif_rotated_every,
        jpeg_quality=args.quality,
    )


if __name__ == "__main__":
    paths = main()
    print(f"wrote {len(paths)} images with annotations to {paths[0].parent if paths else '-'}")
