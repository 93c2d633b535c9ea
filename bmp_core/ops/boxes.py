"""Box conversions, pairwise IoU and greedy NMS. Boxes are (N, 4) float pixel corners ``xyxy``."""

from __future__ import annotations

import numpy as np


def xyxy_to_xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N, 4) COCO xywh (top-left corner, width, height)."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def xywh_to_xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    """(N, 4) COCO xywh -> (N, 4) xyxy."""
    boxes = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def box_area(boxes_xyxy: np.ndarray, pixel_offset: float = 0.0) -> np.ndarray:
    """(N,) areas ``(x2 - x1 + offset) * (y2 - y1 + offset)``, never negative."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    w = np.clip(boxes[:, 2] - boxes[:, 0] + pixel_offset, 0, None)
    h = np.clip(boxes[:, 3] - boxes[:, 1] + pixel_offset, 0, None)
    return w * h


def box_iou(a_xyxy: np.ndarray, b_xyxy: np.ndarray, pixel_offset: float = 0.0) -> np.ndarray:
    """Pairwise IoU.

    Args:
        a_xyxy: (N, 4) boxes. b_xyxy: (M, 4) boxes.
        pixel_offset: 1.0 for the "+1 pixel" convention of mmpose's ``nms`` (inclusive corners).

    Returns:
        (N, M) float64 IoU; 0 where the union is empty.
    """
    a = np.asarray(a_xyxy, np.float64).reshape(-1, 4)
    b = np.asarray(b_xyxy, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + pixel_offset
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + pixel_offset
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = box_area(a, pixel_offset)[:, None] + box_area(b, pixel_offset)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def box_nms(
    boxes_xyxy: np.ndarray, scores: np.ndarray, iou_thr: float, pixel_offset: float = 0.0
) -> np.ndarray:
    """Greedy NMS: visit boxes by descending score, drop any box with IoU > ``iou_thr`` to a kept one.

    Returns:
        (K,) int64 indices of the kept boxes, by descending score (ties: lower index first).
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(boxes_xyxy, boxes_xyxy, pixel_offset)
    suppressed = np.zeros(len(scores), bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_thr
    return np.asarray(keep, np.int64)
