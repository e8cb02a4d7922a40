"""Object-detection post-processing: NonMaxSuppression.

Greedy NMS per (batch, class): take the best remaining box, drop every remaining box that
overlaps it by IoU > iou_threshold, repeat.  The loop runs once per *selected* box (at most
max_output_boxes_per_class); each step compares against all remaining boxes at once.
"""

from __future__ import annotations

import numpy as np

from ...errors import DczError
from . import op
from .shape import input_at


def _corners(boxes: np.ndarray, center_point_box: bool) -> np.ndarray:
    """[..., 4] boxes as (y_min, x_min, y_max, x_max), whichever corners or format they came in."""
    boxes = boxes.astype(np.float64)
    if center_point_box:  # (x_center, y_center, width, height)
        xc, yc, w, h = np.moveaxis(boxes, -1, 0)
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)
    y1, x1, y2, x2 = np.moveaxis(boxes, -1, 0)
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)], axis=-1)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (y_min, x_min, y_max, x_max) box with each of `others`; 0 for empty boxes."""
    top_left = np.maximum(box[:2], others[:, :2])
    bottom_right = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    union = area + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((area > 0) & (areas > 0) & (union > 0), inter / union, 0.0)


def _scalar(value, default):
    return default if value is None or np.asarray(value).size == 0 else np.asarray(value).reshape(-1)[0]


@op("NonMaxSuppression")
def non_max_suppression(inputs, attrs, ctx):
    boxes, scores = inputs[0], inputs[1]
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 \
            or scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
        raise DczError(f"NonMaxSuppression node {ctx.node_name!r}: boxes {list(boxes.shape)} and scores "
                       f"{list(scores.shape)} do not fit.")
    max_per_class = int(_scalar(input_at(inputs, 2), 0))
    iou_threshold = float(_scalar(input_at(inputs, 3), 0.0))
    score_threshold = _scalar(input_at(inputs, 4), None)
    corners = _corners(boxes, bool(attrs.get("center_point_box", 0)))
    selected = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1] if max_per_class > 0 else 0):
            class_scores = scores[b, c]
            order = np.argsort(-class_scores, kind="stable")  # best first; ties keep box order
            if score_threshold is not None:  # "scores less than score_threshold are removed"
                order = order[class_scores[order] >= score_threshold]
            kept = 0
            while order.size and kept < max_per_class:
                best, order = order[0], order[1:]
                selected.append((b, c, best))
                kept += 1
                order = order[_iou(corners[b, best], corners[b, order]) <= iou_threshold]
    return [np.array(selected, dtype=np.int64).reshape(-1, 3)]
