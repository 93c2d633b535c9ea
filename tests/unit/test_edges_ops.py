"""Edges of the loop's ops that a refactor can break silently: thresholds met exactly, ties."""

from __future__ import annotations

import numpy as np
import pytest

from bmp_core.ops.masks import exclusive_masks
from bmp_core.ops.oks import oks_matrix
from bmp_core.ops.pose_nms import pose_nms

# ---------------------------------------------------------------------------------------------
# pose-NMS: "of a matching pair the one with fewer keypoints ABOVE keypoint_thr goes"
# (docs/decisions.md#a-removed-person-no-longer-suppresses-others)


def _pose(offset_x: float, scores: list[float]) -> np.ndarray:
    """(17, 3) float64 pose; float64 so a score written as the threshold IS the threshold."""
    k = np.zeros((17, 3))
    k[:, 0] = 100 + offset_x + np.linspace(0, 40, 17)
    k[:, 1] = 100 + np.linspace(0, 80, 17)
    k[:, 2] = scores
    return k


def _box(offset_x: float) -> np.ndarray:
    return np.array([90 + offset_x, 90, 150 + offset_x, 190], float)


THR = 0.5  # exactly representable: no float rounding decides the boundary
# A: 9 keypoints at 0.6, 8 at 0.2 -> 9 above 0.5 (and 9 at >= 0.5, 9 above 0.3, 0 above 0.8).
SCORES_A = [0.6] * 9 + [0.2] * 8
# B: 8 at 0.9, 5 exactly at 0.5, 4 at 0.4 -> 8 above 0.5, but 13 at >= 0.5, 17 above 0.3, 8 above 0.8.
SCORES_B = [0.9] * 8 + [THR] * 5 + [0.4] * 4


def _count_above(scores: list[float], thr: float) -> int:
    return sum(s > thr for s in scores)


@pytest.mark.parametrize("order", ["a_first", "b_first"])
def test_pose_nms_counts_keypoints_strictly_above_keypoint_thr(order: str) -> None:
    # The rule, counted by hand: A has more keypoints above 0.5 than B, so B goes. Counting at
    # >= 0.5, or with any other threshold (0.3 default, the OKS threshold 0.8), B would win.
    assert _count_above(SCORES_A, THR) > _count_above(SCORES_B, THR)
    assert sum(s >= THR for s in SCORES_B) > sum(s >= THR for s in SCORES_A)
    assert _count_above(SCORES_B, 0.3) > _count_above(SCORES_A, 0.3)
    assert _count_above(SCORES_B, 0.8) > _count_above(SCORES_A, 0.8)
    a, b = _pose(0.0, SCORES_A), _pose(0.5, SCORES_B)
    kpts = np.stack([a, b] if order == "a_first" else [b, a])
    boxes = np.stack([_box(0.0), _box(0.5)] if order == "a_first" else [_box(0.5), _box(0.0)])
    assert oks_matrix(kpts, boxes, THR).min() > 0.95  # the pair matches whichever keypoints count
    keep = pose_nms(kpts, boxes, oks_thr=0.8, keypoint_thr=THR)
    assert keep.tolist() == ([True, False] if order == "a_first" else [False, True])


def _greedy_reference(kpts: np.ndarray, boxes: np.ndarray, oks_thr: float, kpt_thr: float) -> list[bool]:
    """The documented rule, written plainly: pairs in descending OKS, skipping removed instances."""
    oks = oks_matrix(kpts, boxes, kpt_thr)
    valid = [sum(float(s) > kpt_thr for s in row) for row in kpts[:, :, 2]]
    alive = [True] * len(kpts)
    n = len(kpts)
    # Descending OKS; among equal values the first (i, j) in row-major order, as argmax picks.
    pairs = sorted(((oks[i, j], i, j) for i in range(n) for j in range(n) if i != j),
                   key=lambda p: (-p[0], p[1], p[2]))
    for value, i, j in pairs:
        if value <= oks_thr:
            break
        if alive[i] and alive[j]:
            alive[j if valid[i] > valid[j] else i] = False
    return alive


def test_pose_nms_matches_the_plain_rule_on_graded_scores() -> None:
    """Scores on a 0.1..0.9 grid that includes the threshold itself, many near-duplicate poses."""
    rng = np.random.default_rng(11)
    grid = np.round(np.arange(0.1, 0.91, 0.1), 10)  # 0.1 ... 0.9, with 0.5 exactly
    for trial in range(40):
        n = int(rng.integers(2, 7))
        offsets = rng.choice([0.0, 0.3, 0.7, 1.5, 4.0, 60.0], size=n)
        kpts = np.stack([_pose(float(o), rng.choice(grid, size=17).tolist()) for o in offsets])
        boxes = np.stack([_box(float(o)) for o in offsets])
        got = pose_nms(kpts, boxes, oks_thr=0.8, keypoint_thr=THR).tolist()
        assert got == _greedy_reference(kpts, boxes, 0.8, THR), trial


# ---------------------------------------------------------------------------------------------
# exclusive masks: "ties go to the earlier mask, new masks before context ones" (docstring)


def _rect(h: int, w: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


def test_exclusive_tie_between_a_new_and_a_context_mask_goes_to_the_new_one() -> None:
    new = _rect(6, 6, 0, 0, 4, 4)
    context = _rect(6, 6, 2, 2, 6, 6)
    out = exclusive_masks(new[None], np.array([0.7]), context[None], np.array([0.7]))
    np.testing.assert_array_equal(out[0], new)  # the overlap (rows/cols 2-3) stays with the new mask
    # One ulp more for the context mask and the overlap is the context mask's: the tie was decisive.
    higher = np.nextafter(np.float32(0.7), np.float32(1.0))
    out = exclusive_masks(new[None], np.array([0.7], np.float32), context[None], np.array([higher]))
    np.testing.assert_array_equal(out[0], new & ~context)


def test_exclusive_tie_order_among_new_masks_then_context() -> None:
    """Three masks covering one pixel at equal score: the first new one takes it, whatever the
    context holds; the context mask itself is never changed (only new masks are returned)."""
    h = w = 3
    full = np.ones((h, w), bool)
    out = exclusive_masks(np.stack([full, full]), np.array([0.5, 0.5]), full[None], np.array([0.5]))
    np.testing.assert_array_equal(out[0], full)
    assert not out[1].any()
