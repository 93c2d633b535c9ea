"""Pose-NMS across BMP iterations: drop the weaker of every pair of poses with OKS above a threshold."""

from __future__ import annotations

import numpy as np

from bmp_core.coco_meta import SIGMAS
from bmp_core.ops.oks import oks_matrix


def pose_nms(
    keypoints: np.ndarray,
    boxes_xyxy: np.ndarray,
    oks_thr: float,
    keypoint_thr: float,
    sigmas: np.ndarray = SIGMAS,
) -> np.ndarray:
    """Greedy OKS-NMS over old + new instances (docs/method.md#pose-nms, with the fixes of
docs/decisions.md#pose-nms-xyxy-box-area and #a-removed-person-no-longer-suppresses-others).

    Repeatedly take the pair (i, j) with the largest OKS[i, j] > ``oks_thr``; of the two, the one with
    fewer valid keypoints (score > ``keypoint_thr``) is removed; on a tie ``i`` (the one treated as
    ground truth) goes, as in the reference. A removed instance no longer suppresses others (its row
    and column are cleared), and old instances can be removed too (HEAD).

    Args:
        keypoints: (N, K, 3) ``(x, y, score)`` of old instances first, then new ones.
        boxes_xyxy: (N, 4) pixel boxes.

    Returns:
        (N,) bool, True where the instance is kept.
    """
    n = len(keypoints)
    keep = np.ones(n, bool)
    if n < 2:
        return keep
    num_valid = (np.asarray(keypoints)[:, :, 2] > keypoint_thr).sum(axis=1)
    oks = oks_matrix(keypoints, boxes_xyxy, keypoint_thr, sigmas)
    np.fill_diagonal(oks, -1.0)
    while True:
        flat = int(np.argmax(oks))
        i, j = divmod(flat, n)
        if oks[i, j] <= oks_thr:
            break
        removed = j if num_valid[i] > num_valid[j] else i
        keep[removed] = False
        oks[removed, :] = -1.0
        oks[:, removed] = -1.0
    return keep


def keep_old_unless_new_survives(keep: np.ndarray, num_old: int) -> np.ndarray:
    """BMP v2's pruning rule (``loop.pose_nms.remove_losing_old: true``, docs/method.md): old instances that
    lost pose-NMS are removed only in a pass where at least one new instance survives it; in a pass where
    none does, the old instances all stay (the reference returns its merged set unpruned then).

    Args:
        keep: (N,) bool ``pose_nms``'s verdict on old instances first, then new ones.
        num_old: how many of the N are old.

    Returns:
        (N,) bool: ``keep``, with every old instance kept when no new one is.
    """
    keep = np.asarray(keep, bool).copy()
    if not keep[num_old:].any():
        keep[:num_old] = True
    return keep
