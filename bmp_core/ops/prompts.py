"""Choosing the keypoints that prompt SAM for one person (docs/method.md#sam-prompts: v1.1's
``distance+confidence`` / ``confidence`` with the newer reference's semantics, docs/decisions.md#keypoint-selection,
and v2's ``k_most_visible``)."""

from __future__ import annotations

import math

import numpy as np

FACE_KEYPOINTS = (0, 1, 2)  # nose, left eye, right eye (COCO-17); the ears stay separate
K_MOST_VISIBLE = "k_most_visible"  # BMP v2: ranked by the pose model's per-keypoint visibility
SELECTION_METHODS = ("distance+confidence", "confidence", K_MOST_VISIBLE)


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
        order = _farthest_confident_order(kpts, confidence_percentile, num_points)
    else:
        raise ValueError(f"unknown prompt selection method {method!r}")
    return kpts[order[:num_points]].astype(np.float32)


def _farthest_confident_order(kpts_sorted: np.ndarray, percentile: float, max_points: int) -> np.ndarray:
    """Order points: seed with the most confident, then repeatedly the farthest (min-distance to the
    chosen set) among those whose confidence is >= the ``percentile`` of the confidence array in
    which already chosen points are set to -1. Stops after ``max_points``: the greedy order is
    prefix-stable, so the first picks do not depend on how many follow.

    Plain Python floats on purpose: n <= 17, and numpy's per-call overhead (``np.percentile`` alone
    is ~50 us) made this the worker's largest CPU cost. The arithmetic is the same IEEE float64 as
    ``np.percentile(method="linear")`` and ``np.linalg.norm``, so the picks are identical.
    """
    xy = kpts_sorted[:, :2].tolist()
    conf = kpts_sorted[:, 2].tolist()
    n = len(conf)
    chosen = [0]
    conf[0] = -1.0
    x0, y0 = xy[0]
    min_dist = [math.sqrt((x - x0) * (x - x0) + (y - y0) * (y - y0)) for x, y in xy]
    while len(chosen) < min(n, max_points):
        threshold = _percentile_linear(sorted(conf), percentile)
        taken = set(chosen)
        best, best_dist = -1, -math.inf
        for i in range(n):
            if i not in taken and conf[i] >= threshold and min_dist[i] > best_dist:
                best, best_dist = i, min_dist[i]
        if best < 0:  # cannot happen with scores > -1, but never loop forever
            best = next(i for i in range(n) if i not in taken)
        chosen.append(best)
        conf[best] = -1.0
        xb, yb = xy[best]
        for i, (x, y) in enumerate(xy):
            min_dist[i] = min(min_dist[i], math.sqrt((x - xb) * (x - xb) + (y - yb) * (y - yb)))
    return np.asarray(chosen, np.int64)


def _percentile_linear(values_sorted: list[float], percentile: float) -> float:
    """``np.percentile(values, percentile)`` (method "linear") of an ascending list, with numpy's
    exact arithmetic: index (n-1)*q, and the lerp taken from the nearer end when the weight >= 0.5."""
    q = percentile / 100.0
    n = len(values_sorted)
    virtual = (n - 1) * q
    lo = min(max(math.floor(virtual), 0), n - 1)
    hi = min(lo + 1, n - 1)
    t = virtual - lo
    a, b = values_sorted[lo], values_sorted[hi]
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def has_prompt(scores: np.ndarray, confidence_thr: float, visibility_thr: float,
               visibility: np.ndarray | None = None, method: str = "distance+confidence") -> np.ndarray:
    """(N,) bool: whether the selection (``select_prompt_keypoints``, or ``select_most_visible`` for
    ``k_most_visible`` with the (N, K) ``visibility``) picks any point for each of N instances, from their
    (N, K) keypoint scores alone. v1.1 methods pick iff a score is >= both thresholds and > 0 (collapsing
    the face keeps its most confident point, which then passes too); ``k_most_visible`` iff its gate
    passes. Vectorised, for deciding before selecting."""
    s = np.asarray(scores, np.float32)
    if method == K_MOST_VISIBLE:
        return np.any(_visible_gate(s, _need_visibility(visibility), confidence_thr, visibility_thr), axis=-1)
    return np.any((s >= confidence_thr) & (s >= visibility_thr) & (s > 0), axis=-1)


def select_most_visible(
    keypoints: np.ndarray,
    visibility: np.ndarray | None,
    num_points: int,
    confidence_thr: float,
    visibility_thr: float,
) -> np.ndarray:
    """BMP v2's ``k_most_visible`` (docs/method.md): the ``num_points`` most visible keypoints of a person.

    Gate: the person is prompted only if some keypoint has score > ``confidence_thr`` AND visibility >
    ``visibility_thr`` (both strict). Then every keypoint with visibility >= ``visibility_thr`` is a
    candidate (``>=`` here, ``>`` in the gate, and the score is not looked at again, as in the
    reference), ranked by visibility descending; equal visibilities (saturated 1.0s after flip
    averaging) go by keypoint index ascending, a fixed rule where the reference's order is numpy's
    (docs/decisions.md). No face collapse.

    Args:
        keypoints: (17, 3) float ``(x, y, score)`` pixels.
        visibility: (17,) float P(visible) from the pose model. None (a model without visibility) is
            refused: there is nothing to rank by (docs/output.md).

    Returns:
        (M, 3) float32 ``(x, y, visibility)`` with 0 <= M <= num_points, most visible first. M == 0: the
        gate failed and the caller must not prompt SAM with this person.
    """
    kpts = np.asarray(keypoints, np.float64).reshape(-1, 3)
    vis = np.asarray(_need_visibility(visibility), np.float64).reshape(-1)
    if not _visible_gate(kpts[:, 2], vis, confidence_thr, visibility_thr).any():
        return np.zeros((0, 3), np.float32)
    candidates = np.flatnonzero(vis >= visibility_thr)
    # lexsort: the last key is the primary one; the index breaks ties ascending.
    order = candidates[np.lexsort((candidates, -vis[candidates]))][:num_points]
    out = np.concatenate([kpts[order, :2], vis[order, None]], axis=1)
    return out.astype(np.float32)


def _visible_gate(scores: np.ndarray, visibility: np.ndarray, confidence_thr: float,
                  visibility_thr: float) -> np.ndarray:
    return (np.asarray(scores) > confidence_thr) & (np.asarray(visibility) > visibility_thr)


def _need_visibility(visibility: np.ndarray | None) -> np.ndarray:
    if visibility is None:
        raise MissingVisibilityError(
            "loop.prompt.selection_method: k_most_visible ranks keypoints by the pose model's visibility, and "
            "this pose model predicts none; use a PMPose model (models.pose.config: pmpose-b) or "
            "loop.prompt.selection_method: distance+confidence (docs/configuration.md)"
        )
    vis = np.asarray(visibility, np.float32)
    if np.isnan(vis).any():
        raise MissingVisibilityError("k_most_visible: the pose model's visibility is NaN for some keypoint")
    return vis


class MissingVisibilityError(ValueError):
    """``k_most_visible`` was asked of keypoints without visibility (a model that does not predict it)."""
