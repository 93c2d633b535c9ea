"""Dense-mask operations of the loop: exclusivity, mask-out, IoU and tight boxes.

Masks are (N, H, W) bool arrays of the image's size. They are never turned into polygons.
"""

from __future__ import annotations

import numpy as np


def exclusive_masks(
    masks: np.ndarray, scores: np.ndarray, context_masks: np.ndarray, context_scores: np.ndarray
) -> np.ndarray:
    """Give every contested pixel to the highest-scoring mask that covers it (bmp-method §2.5).

    Only ``masks`` (the new instances) change; ``context_masks`` (older instances) compete but keep
    their pixels, as in the reference. Ties go to the earlier mask, new masks before context ones.

    Args:
        masks: (N, H, W) bool new masks. scores: (N,) their scores.
        context_masks: (M, H, W) bool. context_scores: (M,).

    Returns:
        (N, H, W) bool new masks with the pixels they lost removed.
    """
    n = len(masks)
    if n == 0 or n + len(context_masks) < 2:
        return masks.copy()
    stacked = np.concatenate([masks, context_masks], axis=0)
    all_scores = np.concatenate([scores, context_scores]).astype(np.float64)
    weighted = np.where(stacked, all_scores[:, None, None], -np.inf)
    winner = np.argmax(weighted, axis=0)  # first max wins ties
    return masks & (winner[None] == np.arange(n)[:, None, None])


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


def mask_out(image_bgr: np.ndarray, masks: np.ndarray, dilate_px: int = 0) -> np.ndarray:
    """The next detector input: ``image_bgr`` with every pixel under any of ``masks`` set to 0 (HEAD).

    Args:
        image_bgr: (H, W, 3) uint8. masks: (N, H, W) bool.

    Returns:
        (H, W, 3) uint8 copy.
    """
    out = image_bgr.copy()
    if len(masks):
        covered = dilate(np.any(masks, axis=0), dilate_px)
        out[covered] = 0
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (N, H, W) bool stacks -> (N,) float32; 0 where both are empty."""
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    inter = np.logical_and(a, b).sum(1)
    union = np.logical_or(a, b).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float32)


def mask_boxes_xyxy(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of (N, H, W) bool masks -> (N, 4) float32 xyxy, pixel-edge convention.

    A mask covering pixel columns c0..c1 gets x1 = c0, x2 = c1 + 1 (so the box area of a full
    rectangle equals its pixel count). NaN rows for empty masks.
    """
    out = np.full((len(masks), 4), np.nan, np.float32)
    for i, mask in enumerate(masks):
        cols = np.flatnonzero(mask.any(axis=0))
        if len(cols) == 0:
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out
