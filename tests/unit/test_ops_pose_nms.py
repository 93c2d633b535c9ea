from __future__ import annotations

import numpy as np

from bmp_core.ops.oks import oks_matrix
from bmp_core.ops.pose_nms import pose_nms


def _pose(offset_x: float, num_valid: int, spread: float = 40.0) -> np.ndarray:
    k = np.zeros((17, 3))
    k[:, 0] = 100 + offset_x + np.linspace(0, spread, 17)
    k[:, 1] = 100 + np.linspace(0, 2 * spread, 17)
    k[:, 2] = np.where(np.arange(17) < num_valid, 0.9, 0.1)
    return k


def _box(offset_x: float) -> np.ndarray:
    return np.array([90 + offset_x, 90, 150 + offset_x, 190], float)


def test_weaker_duplicate_is_removed_and_distinct_pose_kept() -> None:
    kpts = np.stack([_pose(0, 17), _pose(1, 12), _pose(200, 17)])
    boxes = np.stack([_box(0), _box(1), _box(200)])
    assert pose_nms(kpts, boxes, oks_thr=0.8, keypoint_thr=0.3).tolist() == [True, False, True]


def test_old_instance_can_be_removed_by_a_better_new_one() -> None:
    # index 0 = old (5 valid keypoints), index 1 = new (17 valid): the old one goes (HEAD semantics)
    kpts = np.stack([_pose(0, 17), _pose(1, 17)])
    kpts[0, 5:, 2] = 0.1
    boxes = np.stack([_box(0), _box(1)])
    assert pose_nms(kpts, boxes, 0.8, 0.3).tolist() == [False, True]


def test_tie_removes_the_ground_truth_side_of_the_best_pair() -> None:
    kpts = np.stack([_pose(0, 17), _pose(0.5, 17)])
    boxes = np.stack([_box(0), _box(0.5)])
    oks = oks_matrix(kpts, boxes, 0.3)
    np.fill_diagonal(oks, -1)
    i, _ = np.unravel_index(np.argmax(oks), oks.shape)
    keep = pose_nms(kpts, boxes, 0.8, 0.3)
    assert keep.sum() == 1 and not keep[i]


def test_removed_instance_no_longer_suppresses() -> None:
    # A ~ B and B ~ C, but A !~ C; valid keypoints A 17 > B 14 > C 12. A removes B first (the best
    # pair). The reference keeps B's row, so B would then remove C; C must survive
    # (docs/decisions.md#a-removed-person-no-longer-suppresses-others).
    kpts = np.stack([_pose(0, 17), _pose(3, 14), _pose(6.5, 12)])
    boxes = np.stack([_box(0), _box(3), _box(6.5)])
    oks = oks_matrix(kpts, boxes, 0.3)
    assert oks[0, 1] > oks[1, 2] > 0.8 and oks[0, 2] < 0.8 and oks[2, 0] < 0.8
    assert pose_nms(kpts, boxes, 0.8, 0.3).tolist() == [True, False, True]


def test_threshold_is_strict_and_small_inputs() -> None:
    kpts = np.stack([_pose(0, 17), _pose(3, 10)])
    boxes = np.stack([_box(0), _box(3)])
    oks = oks_matrix(kpts, boxes, 0.3)
    best = max(oks[0, 1], oks[1, 0])
    assert pose_nms(kpts, boxes, best, 0.3).tolist() == [True, True]
    assert pose_nms(kpts, boxes, best - 1e-9, 0.3).sum() == 1
    assert pose_nms(np.zeros((0, 17, 3)), np.zeros((0, 4)), 0.8, 0.3).tolist() == []
    assert pose_nms(kpts[:1], boxes[:1], 0.8, 0.3).tolist() == [True]
