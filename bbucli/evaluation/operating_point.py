"""Metrics at one score threshold: the threshold with the best F1, precision / recall / F1 overall and
per class, the confusion matrix with a background row and column, and each image's errors.

Matching is `matching.match_image` at IoU 0.5. A prediction counts when its score is >= the
threshold. Counting is micro (over all objects of the split):
    precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN)
(None where the denominator is 0). Crowd ground truth is neither found nor missed, predictions
on it are ignored. Predictions of categories the ground truth lacks are counted: they have
indices after the ground truth's (`category_index`), never match, and so are false positives.

Choosing the threshold: greedy matching in score order means the matches of the predictions above
a threshold do not depend on those below it, so one matching of all predictions gives TP and FP at
every candidate threshold (each distinct score); the one with the highest F1 wins, the higher
threshold on a tie.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bbucli.evaluation.align import AlignedImage
from bbucli.evaluation.matching import ImageMatch, match_image
from bbucli.evaluation.types import GroundTruth, GroundTruthImage


def category_index(ground_truth: GroundTruth, scored: Iterable[AlignedImage]) -> dict[str, int]:
    """desc -> category index: the ground truth's categories 0..K-1 in their order, then each
    predicted desc the ground truth lacks, K.., in order of first appearance."""
    index = {c.desc: k for k, c in enumerate(ground_truth.categories)}
    for preds in scored:
        for desc in preds.descs:
            index.setdefault(desc, len(index))
    return index


@dataclass(frozen=True, eq=False)
class ImageArrays:
    """One image in category indices (`category_index`: K.. = categories the ground truth lacks).

    pred_boxes (N, 4) xyxy, pred_labels (N,), pred_scores (N,); gt_boxes (M, 4) xyxy in the same
    frame, gt_labels (M,), gt_crowd (M,) bool.
    """

    pred_boxes: np.ndarray
    pred_labels: np.ndarray
    pred_scores: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_crowd: np.ndarray

    @classmethod
    def build(cls, image: GroundTruthImage, preds: AlignedImage, index: Mapping[str, int]) -> ImageArrays:
        """From a ground-truth image and its scored predictions; index: desc -> category index
        (`category_index`, which holds every desc of both)."""
        return cls(
            preds.boxes_px, np.asarray([index[d] for d in preds.descs], dtype=np.int64), preds.scores,
            image.boxes_px, np.asarray([index[d] for d in image.descs], dtype=np.int64), image.iscrowd,
        )

    def kept(self, threshold: float | None) -> np.ndarray:
        """(N,) bool: predictions with score >= threshold (None: none)."""
        if threshold is None:
            return np.zeros(len(self.pred_labels), dtype=bool)
        return self.pred_scores >= threshold

    def match(self, keep: np.ndarray) -> ImageMatch:
        """Match the kept predictions (indices then refer to the kept subset)."""
        return match_image(
            self.pred_boxes[keep], self.pred_labels[keep], self.pred_scores[keep],
            self.gt_boxes, self.gt_labels, self.gt_crowd,
        )


def ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def f1_score(tp: int, fp: int, fn: int) -> float | None:
    return ratio(2 * tp, 2 * tp + fp + fn)


def best_f1_threshold(images: Sequence[ImageArrays]) -> float | None:
    """The score threshold with the highest F1 (higher threshold on ties); None without predictions."""
    scores, tps, counted = [], [], []
    n_gt = 0
    for image in images:
        n_gt += int((~image.gt_crowd).sum())
        if not len(image.pred_labels):
            continue
        m = image.match(np.ones(len(image.pred_labels), dtype=bool))
        scores.append(image.pred_scores)
        tps.append(m.true_positive)
        counted.append(~m.pred_ignored)
    if not scores:
        return None
    s = np.concatenate(scores)
    order = np.argsort(-s, kind="mergesort")
    s = s[order]
    tp = np.cumsum(np.concatenate(tps)[order])
    fp = np.cumsum((np.concatenate(counted) & ~np.concatenate(tps))[order])
    last_of_group = np.r_[s[1:] != s[:-1], True]
    tp, fp, s = tp[last_of_group], fp[last_of_group], s[last_of_group]
    den = 2 * tp + fp + (n_gt - tp)
    f1 = np.divide(2 * tp, den, out=np.zeros(len(s)), where=den > 0)
    return float(s[int(np.argmax(f1))])


@dataclass(frozen=True, eq=False)
class OperatingPointCounts:
    """Counts at one threshold.

    tp, fp, fn: (K,) per category (K = `category_index`'s length, unknown categories included);
    confusion: (K+1, K+1) rows = ground truth, columns = prediction, index K = background; gt_found: per image, (M,) bool of ground truth matched by
    a prediction of its own category; image_errors: per image (tp, fp, fn).
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    confusion: np.ndarray
    gt_found: tuple[np.ndarray, ...]
    image_errors: tuple[tuple[int, int, int], ...]


def count_at(images: Sequence[ImageArrays], num_classes: int, threshold: float | None) -> OperatingPointCounts:
    """Match every image's predictions with score >= threshold (None: keep none) and count;
    num_classes: the length of `category_index`."""
    k = num_classes
    tp, fp, fn = np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, np.int64)
    confusion = np.zeros((k + 1, k + 1), dtype=np.int64)
    gt_found: list[np.ndarray] = []
    errors: list[tuple[int, int, int]] = []
    for image in images:
        keep = image.kept(threshold)
        m = image.match(keep)
        labels = image.pred_labels[keep]
        real_gt = ~image.gt_crowd
        for i, label in enumerate(labels):
            if m.pred_gt[i] >= 0:
                tp[label] += 1
                confusion[label, label] += 1
            elif not m.pred_ignored[i]:
                fp[label] += 1
                j = m.pred_confused_gt[i]
                confusion[image.gt_labels[j] if j >= 0 else k, label] += 1
        confused_gt = set(int(j) for j in m.pred_confused_gt if j >= 0)
        for j in np.flatnonzero(real_gt & ~m.gt_matched):
            fn[image.gt_labels[j]] += 1
            if int(j) not in confused_gt:
                confusion[image.gt_labels[j], k] += 1
        gt_found.append(m.gt_matched)
        n_tp = int(m.true_positive.sum())
        errors.append((n_tp, int(m.false_positive.sum()), int((real_gt & ~m.gt_matched).sum())))
    return OperatingPointCounts(tp, fp, fn, confusion, tuple(gt_found), tuple(errors))
