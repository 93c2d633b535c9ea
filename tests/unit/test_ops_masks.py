from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from bmp_core.ops.masks import dilate, exclusive_masks, mask_boxes_xyxy, mask_iou, mask_out
from bmp_core.ops.rle import encode_rle


def _rect(h: int, w: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


def test_exclusive_masks_give_contested_pixels_to_the_best_score() -> None:
    h, w = 6, 8
    new = np.stack([_rect(h, w, 0, 0, 5, 6), _rect(h, w, 3, 0, 8, 6)])
    old = np.stack([_rect(h, w, 0, 0, 2, 3)])
    out = exclusive_masks(new, np.array([0.6, 0.9]), old, np.array([0.8]))
    # columns 3-4 are contested by the two new masks: 0.9 wins; old (0.8) takes columns 0-1 rows 0-2
    expected0 = _rect(h, w, 0, 0, 3, 6) & ~_rect(h, w, 0, 0, 2, 3)
    np.testing.assert_array_equal(out[0], expected0)
    np.testing.assert_array_equal(out[1], new[1])
    # the union never grows and no pixel belongs to two new masks
    assert not np.any(out.sum(0) > 1) and np.all(out <= new)
    # a single mask in total is left alone
    np.testing.assert_array_equal(exclusive_masks(new[:1], np.array([0.1]), old[:0], np.zeros(0)), new[:1])


def test_exclusive_tie_goes_to_the_earlier_mask() -> None:
    a = _rect(4, 4, 0, 0, 3, 3)
    b = _rect(4, 4, 1, 1, 4, 4)
    out = exclusive_masks(np.stack([a, b]), np.array([0.5, 0.5]), np.zeros((0, 4, 4), bool), np.zeros(0))
    np.testing.assert_array_equal(out[0], a)
    np.testing.assert_array_equal(out[1], b & ~a)


def test_dilate_matches_brute_force_square_kernel() -> None:
    rng = np.random.default_rng(0)
    m = rng.uniform(size=(20, 25)) > 0.97
    for r in (0, 1, 3):
        brute = np.zeros_like(m)
        for y, x in zip(*np.nonzero(m)):
            brute[max(0, y - r): y + r + 1, max(0, x - r): x + r + 1] = True
        np.testing.assert_array_equal(dilate(m, r), brute)


def test_mask_out_zeroes_only_covered_pixels() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(1, 255, (10, 12, 3), dtype=np.uint8)
    masks = np.stack([_rect(10, 12, 1, 1, 4, 4), _rect(10, 12, 6, 5, 9, 9)])
    out = mask_out(image, masks)
    covered = masks.any(0)
    assert np.all(out[covered] == 0)
    np.testing.assert_array_equal(out[~covered], image[~covered])
    assert image.min() > 0  # the input is not modified
    grown = mask_out(image, masks, dilate_px=1)
    assert (grown == 0).all(axis=2).sum() == dilate(covered, 1).sum()
    np.testing.assert_array_equal(mask_out(image, masks[:0]), image)


def test_mask_iou_and_boxes_match_pycocotools() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(size=(5, 30, 40)) > 0.6
    b = rng.uniform(size=(5, 30, 40)) > 0.5
    a[4] = False
    ra, rb = encode_rle(a), encode_rle(b)
    theirs = np.diag(mask_utils.iou([{**r, "counts": r["counts"].encode()} for r in ra],
                                    [{**r, "counts": r["counts"].encode()} for r in rb], [0] * 5))
    np.testing.assert_allclose(mask_iou(a, b), theirs, atol=1e-6)
    boxes = mask_boxes_xyxy(a)
    xywh = mask_utils.toBbox([{**r, "counts": r["counts"].encode()} for r in ra])
    np.testing.assert_allclose(boxes[:4, :2], xywh[:4, :2])
    np.testing.assert_allclose(boxes[:4, 2:] - boxes[:4, :2], xywh[:4, 2:])
    assert np.isnan(boxes[4]).all()
    np.testing.assert_array_equal(mask_boxes_xyxy(_rect(9, 9, 2, 3, 5, 7)[None])[0], [2, 3, 5, 7])
