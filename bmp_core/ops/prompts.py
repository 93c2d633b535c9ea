"""Choosing the keypoints that prompt SAM for one person (bmp-method §2.1-2.2, HEAD semantics)."""

from __future__ import annotations

import numpy as np

FACE_KEYPOINTS = (0, 1, 2)  # nose, left eye, right eye (COCO-17); the ears stay separate


def select_prompt_keypoints(
    keypoints: np.ndarray,
    num_points: int,
    confidence_thr: float,
    visibility_thr: float,
    method: str = "distance+confidence",
    collapse_face: bool = True,
    confidence_percentile: float = 80.0,
) -> np.ndarray:
    """Pick up to ``num_points`` positive prompt points from one instance's keypoints.

    Steps: zero keypoints with score < ``confidence_thr``; collapse nose+eyes into their most
    confident point (if that one has score >= ``visibility_thr``); keep points with score >=
    ``visibility_thr``; order them (``distance+confidence``: the most confident first, then greedy
    farthest-point picks among the candidates whose confidence reaches the ``confidence_percentile``
    of the remaining scores, HEAD's fixed indexing; ``confidence``: by score); keep the first
    ``num_points``.

    Args:
        keypoints: (17, 3) float ``(x, y, score)`` pixels.

    Returns:
        (M, 3) float32 ``(x, y, score)`` with 0 <= M <= num_points. M == 0 means no keypoint is
        confident enough: the caller must not prompt SAM with this instance.
    """
    kpts = np.array(keypoints, np.float64, copy=True).reshape(-1, 3)
    kpts[kpts[:, 2] < confidence_thr] = 0.0

    if collapse_face and len(kpts) > max(FACE_KEYPOINTS):
        face = kpts[list(FACE_KEYPOINTS)]
        best = face[int(np.argmax(face[:, 2]))]
        if best[2] >= visibility_thr:
            rest = np.delete(kpts, list(FACE_KEYPOINTS), axis=0)
            kpts = np.concatenate([best[None], rest], axis=0)

    # Zeroed (unconfident) points never become prompts, even with visibility_thr = 0.
    kpts = kpts[(kpts[:, 2] >= visibility_thr) & (kpts[:, 2] > 0)]
    if len(kpts) == 0:
        return np.zeros((0, 3), np.float32)
    # Most confident first; the stable sort keeps the keypoint order among equal scores.
    kpts = kpts[np.argsort(-kpts[:, 2], kind="stable")]

    if method == "confidence":
        order = np.arange(len(kpts))
    elif method == "distance+confidence":
        order = _farthest_confident_order(kpts, confidence_percentile)
    else:
        raise ValueError(f"unknown prompt selection method {method!r}")
    return kpts[order[:num_points]].astype(np.float32)


def _farthest_confident_order(kpts_sorted: np.ndarray, percentile: float) -> np.ndarray:
    """Order points: seed with the most confident, then repeatedly the farthest (min-distance to the
    chosen set) among those whose confidence is >= the ``percentile`` of the confidence array in
    which already chosen points are set to -1."""
    n = len(kpts_sorted)
    xy = kpts_sorted[:, :2]
    conf = kpts_sorted[:, 2].copy()
    chosen = [0]
    conf[0] = -1.0
    min_dist = np.linalg.norm(xy - xy[0], axis=1)
    while len(chosen) < n:
        threshold = np.percentile(conf, percentile)
        candidate = conf >= threshold
        candidate[chosen] = False
        if not candidate.any():  # cannot happen with scores > -1, but never loop forever
            candidate = conf > -1.0
        dist = np.where(candidate, min_dist, -np.inf)
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        conf[nxt] = -1.0
        min_dist = np.minimum(min_dist, np.linalg.norm(xy - xy[nxt], axis=1))
    return np.asarray(chosen, np.int64)
