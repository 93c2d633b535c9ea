"""Mask -> polygon: checked against pycocotools' own polygon rasteriser (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from bmp_core.ops.polygons import mask_loops, mask_polygon, signed_area, simplify_loop


def _fill(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    rle = mask_utils.merge(mask_utils.frPyObjects([poly.reshape(-1).tolist()], height, width))
    return mask_utils.decode(rle).astype(bool)


def _blobs(seed: int, height: int = 40, width: int = 56) -> np.ndarray:
    """Random blobs: several parts, holes, diagonal touches."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), bool)
    for _ in range(int(rng.integers(1, 5))):
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        mask[y:y + int(rng.integers(3, 16)), x:x + int(rng.integers(3, 16))] = True
    for _ in range(int(rng.integers(0, 4))):
        y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
        mask[y:y + 2, x:x + 2] = False
    mask |= rng.random((height, width)) > 0.97  # single pixels, some touching only at corners
    return mask


@pytest.mark.parametrize("seed", range(12))
def test_loops_areas_add_up_to_the_pixel_count(seed: int) -> None:
    mask = _blobs(seed)
    loops = mask_loops(mask)
    assert sum(signed_area(loop) for loop in loops) == mask.sum()
    assert all(abs(signed_area(loop)) >= 1 for loop in loops)


@pytest.mark.parametrize("seed", range(12))
def test_exact_polygon_fills_back_to_the_mask_with_parts_and_holes(seed: int) -> None:
    mask = _blobs(seed)
    poly = mask_polygon(mask, tolerance_px=0)
    np.testing.assert_array_equal(_fill(poly, *mask.shape), mask)


def test_a_hole_stays_a_hole_and_two_parts_stay_two() -> None:
    mask = np.zeros((30, 40), bool)
    mask[2:20, 2:20] = True
    mask[8:12, 8:12] = False  # hole
    mask[22:28, 25:38] = True  # second part
    loops = mask_loops(mask)
    assert sorted(np.sign([signed_area(lp) for lp in loops]).tolist()) == [-1, 1, 1]
    filled = _fill(mask_polygon(mask, 1.0), 30, 40)
    assert not filled[10, 10] and filled[25, 30] and filled[5, 5]


@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.0])
def test_simplified_polygon_stays_close(tolerance: float) -> None:
    yy, xx = np.mgrid[:120, :160]
    mask = ((yy - 60) / 45.0) ** 2 + ((xx - 80) / 60.0) ** 2 <= 1  # staircase boundary
    exact = mask_loops(mask)[0]
    simple = simplify_loop(exact, tolerance)
    assert len(simple) < len(exact) * (0.9 if tolerance < 1 else 0.34)
    # Every exact vertex lies within the tolerance of the simplified outline.
    a, b = simple, np.roll(simple, -1, axis=0)
    ab = b - a
    t = np.clip(((exact[:, None] - a[None]) * ab[None]).sum(-1) / (ab ** 2).sum(-1)[None], 0, 1)
    dist = np.linalg.norm(exact[:, None] - (a[None] + t[..., None] * ab[None]), axis=-1).min(1)
    assert dist.max() <= tolerance + 1e-9
    filled = _fill(mask_polygon(mask, tolerance), *mask.shape)
    assert (filled & mask).sum() / (filled | mask).sum() > 0.97


def test_empty_mask_has_no_polygon() -> None:
    assert mask_polygon(np.zeros((5, 5), bool)) is None
    assert mask_loops(np.zeros((5, 5), bool)) == []
