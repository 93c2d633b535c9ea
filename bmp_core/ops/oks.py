"""Object Keypoint Similarity between pose instances, as COCO defines it (``COCOeval.computeOks``)."""

from __future__ import annotations

import numpy as np

from bmp_core.coco_meta import SIGMAS
from bmp_core.ops.boxes import box_area, xyxy_to_xywh


def oks_matrix(
    keypoints: np.ndarray,
    boxes_xyxy: np.ndarray,
    visibility_thr: float,
    sigmas: np.ndarray = SIGMAS,
) -> np.ndarray:
    """Pairwise OKS; entry ``[i, j]`` treats instance i as the ground truth and j as the detection.

    The ground truth's visible keypoints are those with score > ``visibility_thr``; its area is its
    xyxy box area ``(x2-x1)*(y2-y1)`` (docs/decisions.md#pose-nms-xyxy-box-area fixes the reference's xywh
    misreading). A ground truth with no visible keypoint uses COCO's fallback: distance to its box grown by 1x
    per side.

    Args:
        keypoints: (N, K, 3) float ``(x, y, score)`` pixels.
        boxes_xyxy: (N, 4) float pixels.
        visibility_thr: score threshold of a "visible" ground-truth keypoint.
        sigmas: (K,) per-keypoint sigmas.

    Returns:
        (N, N) float64 OKS in [0, 1].
    """
    kpts = np.asarray(keypoints, np.float64)
    n = len(kpts)
    if n == 0:
        return np.zeros((0, 0))
    variances = (2 * np.asarray(sigmas, np.float64)) ** 2  # (K,)
    areas = box_area(boxes_xyxy)  # (N,)
    xywh = xyxy_to_xywh(boxes_xyxy)
    visible = kpts[:, :, 2] > visibility_thr  # (N, K)
    x, y = kpts[:, :, 0], kpts[:, :, 1]

    # Distances with every visible ground truth, (N_gt, N_dt, K).
    dx = x[None, :, :] - x[:, None, :]
    dy = y[None, :, :] - y[:, None, :]
    # COCO fallback for a ground truth without visible keypoints: distance outside its box x3.
    x0 = (xywh[:, 0] - xywh[:, 2])[:, None, None]
    x1 = (xywh[:, 0] + 2 * xywh[:, 2])[:, None, None]
    y0 = (xywh[:, 1] - xywh[:, 3])[:, None, None]
    y1 = (xywh[:, 1] + 2 * xywh[:, 3])[:, None, None]
    fx = np.maximum(0, x0 - x[None]) + np.maximum(0, x[None] - x1)
    fy = np.maximum(0, y0 - y[None]) + np.maximum(0, y[None] - y1)
    has_visible = visible.any(axis=1)[:, None, None]
    dx = np.where(has_visible, dx, fx)
    dy = np.where(has_visible, dy, fy)

    e = (dx**2 + dy**2) / variances / (areas[:, None, None] + np.spacing(1)) / 2
    weight = np.where(has_visible, visible[:, None, :], True)  # which keypoints the mean runs over
    return (np.exp(-e) * weight).sum(-1) / weight.sum(-1)
