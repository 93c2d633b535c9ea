"""Dense-mask operations of the loop: exclusivity, mask-out, IoU and tight boxes.

Masks are (N, H, W) bool arrays of the image's size. They are never turned into polygons.

Every operation works inside each mask's pixel window (its tight box, ``mask_windows``) instead of on
whole-image stacks: a person covers a small part of the image, and the whole-image versions cost
pixels x people (at 1080p with 20 people, ~40 MB per stack and a float64 score stack for
exclusivity). The results are bit-identical to the whole-image definitions, which
``bmp_core.testing.dense_ops`` keeps as plain references (tests/unit/test_ops_masks.py compares them).
Windows are ``(x0, y0, x1, y1)`` int64 pixel edges, end exclusive (``mask[y0:y1, x0:x1]``); an empty
mask has an empty window. Callers that know a window enclosing each mask (every True pixel inside it,
the window inside the image) may pass it to skip the search: the operations then read only inside
the windows given, tight or not (a larger window costs time only, a smaller one gives wrong results).
Only ``mask_windows`` and ``mask_boxes_xyxy`` make windows tight.
"""

from __future__ import annotations

import numpy as np


def mask_windows(masks: np.ndarray | list[np.ndarray], enclosing_xyxy: np.ndarray | None = None
                 ) -> np.ndarray:
    """Tight pixel windows of (N, H, W) bool masks -> (N, 4) int64 ``(x0, y0, x1, y1)``, end exclusive.

    Args:
        masks: (N, H, W) bool, or N (H, W) arrays.
        enclosing_xyxy: optional (N, 4) windows known to enclose each mask; the search stays inside.

    Returns:
        Tight windows; all zeros for an empty mask.
    """
    out = np.zeros((len(masks), 4), np.int64)
    for i, mask in enumerate(masks):
        x0 = y0 = 0
        if enclosing_xyxy is not None:
            x0, y0, x1, y1 = (int(v) for v in enclosing_xyxy[i])
            mask = mask[y0:y1, x0:x1]
        _tight_window(mask, x0, y0, out[i])
    return out


def _tight_window(crop: np.ndarray, x0: int, y0: int, out: np.ndarray) -> None:
    """Write the tight window of the (h, w) bool ``crop`` at ``(x0, y0)`` into ``out``; untouched if empty."""
    rows = np.flatnonzero(crop.any(axis=1))
    if len(rows) == 0:
        return
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(crop[r0:r1].any(axis=0))
    out[:] = (x0 + cols[0], y0 + r0, x0 + cols[-1] + 1, y0 + r1)


def _given_or_found(masks: np.ndarray | list[np.ndarray], windows_xyxy: np.ndarray | None) -> np.ndarray:
    """The enclosing windows the caller gave, else the tight ones (one read of each mask)."""
    if windows_xyxy is None:
        return mask_windows(masks)
    return np.asarray(windows_xyxy, np.int64).reshape(len(masks), 4)


def window_boxes_xyxy(windows_xyxy: np.ndarray) -> np.ndarray:
    """TIGHT windows (``mask_windows``) -> ``mask_boxes_xyxy``'s (N, 4) float32 boxes, NaN rows for empty."""
    windows = np.asarray(windows_xyxy, np.int64).reshape(-1, 4)
    out = windows.astype(np.float32)
    out[windows[:, 2] <= windows[:, 0]] = np.nan
    return out


