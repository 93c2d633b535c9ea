"""The lite detector's pure-numpy parts that MediaPipe's graph does not check: the windows and their merge
(no MediaPipe needed; the decoding itself is checked against MediaPipe in test_lite_detector.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bmp_core.models.lite.pose_detection import (
    PoseDetections,
    merge_people,
    person_regions_xyxy,
    ssd_anchor_centres,
    window_grid,
)

pytestmark = pytest.mark.lite


@pytest.mark.parametrize("width, height", [(640, 392), (333, 500), (100, 100)])
def test_windows_cover_the_image_at_each_size(width: int, height: int) -> None:
    windows = window_grid(width, height, (1.0, 0.6), 0.5)
    assert windows[0].tolist() == [0, 0, width, height]
    assert len({tuple(w) for w in windows.tolist()}) == len(windows)  # none twice
    for fraction in (1.0, 0.6):
        side = round(fraction * min(width, height))
        # The windows of this size (for a square image, the whole image is the 1.0 one: run once).
        these = windows[((windows[:, 2] - windows[:, 0]) == side) & ((windows[:, 3] - windows[:, 1]) == side)]
        assert len(these) >= 1
        assert (these[:, :2] >= 0).all() and (these[:, 2] <= width).all() and (these[:, 3] <= height).all()
        covered = np.zeros((height, width), bool)
        for x1, y1, x2, y2 in these:
            covered[y1:y2, x1:x2] = True
        assert covered.all()


def test_anchor_count_and_first_cells() -> None:
    anchors = ssd_anchor_centres()
    assert anchors.shape == (2254, 2)
    # 28 x 28 cells of stride 8, two anchors each, row by row: the first two sit in the first cell's centre.
    np.testing.assert_allclose(anchors[:2], [[0.5 / 28, 0.5 / 28]] * 2)
    np.testing.assert_allclose(anchors[2], [1.5 / 28, 0.5 / 28])
    # The last group (three layers of stride 32) has 6 anchors per cell of a 7 x 7 grid.
    np.testing.assert_allclose(anchors[-6:], [[6.5 / 7, 6.5 / 7]] * 6)


def _person(hip_xy: tuple[float, float], scale: float, score: float) -> PoseDetections:
    hx, hy = hip_xy
    keypoints = np.array([[[hx, hy], [hx, hy - scale], [hx, hy - scale / 2], [hx, hy - scale * 0.8]]], np.float32)
    face = np.array([[hx - 10, hy - scale - 10, hx + 10, hy - scale + 10]], np.float32)
    return PoseDetections(face, keypoints, np.array([score], np.float32))


def test_merge_keeps_the_best_of_each_person() -> None:
    dets = PoseDetections.concatenate([
        _person((100, 200), 100, 0.7),
        _person((105, 195), 95, 0.9),    # the same person seen by another window, better score
        _person((300, 200), 100, 0.8),   # someone else
        _person((100, 200), 40, 0.6),    # hip in the same place but the face far away: someone else
    ])
    merged = merge_people(dets, 0.3)
    np.testing.assert_allclose(merged.scores, [0.9, 0.8, 0.6])
    regions = person_regions_xyxy(merged)
    np.testing.assert_allclose(regions[0], [105 - 95, 195 - 95, 105 + 95, 195 + 95])  # side 2 x scale about the hip
