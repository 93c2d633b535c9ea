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
        for y, x in zip(*np.nonzero(m), strict=True):
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


# --- the windowed operations against the plain whole-image definitions (bmp_core.testing.dense_ops) ---

from bmp_core.ops.masks import mask_windows, window_boxes_xyxy, windows_from_boxes
from bmp_core.testing.dense_ops import (
    exclusive_masks_dense,
    mask_boxes_xyxy_dense,
    mask_iou_dense,
    mask_out_dense,
)


def _random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Blobs of random size and place (some touching the borders, one empty, one single pixel)."""
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        kind = rng.integers(0, 5)
        if kind == 0:
            continue  # empty
        if kind == 1:
            masks[i, rng.integers(0, h), rng.integers(0, w)] = True
            continue
        y0, x0 = rng.integers(-h // 4, h), rng.integers(-w // 4, w)
        y1, x1 = y0 + rng.integers(1, h + 1), x0 + rng.integers(1, w + 1)
        block = masks[i, max(y0, 0): max(y1, 0), max(x0, 0): max(x1, 0)]
        block[...] = rng.uniform(size=block.shape) > rng.uniform(0.0, 0.6)
    return masks


def _assert_bytes_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def test_windowed_ops_equal_whole_image_definitions_on_random_masks() -> None:
    rng = np.random.default_rng(7)
    for _ in range(60):
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 50))
        n, m = int(rng.integers(0, 6)), int(rng.integers(0, 6))
        new, context = _random_masks(rng, n, h, w), _random_masks(rng, m, h, w)
        # few distinct values: ties between new masks, between new and context, and zeros
        scores = rng.choice([0.0, 0.5, 0.5, 0.9], n)
        context_scores = rng.choice([0.0, 0.5, 0.9], m)
        want = exclusive_masks_dense(new, scores, context, context_scores)
        _assert_bytes_equal(exclusive_masks(new, scores, context, context_scores), want)
        # with the enclosing windows given, the context as a list of rows, and into caller's rows
        rows = list(np.zeros((n, h, w), bool))
        exclusive_masks(new, scores, list(context), context_scores, mask_windows(new), mask_windows(context),
                        out=rows)
        _assert_bytes_equal(np.asarray(rows, bool).reshape(n, h, w), want)
        other = _random_masks(rng, n, h, w)
        _assert_bytes_equal(mask_iou(new, other), mask_iou_dense(new, other))
        _assert_bytes_equal(mask_boxes_xyxy(new), mask_boxes_xyxy_dense(new))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for r in (0, 1, 3):
            _assert_bytes_equal(mask_out(image, new, r), mask_out_dense(image, new, r))
            loose = np.tile([0, 0, w, h], (n, 1))  # whole-image windows enclose anything
            _assert_bytes_equal(mask_out(image, new, r, loose), mask_out_dense(image, new, r))


def test_exclusive_keeps_argmax_rules_for_nan_and_infinite_scores() -> None:
    rng = np.random.default_rng(8)
    for special in (np.nan, -np.inf, np.inf):
        for _ in range(10):
            new, context = _random_masks(rng, 4, 12, 15), _random_masks(rng, 3, 12, 15)
            scores = rng.choice([0.2, 0.7, special], 4)
            context_scores = rng.choice([0.7, special], 3)
            _assert_bytes_equal(exclusive_masks(new, scores, context, context_scores),
                                exclusive_masks_dense(new, scores, context, context_scores))


def test_mask_windows_are_tight_and_respect_enclosing_hints() -> None:
    rng = np.random.default_rng(9)
    masks = _random_masks(rng, 30, 25, 33)
    windows = mask_windows(masks)
    boxes = mask_boxes_xyxy_dense(masks)
    empty = np.isnan(boxes).any(axis=1)
    np.testing.assert_array_equal(windows[~empty], boxes[~empty].astype(np.int64))
    assert (windows[empty] == 0).all()
    loose = np.clip(windows + [-2, -3, 4, 1], 0, [33, 25, 33, 25])
    loose[empty] = [0, 0, 33, 25]
    np.testing.assert_array_equal(mask_windows(masks, loose), windows)
    np.testing.assert_array_equal(windows_from_boxes(mask_boxes_xyxy(masks)), windows)


def test_rle_with_windows_equals_pycocotools() -> None:
    rng = np.random.default_rng(10)
    masks = _random_masks(rng, 12, 31, 17)
    theirs = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for windows in (None, mask_windows(masks), np.tile([0, 0, 17, 31], (12, 1))):
        ours = encode_rle(masks, windows)
        assert [r["counts"] for r in ours] == [r["counts"].decode() for r in theirs]


def _loose(windows: np.ndarray, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Windows grown by a random margin (clipped to the image); empty ones stay empty or become whole."""
    grown = windows + rng.integers(0, 4, windows.shape) * np.array([-1, -1, 1, 1])
    grown = np.clip(grown, 0, [w, h, w, h])
    empty = windows[:, 2] <= windows[:, 0]
    grown[empty] = np.where(rng.random((int(empty.sum()), 1)) < 0.5, 0, [0, 0, w, h])
    return grown.astype(np.int64)