def windows_from_boxes(boxes_xyxy: np.ndarray) -> np.ndarray:
    """``mask_boxes_xyxy``-style float boxes (NaN rows for empty masks) -> int64 windows (empty for NaN)."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    return np.where(np.isnan(boxes).any(axis=1, keepdims=True), 0, np.nan_to_num(boxes)).astype(np.int64)


def exclusive_masks(
    masks: np.ndarray,
    scores: np.ndarray,
    context_masks: np.ndarray | list[np.ndarray],
    context_scores: np.ndarray,
    windows_xyxy: np.ndarray | None = None,
    context_windows_xyxy: np.ndarray | None = None,
    out: list[np.ndarray] | None = None,
    out_windows: np.ndarray | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Give every contested pixel to the highest-scoring mask that covers it (docs/method.md#exclusive-masks).

    Only ``masks`` (the new instances) change; ``context_masks`` (older instances) compete but keep
    their pixels, as in the reference. Ties go to the earlier mask, new masks before context ones.

    Args:
        masks: (N, H, W) bool new masks. scores: (N,) their scores.
        context_masks: (M, H, W) bool, or M (H, W) arrays. context_scores: (M,).
        windows_xyxy, context_windows_xyxy: optional enclosing windows of the two stacks (see module).
        out: optional N all-False (H, W) bool arrays (e.g. rows of a bigger stack) to write the result
            into; only the masks' windows are written.
        out_windows: optional (N, 4) int64 array that receives the results' tight windows (as
            ``mask_windows`` of the result would give), found while each result is written.

    Returns:
        (N, H, W) bool new masks with the pixels they lost removed; ``out`` itself when given.
    """
    n = len(masks)
    windows = _given_or_found(masks, windows_xyxy)
    if out is None:
        stack = np.zeros_like(masks, dtype=bool)  # zero pages: only the windows written below are touched
        exclusive_masks(masks, scores, context_masks, context_scores, windows, context_windows_xyxy,
                        list(stack), out_windows)
        return stack
    if n == 0:
        return out
    all_scores = np.concatenate([scores, context_scores]).astype(np.float64)
    if n + len(context_masks) < 2 or not np.isfinite(all_scores).all():
        # One mask alone keeps all its pixels; with NaN or infinite scores argmax's own rules (NaN wins,
        # all -inf goes to mask 0) are not a plain order, so keep its definition.
        dense = masks if n + len(context_masks) < 2 else _exclusive_dense(masks, context_masks, all_scores)
        for i in range(n):
            _write_window(dense[i], out[i], windows[i])
        if out_windows is not None:
            out_windows[:] = mask_windows(out, windows)
        return out
    if out_windows is not None:
        out_windows[:] = 0  # an empty result keeps its empty window
    context_windows = _given_or_found(context_masks, context_windows_xyxy)
    # A pixel of new mask i is lost iff a mask that covers it comes first in (score desc, index asc):
    # exactly argmax's "highest score, first index on ties". Walking that order with a canvas of the
    # pixels claimed so far touches each mask's window twice, whatever the overlaps.
    order = np.lexsort((np.arange(len(all_scores)), -all_scores))
    last_new = int(np.flatnonzero(order < n)[-1])
    claimed = np.zeros(masks.shape[1:], bool)
    for k in order[: last_new + 1]:
        x0, y0, x1, y1 = windows[k] if k < n else context_windows[k - n]
        if x1 <= x0:
            continue
        src = masks[k] if k < n else context_masks[k - n]
        window = src[y0:y1, x0:x1]
        taken = claimed[y0:y1, x0:x1]
        if k < n:
            result = out[k][y0:y1, x0:x1]
            np.greater(window, taken, out=result)  # window & ~taken, written in place
            if out_windows is not None:
                _tight_window(result, int(x0), int(y0), out_windows[k])
        taken |= window
    return out


def _write_window(src: np.ndarray, dst: np.ndarray, window: np.ndarray) -> None:
    x0, y0, x1, y1 = (int(v) for v in window)
    if x1 > x0:
        dst[y0:y1, x0:x1] = src[y0:y1, x0:x1]


def _exclusive_dense(masks: np.ndarray, context_masks: np.ndarray | list[np.ndarray], all_scores: np.ndarray
                     ) -> np.ndarray:
    context = np.asarray(context_masks, bool).reshape((-1, *masks.shape[1:]))
    stacked = np.concatenate([masks, context], axis=0)
    weighted = np.where(stacked, all_scores[:, None, None], -np.inf)
    winner = np.argmax(weighted, axis=0)  # first max wins ties
    return masks & (winner[None] == np.arange(len(masks))[:, None, None])


