"""Benchmark: seconds to score a synthetic split with `bbucli.evaluation.evaluate`, over pycocotools and
over faster-coco-eval, with the numbers shown equal.

    python benchmarks/eval.py [--images 5000] [--classes 11] [--objects 10] [--repeat 1] [--seed 0]

Ground truth: --images 640x480 images, 0..2*--objects boxes each (a tenth of the images empty),
--classes categories `t<c % 4>/c<c>/ok` (4 types). Predictions: 85% of the objects found with
box noise (8% of them with the wrong class), plus 0-3 false positives per image, scores higher for
better boxes. Each backend runs the whole `evaluate` (three COCOeval runs: classes, types,
class-agnostic; then the operating point and escapes) and, separately, one COCOeval run over the
class view through the adapter (`cocoeval_bbox`), to show where the time goes. Figures are the
best of --repeat runs. Prints both stats vectors and the largest difference of every number.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np

from bbucli.evaluation import (
    Detections,
    GroundTruth,
    GroundTruthImage,
    cocoeval_bbox,
    evaluate,
    faster_available,
)
from bbucli.evaluation.align import align_predictions
from bbucli.evaluation.cocoeval import STAT_NAMES, backend_label
from bbucli.evaluation.evaluate import coco_inputs, views

WH = (640, 480)


def synthetic(images: int, classes: int, objects: int, seed: int) -> tuple[GroundTruth, list[Detections]]:
    rng = np.random.default_rng(seed)
    descs = [f"t{c % 4}/c{c}/ok" for c in range(classes)]
    gt_images, preds = [], []
    for i in range(images):
        n = 0 if rng.random() < 0.1 else int(rng.integers(1, 2 * objects))
        xy = rng.uniform(0, [WH[0] - 20, WH[1] - 20], (n, 2))
        wh = rng.uniform(6, 160, (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, WH)], axis=1)
        labels = rng.integers(0, classes, n)
        key = f"images/{i:05d}.jpeg"
        gt_images.append(GroundTruthImage.simple(key, i + 1, boxes, [descs[c] for c in labels], WH))
        found = rng.random(n) < 0.85
        size = (boxes[found, 2:] - boxes[found, :2]).repeat(2, axis=0).reshape(-1, 4)
        noise = rng.normal(0, 0.1, (int(found.sum()), 4))
        pred_boxes = boxes[found] + noise * size
        pred_labels = np.where(rng.random(int(found.sum())) < 0.08, rng.integers(0, classes, int(found.sum())), labels[found])
        scores = np.clip(1 - np.abs(noise).mean(1) * 3 + rng.normal(0, 0.15, len(noise)), 0.01, 1)
        fp = int(rng.integers(0, 4))
        fp_xy = rng.uniform(0, [WH[0] - 40, WH[1] - 40], (fp, 2))
        fp_boxes = np.concatenate([fp_xy, fp_xy + rng.uniform(8, 40, (fp, 2))], axis=1)
        all_boxes = np.clip(np.concatenate([pred_boxes, fp_boxes]), 0, [*WH, *WH])
        ok = (all_boxes[:, 2] > all_boxes[:, 0] + 1) & (all_boxes[:, 3] > all_boxes[:, 1] + 1)
        all_labels = np.concatenate([pred_labels, rng.integers(0, classes, fp)])
        all_scores = np.concatenate([scores, rng.uniform(0.01, 0.6, fp)])
        preds.append(Detections(key, all_boxes[ok], tuple(descs[c] for c in all_labels[ok]), all_scores[ok]))
    return GroundTruth.from_images(gt_images, format="memory"), preds


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--objects", type=int, default=10, help="mean objects per non-empty image")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    gt, preds = synthetic(args.images, args.classes, args.objects, args.seed)
    n_pred = sum(len(d) for d in preds)
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or 'cpu'}")
    print(f"{len(gt.images)} images, {len(gt.categories)} classes, {gt.object_count} objects, {n_pred} predictions "
          f"(generated in {time.perf_counter() - start:.1f} s)")
    label, categories = views(gt)["classes"]
    gt_dict, results = coco_inputs(gt, align_predictions(preds, gt).images, label, categories)

    backends = ["pycocotools"] + (["faster"] if faster_available() else [])
    if len(backends) == 1:
        print("faster-coco-eval is not installed (pip install 'bbucli[fast]'): pycocotools only")
    rows, outcomes = [], {}
    for backend in backends:
        t_one, _ = best_of(args.repeat, lambda b=backend: cocoeval_bbox(gt_dict, results, backend=b))
        t_all, result = best_of(args.repeat, lambda b=backend: evaluate(preds, gt, backend=b))
        outcomes[backend] = result
        rows.append((backend_label(backend), t_one, t_all))

    print(f"\n{'backend':<26}{'1 COCOeval (classes)':>22}{'evaluate() total':>20}")
    for name, t_one, t_all in rows:
        print(f"{name:<26}{t_one:>20.2f} s{t_all:>18.2f} s")
    if len(rows) == 2:
        print(f"{'speed-up':<26}{rows[0][1] / rows[1][1]:>21.1f}x{rows[0][2] / rows[1][2]:>19.1f}x")

    print(f"\n{'stat':<12}" + "".join(f"{b:>22}" for b in backends))
    for i, name in enumerate(STAT_NAMES):
        print(f"{name:<12}" + "".join(f"{outcomes[b].stats[i]:>22.16f}" for b in backends))
    if len(backends) == 2:
        a, b = (outcomes[k] for k in backends)
        pairs = [(a.stats, b.stats), (a.type_stats, b.type_stats), (a.agnostic_stats, b.agnostic_stats),
                 ([m.ap or 0 for m in a.per_class], [m.ap or 0 for m in b.per_class]),
                 ([m.ap50 or 0 for m in a.per_class], [m.ap50 or 0 for m in b.per_class])]
        diff = max(float(np.max(np.abs(np.subtract(x, y)))) for x, y in pairs)
        print(f"\nmax |difference| over stats, type-level, class-agnostic and per-class AP/AP50: {diff:.3g}")
        same_op = a.operating_point == b.operating_point and a.confusion == b.confusion and a.escape == b.escape
        print(f"operating point, confusion matrix and escapes identical: {same_op}")


if __name__ == "__main__":
    main()