def test_ops_read_only_inside_given_loose_windows_and_equal_the_definitions() -> None:
    """Windows that enclose but are not tight (as models give them) are used as they are, same results."""
    rng = np.random.default_rng(11)
    for _ in range(80):
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 50))
        n, m = int(rng.integers(0, 6)), int(rng.integers(0, 6))
        new, context = _random_masks(rng, n, h, w), _random_masks(rng, m, h, w)
        scores = rng.choice([0.0, 0.5, 0.5, 0.9], n)
        context_scores = rng.choice([0.0, 0.5, 0.9], m)
        windows, context_windows = _loose(mask_windows(new), rng, h, w), _loose(mask_windows(context), rng, h, w)
        want = exclusive_masks_dense(new, scores, context, context_scores)
        rows, tight = list(np.zeros((n, h, w), bool)), np.full((n, 4), -1, np.int64)
        exclusive_masks(new, scores, list(context), context_scores, windows, context_windows, out=rows,
                        out_windows=tight)
        _assert_bytes_equal(np.asarray(rows, bool).reshape(n, h, w), want)
        np.testing.assert_array_equal(tight, mask_windows(want))  # the results' own tight windows
        other = _random_masks(rng, n, h, w)
        _assert_bytes_equal(mask_iou(new, other, windows, _loose(mask_windows(other), rng, h, w)),
                            mask_iou_dense(new, other))
        np.testing.assert_array_equal(window_boxes_xyxy(mask_windows(new)), mask_boxes_xyxy_dense(new))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for r in (0, 2):
            _assert_bytes_equal(mask_out(image, new, r, windows), mask_out_dense(image, new, r))


def test_exclusive_out_windows_on_the_argmax_path_and_into_a_new_stack() -> None:
    rng = np.random.default_rng(12)
    for special in (np.nan, np.inf, 0.3):
        new, context = _random_masks(rng, 5, 14, 16), _random_masks(rng, 2, 14, 16)
        scores, tight = np.array([0.2, special, 0.7, 0.7, 0.1]), np.full((5, 4), -1, np.int64)
        got = exclusive_masks(new, scores, context, np.array([0.7, special]), out_windows=tight)
        _assert_bytes_equal(got, exclusive_masks_dense(new, scores, context, np.array([0.7, special])))
        np.testing.assert_array_equal(tight, mask_windows(got))


def test_mask_out_in_bands_with_the_union_inside_the_image() -> None:
    """An image of several ~256 kB bands, the masks' union away from every border, with dilation."""
    rng = np.random.default_rng(13)
    h, w = 300, 1000  # 87 rows a band
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((3, h, w), bool)
    masks[0, 20:200, 100:300] = rng.random((180, 200)) < 0.7
    masks[1, 150:280, 600:950] = True
    masks[2, 90, 500] = True
    for r in (0, 1, 5):
        _assert_bytes_equal(mask_out(image, masks, r, _loose(mask_windows(masks), rng, h, w)),
                            mask_out_dense(image, masks, r))
    image_f = np.asfortranarray(image)  # any memory layout of the image
    _assert_bytes_equal(mask_out(image_f, masks, 1), mask_out_dense(image, masks, 1))