def dilate(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary dilation of an (H, W) bool mask with a (2r+1)^2 square."""
    if radius_px <= 0:
        return mask
    out = mask.copy()
    for axis in (0, 1):  # the square kernel is separable: a max over rows, then over columns
        src = out.copy()
        for shift in range(1, radius_px + 1):
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[axis], hi[axis] = slice(shift, None), slice(None, -shift)
            out[tuple(lo)] |= src[tuple(hi)]
            out[tuple(hi)] |= src[tuple(lo)]
    return out


def mask_out(
    image_bgr: np.ndarray, masks: np.ndarray, dilate_px: int = 0, windows_xyxy: np.ndarray | None = None
) -> np.ndarray:
    """The next detector input: ``image_bgr`` with every pixel under any of ``masks`` set to 0 (HEAD).

    Args:
        image_bgr: (H, W, 3) uint8. masks: (N, H, W) bool.
        dilate_px: grow the covered area by this many pixels (square) first.
        windows_xyxy: optional enclosing windows of ``masks`` (see module).

    Returns:
        (H, W, 3) uint8 copy.
    """
    if len(masks) == 0:
        return image_bgr.copy()
    windows = _given_or_found(masks, windows_xyxy)
    filled = windows[windows[:, 2] > windows[:, 0]]
    if len(filled) == 0:
        return image_bgr.copy()
    h, w = masks.shape[1:]
    # The union window grown by the dilation holds every pixel the whole-image version would zero.
    ux0, uy0 = (max(int(v) - dilate_px, 0) for v in filled[:, :2].min(axis=0))
    ux1, uy1 = int(filled[:, 2].max()) + dilate_px, int(filled[:, 3].max()) + dilate_px
    ux1, uy1 = min(ux1, w), min(uy1, h)
    covered = np.zeros((uy1 - uy0, ux1 - ux0), bool)
    for mask, (x0, y0, x1, y1) in zip(masks, windows, strict=True):
        if x1 > x0:
            covered[y0 - uy0: y1 - uy0, x0 - ux0: x1 - ux0] |= mask[y0:y1, x0:x1]
    keep = (~dilate(covered, dilate_px)).view(np.uint8)
    # A contiguous multiply by a (rows, cols, channels) 0/1 stack runs faster than a strided multiply
    # per channel (or boolean-index assignment, or one broadcast multiply whose inner loop is only 3
    # long) over a window that can be most of the image. The stack is filled a band of rows at a time
    # (~256 kB, so it stays in cache between its filling and the multiply, and is allocated once).
    # The product is written straight into the copy; only what lies outside the union is copied.
    out = np.empty_like(image_bgr)
    out[:uy0], out[uy1:] = image_bgr[:uy0], image_bgr[uy1:]
    out[uy0:uy1, :ux0], out[uy0:uy1, ux1:] = image_bgr[uy0:uy1, :ux0], image_bgr[uy0:uy1, ux1:]
    channels = image_bgr.shape[2]
    band = max(1, 2**18 // max(1, keep.shape[1] * channels))
    stack = np.empty((min(band, len(keep)), keep.shape[1], channels), np.uint8)
    for r0 in range(0, len(keep), band):
        rows = keep[r0: r0 + band]
        part = stack[: len(rows)]
        for channel in range(channels):
            part[:, :, channel] = rows
        r, r1 = uy0 + r0, uy0 + r0 + len(rows)
        np.multiply(image_bgr[r:r1, ux0:ux1], part, out=out[r:r1, ux0:ux1])
    return out


def mask_iou(
    a: np.ndarray,
    b: np.ndarray,
    windows_a_xyxy: np.ndarray | None = None,
    windows_b_xyxy: np.ndarray | None = None,
) -> np.ndarray:
    """Row-wise IoU of two (N, H, W) bool stacks -> (N,) float32; 0 where both are empty.

    Pixel counts come from each mask's window, the intersection from the two windows' overlap.
    """
    wa, wb = _given_or_found(a, windows_a_xyxy), _given_or_found(b, windows_b_xyxy)
    inter = np.zeros(len(a), np.int64)
    union = np.zeros(len(a), np.int64)
    for i in range(len(a)):
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = wa[i], wb[i]
        count_a = np.count_nonzero(a[i, ay0:ay1, ax0:ax1])
        count_b = np.count_nonzero(b[i, by0:by1, bx0:bx1])
        x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
        if x1 > x0 and y1 > y0:
            inter[i] = np.count_nonzero(a[i, y0:y1, x0:x1] & b[i, y0:y1, x0:x1])
        union[i] = count_a + count_b - inter[i]
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float32)


def mask_boxes_xyxy(masks: np.ndarray, windows_xyxy: np.ndarray | None = None) -> np.ndarray:
    """Tight boxes of (N, H, W) bool masks -> (N, 4) float32 xyxy, pixel-edge convention.

    A mask covering pixel columns c0..c1 gets x1 = c0, x2 = c1 + 1 (so the box area of a full
    rectangle equals its pixel count). NaN rows for empty masks.

    Args:
        windows_xyxy: optional enclosing windows of ``masks`` (see module).
    """
    return window_boxes_xyxy(mask_windows(masks, windows_xyxy))

