from __future__ import annotations

import numpy as np

from bmp_core.ops.prompts import select_prompt_keypoints


def _kpts(points: dict[int, tuple[float, float, float]]) -> np.ndarray:
    k = np.zeros((17, 3))
    for i, p in points.items():
        k[i] = p
    return k


def test_distance_confidence_spreads_points_within_the_confident_band() -> None:
    # seed (0,0) .99; a near twin .98 at (1,0); a far point .97 at (100,0); weaker points elsewhere.
    pts = {0: (0, 0, 0.99), 1: (1, 0, 0.98), 2: (100, 0, 0.97), 3: (50, 80, 0.60)}
    for i, s in zip(range(4, 10), (0.59, 0.58, 0.57, 0.56, 0.55, 0.54), strict=True):
        pts[i] = (10.0 * i, 300.0, s)
    kpts = _kpts(pts)
    # Hand-run: band = 80th percentile of the scores with chosen ones at -1.
    # pick 2: band .674 -> {.98 (dist 1), .97 (dist 100)} -> (100,0)
    # pick 3: band .592 -> {.98 (dist 1), .60 (dist 94.3)} -> (50,80)
    out = select_prompt_keypoints(kpts, 3, 0.3, 0.3, "distance+confidence", collapse_face=False)
    np.testing.assert_allclose(out[:, :2], [[0, 0], [100, 0], [50, 80]])
    np.testing.assert_allclose(out[:, 2], [0.99, 0.97, 0.60], rtol=1e-6)
    by_conf = select_prompt_keypoints(kpts, 3, 0.3, 0.3, "confidence", collapse_face=False)
    np.testing.assert_allclose(by_conf[:, :2], [[0, 0], [1, 0], [100, 0]])


def test_face_collapses_to_its_most_confident_point() -> None:
    kpts = _kpts({0: (10, 10, 0.5), 1: (12, 8, 0.9), 2: (8, 8, 0.4), 5: (0, 40, 0.8), 11: (5, 90, 0.7)})
    out = select_prompt_keypoints(kpts, 6, 0.3, 0.3)
    assert len(out) == 3  # one face point + shoulder + hip
    face = [p for p in out if p[1] < 20]
    np.testing.assert_allclose(np.array(face)[:, :2], [[12, 8]])
    no_collapse = select_prompt_keypoints(kpts, 6, 0.3, 0.3, collapse_face=False)
    assert len(no_collapse) == 5


def test_unconfident_points_are_zeroed_and_never_prompt() -> None:
    # 0.25 passes visibility 0.2 but not confidence 0.3: it is zeroed first, then filtered.
    kpts = _kpts({5: (0, 40, 0.8), 6: (30, 40, 0.25), 11: (5, 90, 0.31)})
    out = select_prompt_keypoints(kpts, 6, confidence_thr=0.3, visibility_thr=0.2)
    np.testing.assert_allclose(sorted(out[:, 2]), [0.31, 0.8], rtol=1e-6)
    assert not np.any((out[:, 0] == 0) & (out[:, 1] == 0) & (out[:, 2] == 0))


def test_no_visible_keypoint_gives_no_prompt() -> None:
    kpts = _kpts({i: (i * 3.0, i * 5.0, 0.2) for i in range(17)})
    assert select_prompt_keypoints(kpts, 6, 0.3, 0.3).shape == (0, 3)
    assert select_prompt_keypoints(np.zeros((17, 3)), 6, 0.0, 0.0).shape == (0, 3)


def test_truncates_to_num_points_and_keeps_most_confident_first() -> None:
    rng = np.random.default_rng(3)
    kpts = np.concatenate([rng.uniform(0, 200, (17, 2)), rng.uniform(0.31, 1.0, (17, 1))], 1)
    out = select_prompt_keypoints(kpts, 6, 0.3, 0.3)
    assert out.shape == (6, 3) and out.dtype == np.float32
    assert out[0, 2] == np.float32(kpts[:, 2].max())
    assert len({tuple(p) for p in out.tolist()}) == 6  # no point chosen twice


def _numpy_reference_order(kpts_sorted: np.ndarray, percentile: float) -> np.ndarray:
    """The spec's greedy order written plainly with numpy (np.percentile, np.linalg.norm, argmax), full
    length: an independent check of the fast scalar version, which stops early."""
    xy, conf = kpts_sorted[:, :2], kpts_sorted[:, 2].copy()
    chosen, conf[0] = [0], -1.0
    min_dist = np.linalg.norm(xy - xy[0], axis=1)
    while len(chosen) < len(kpts_sorted):
        candidate = conf >= np.percentile(conf, percentile)
        candidate[chosen] = False
        if not candidate.any():
            candidate = conf > -1.0
        nxt = int(np.argmax(np.where(candidate, min_dist, -np.inf)))
        chosen.append(nxt)
        conf[nxt] = -1.0
        min_dist = np.minimum(min_dist, np.linalg.norm(xy - xy[nxt], axis=1))
    return np.asarray(chosen)


def test_fast_order_equals_numpy_reference_including_ties() -> None:
    rng = np.random.default_rng(11)
    for trial in range(400):
        n = int(rng.integers(1, 18))
        xy = rng.uniform(0, 300, (n, 2))
        scores = rng.uniform(0.3, 1.0, n)
        if trial % 3 == 0:  # ties: quantised scores and repeated / grid points
            scores = np.round(scores, 1)
            xy = np.round(xy / 50) * 50
        kpts = np.concatenate([xy, scores[:, None]], 1)
        kpts = kpts[np.argsort(-kpts[:, 2], kind="stable")]
        percentile = float(rng.choice([0.0, 37.5, 50.0, 80.0, 90.0, 100.0]))
        num_points = int(rng.integers(1, 18))
        expected = kpts[_numpy_reference_order(kpts, percentile)[:num_points]].astype(np.float32)
        out = select_prompt_keypoints(kpts, num_points, 0.3, 0.3, collapse_face=False,
                                      confidence_percentile=percentile)
        np.testing.assert_array_equal(out, expected, err_msg=f"trial {trial}")


def test_has_prompt_says_whether_the_selection_picks_anything() -> None:
    from bmp_core.ops.prompts import has_prompt

    rng = np.random.default_rng(3)
    for trial in range(400):
        kpts = np.zeros((17, 3), np.float32)
        kpts[:, :2] = rng.uniform(0, 100, (17, 2))
        kpts[:, 2] = rng.choice([0.0, 0.1, 0.3, 0.5, 0.7, 0.9], 17) * (rng.random(17) < 0.3)
        conf, vis = rng.choice([0.0, 0.3, 0.5]), rng.choice([0.0, 0.3, 0.5, 0.7])
        picked = select_prompt_keypoints(kpts, 6, conf, vis, "distance+confidence", bool(trial % 2), 80.0)
        assert has_prompt(kpts[None, :, 2], conf, vis)[0] == (len(picked) > 0), (trial, conf, vis)
