"""Greedy IoU matching of one image's predictions to its ground truth, as COCOeval matches.

Predictions are taken in descending score order (stable, like COCOeval's mergesort); each takes the
unmatched, non-crowd ground-truth box of its own category with the highest IoU, if that IoU is at
least the threshold (a tie at exactly the threshold matches, as in COCOeval). A prediction that
matches nothing but overlaps a crowd region of its category that much is ignored (neither true nor
false), IoU with a crowd region being intersection over the prediction's area, as in COCOeval.

A second pass finds confusions for the confusion matrix: each prediction still unmatched takes the
unmatched ground-truth box of *any* category with the highest IoU >= threshold. So the diagonal
of the matrix is exactly the true positives of the first pass.

All boxes are (N, 4) float64 xyxy in one pixel frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_MATCH = 0.5


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray, crowd_b: np.ndarray | None = None) -> np.ndarray:
    """(N, M) IoU of xyxy boxes, COCO's formula (areas w*h, no +1); for crowd columns, the
    intersection over the area of the box in `boxes_a`."""
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return np.zeros((len(boxes_a), len(boxes_b)), dtype=np.float64)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    w = np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2]) - np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    h = np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3]) - np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    if crowd_b is not None and crowd_b.any():
        union = np.where(crowd_b[None, :], area_a[:, None], union)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.nan_to_num(iou, nan=0.0, posinf=0.0)


@dataclass(frozen=True, eq=False)
class ImageMatch:
    """Matching of one image, all arrays indexed like the inputs.

    order: (N,) prediction indices in the order they were matched (score, descending).
    pred_gt: (N,) index of the same-category GT box a prediction matched, -1 if none.
    pred_ignored: (N,) matched only a crowd region: neither true nor false positive.
    pred_confused_gt: (N,) for unmatched predictions, the GT box of another category it
        overlaps (second pass), -1 if none.
    gt_matched: (M,) bool, matched by a same-category prediction.
    """

    order: np.ndarray
    pred_gt: np.ndarray
    pred_ignored: np.ndarray
    pred_confused_gt: np.ndarray
    gt_matched: np.ndarray

    @property
    def true_positive(self) -> np.ndarray:
        """(N,) bool."""
        return self.pred_gt >= 0

    @property
    def false_positive(self) -> np.ndarray:
        """(N,) bool: neither matched nor ignored."""
        return (self.pred_gt < 0) & ~self.pred_ignored


def match_image(
    pred_boxes: np.ndarray,
    pred_labels: np.ndarray,
    pred_scores: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    gt_crowd: np.ndarray | None = None,
    iou_threshold: float = IOU_MATCH,
) -> ImageMatch:
    """Match one image's predictions (N) to its ground truth (M); labels are any integers."""
    n, m = len(pred_boxes), len(gt_boxes)
    crowd = np.zeros(m, dtype=bool) if gt_crowd is None else np.asarray(gt_crowd, dtype=bool)
    order = np.argsort(-np.asarray(pred_scores, dtype=np.float64), kind="mergesort")
    pred_gt = np.full(n, -1, dtype=np.int64)
    ignored = np.zeros(n, dtype=bool)
    confused = np.full(n, -1, dtype=np.int64)
    taken = np.zeros(m, dtype=bool)
    if n and m:
        iou = iou_matrix(pred_boxes, gt_boxes, crowd)
        same = pred_labels[:, None] == gt_labels[None, :]
        for i in order:
            candidates = np.where(same[i] & ~crowd & ~taken, iou[i], -1.0)
            j = int(np.argmax(candidates))
            if candidates[j] >= iou_threshold:
                pred_gt[i] = j
                taken[j] = True
            elif np.any(same[i] & crowd & (iou[i] >= iou_threshold)):
                ignored[i] = True
        gt_matched = taken.copy()
        for i in order:
            if pred_gt[i] >= 0 or ignored[i]:
                continue
            candidates = np.where(~crowd & ~taken, iou[i], -1.0)
            j = int(np.argmax(candidates))
            if candidates[j] >= iou_threshold:
                confused[i] = j
                taken[j] = True
    else:
        gt_matched = taken
    return ImageMatch(order, pred_gt, ignored, confused, gt_matched)
