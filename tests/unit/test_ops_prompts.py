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


# --- k_most_visible (BMP v2) ---------------------------------------------------------------------------

def _xy_s(score: float = 0.9) -> np.ndarray:
    k = np.zeros((17, 3))
    k[:, 0], k[:, 1], k[:, 2] = np.arange(17) * 10.0, np.arange(17) * 5.0 + 1, score
    return k


def test_k_most_visible_ties_go_by_keypoint_index() -> None:
    from bmp_core.ops.prompts import select_most_visible

    vis = np.full(17, 0.2)
    vis[[12, 3, 9]] = 1.0  # saturated after flip averaging: a three-way tie
    vis[0] = 0.95
    out = select_most_visible(_xy_s(), vis, 3, 0.5, 0.5)
    np.testing.assert_allclose(out[:, 0], [30, 90, 120])  # indices 3, 9, 12 (x = 10 * index)
    np.testing.assert_allclose(out[:, 2], [1, 1, 1])
    four = select_most_visible(_xy_s(), vis, 4, 0.5, 0.5)
    np.testing.assert_allclose(four[:, 0], [30, 90, 120, 0])
    # the same as brute force: sort by (-visibility, index), for random ties
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = rng.choice([0.3, 0.5, 0.6, 0.9, 1.0], 17)
        k = _xy_s()
        k[:, 2] = rng.choice([0.4, 0.5, 0.7], 17)
        got = select_most_visible(k, v, 3, 0.5, 0.5)
        gate = any(k[i, 2] > 0.5 and v[i] > 0.5 for i in range(17))
        want = sorted((i for i in range(17) if v[i] >= 0.5), key=lambda i: (-v[i], i))[:3] if gate else []
        np.testing.assert_allclose(got[:, 0], [10.0 * i for i in want])


def test_k_most_visible_gate_is_strict_and_the_filter_is_not() -> None:
    from bmp_core.ops.prompts import select_most_visible

    vis = np.full(17, 0.1)
    vis[5] = 0.5  # exactly the threshold: a candidate (>=) but never opens the gate (>)
    assert select_most_visible(_xy_s(0.9), vis, 3, 0.5, 0.5).shape == (0, 3)
    scores = _xy_s(0.9)
    scores[:, 2] = 0.5  # every score = the threshold: the gate (score > 0.5) fails too
    vis[7] = 0.8
    assert select_most_visible(scores, vis, 3, 0.5, 0.5).shape == (0, 3)
    scores[7, 2] = 0.51  # keypoint 7 opens the gate; 5 comes along (v >= 0.5) though its score is 0.5
    out = select_most_visible(scores, vis, 3, 0.5, 0.5)
    np.testing.assert_allclose(out, [[70, 36, 0.8], [50, 26, 0.5]], rtol=1e-6)
    # a visible keypoint whose score is low is still a candidate once the gate is open (score not re-checked)
    scores[9, 2], vis[9] = 0.01, 0.9
    np.testing.assert_allclose(select_most_visible(scores, vis, 3, 0.5, 0.5)[:, 0], [90, 70, 50])


def test_k_most_visible_zero_candidates_and_missing_visibility() -> None:
    import pytest

    from bmp_core.ops.prompts import MissingVisibilityError, has_prompt, select_most_visible

    assert select_most_visible(_xy_s(0.9), np.zeros(17), 3, 0.5, 0.5).shape == (0, 3)
    assert select_most_visible(_xy_s(0.1), np.ones(17), 3, 0.5, 0.5).shape == (0, 3)
    with pytest.raises(MissingVisibilityError):
        select_most_visible(_xy_s(), None, 3, 0.5, 0.5)
    with pytest.raises(MissingVisibilityError):
        has_prompt(np.ones((2, 17)), 0.5, 0.5, None, "k_most_visible")
    # has_prompt agrees with the selection on random people
    rng = np.random.default_rng(1)
    s, v = rng.uniform(0, 1, (300, 17)), rng.choice([0.2, 0.5, 0.7], (300, 17))
    picks = [len(select_most_visible(np.c_[np.zeros((17, 2)), s[i]], v[i], 3, 0.5, 0.5)) > 0 for i in range(300)]
    assert has_prompt(s, 0.5, 0.5, v, "k_most_visible").tolist() == picks and 0 < sum(picks) < 300
