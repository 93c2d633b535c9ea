"""COCO run-length encoding of masks through pycocotools (the format masks leave workers in).

An RLE here is ``{"size": [H, W], "counts": str}`` (compressed COCO RLE, counts as UTF-8 text), the
form COCO JSON files and Parquet store.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def encode_rle(masks: np.ndarray, windows_xyxy: np.ndarray | None = None) -> list[dict[str, Any]]:
    """(N, H, W) bool -> N compressed COCO RLEs (byte-identical to ``pycocotools.mask.encode``).

    The run lengths are computed inside each mask's window (``rle_counts``); pycocotools only
    compresses them. Its own ``encode`` needs an (H, W, N) Fortran-order copy of every full-image
    mask, a strided transpose that cost ~1.3 ms per 1000x665 mask and held the GIL on the worker's
    encode thread.

    Args:
        masks: (N, H, W) bool.
        windows_xyxy: optional (N, 4) pixel windows enclosing each mask (``bmp_core.ops.masks``; e.g.
            ``windows_from_boxes(instances.mask_boxes_xyxy)``), used as they are: nothing outside them
            is read. Without them each mask is read whole once to find its window.
    """
    from pycocotools import mask as mask_utils

    from bmp_core.ops.masks import mask_windows

    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got {masks.shape}")
    h, w = masks.shape[1:]
    windows = mask_windows(masks) if windows_xyxy is None else np.asarray(windows_xyxy).reshape(-1, 4)
    out = []
    for mask, window in zip(masks, windows, strict=True):
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": rle_counts(mask, window).tolist()}, h, w)
        out.append({"size": [h, w], "counts": rle["counts"].decode("ascii")})
    return out


def rle_counts(mask: np.ndarray, window_xyxy: np.ndarray | None = None) -> np.ndarray:
    """COCO's uncompressed counts of one mask: run lengths in column-major order, zeros first.

    Args:
        mask: (H, W) bool.
        window_xyxy: optional ``(x0, y0, x1, y1)`` pixel window enclosing the mask's pixels, used as
            it is (tight or not); without it the mask is read whole once to find its window.

    Returns:
        (R,) int64 run lengths summing to H*W (the first may be 0: the mask starts with a one).
    """
    from bmp_core.ops.masks import mask_windows

    h, w = mask.shape
    if window_xyxy is None:
        window_xyxy = mask_windows(mask[None])[0]
    x0, y0, x1, y1 = (int(v) for v in np.asarray(window_xyxy).reshape(4))
    if x1 <= x0 or y1 <= y0:
        return np.array([h * w], np.int64)
    # A run starts or ends where a pixel differs from the one above it (column-major: the previous
    # pixel). Inside the window that is a row-major compare of neighbouring rows; above and below the
    # window every pixel is 0, so a True pixel in its first (last) row starts (ends) a run there. The
    # change at pixel (y, x) is at flat column-major index x * H + y.
    crop = mask[y0:y1, x0:x1]
    ww = x1 - x0
    inner = np.flatnonzero(crop[1:] != crop[:-1])  # change at window row r // ww + 1, column r % ww
    top = np.flatnonzero(crop[0])
    bottom = np.flatnonzero(crop[-1])
    changes = np.concatenate([
        (inner % ww + x0) * h + (inner // ww + 1 + y0),
        (top + x0) * h + y0,
        (bottom + x0) * h + y1,
    ]).astype(np.int64)
    changes.sort()
    if y0 == 0 and y1 == h and len(changes):
        # A run through the bottom of one column and the top of the next is one run: it ended at
        # (x + 1) * H and the next started at the same index; both go.
        same = np.flatnonzero(changes[1:] == changes[:-1])
        changes = np.delete(changes, np.concatenate([same, same + 1]))
    if len(changes) and changes[-1] == h * w:  # the last run ends with the image: not a change
        changes = changes[:-1]
    return np.diff(np.concatenate([[0], changes, [h * w]]))


def _to_pycoco(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_rle(rles: list[dict[str, Any]], height: int | None = None, width: int | None = None) -> np.ndarray:
    """N RLEs -> (N, H, W) bool. ``height``/``width`` are needed only when ``rles`` is empty."""
    from pycocotools import mask as mask_utils

    if len(rles) == 0:
        if height is None or width is None:
            raise ValueError("decoding zero RLEs needs height and width")
        return np.zeros((0, height, width), bool)
    dense = mask_utils.decode([_to_pycoco(r) for r in rles])  # (H, W, N) uint8
    return np.ascontiguousarray(dense.transpose(2, 0, 1).astype(bool))


def rle_area(rles: list[dict[str, Any]]) -> np.ndarray:
    """(N,) int64 pixel counts."""
    from pycocotools import mask as mask_utils

    if not rles:
        return np.zeros((0,), np.int64)
    return np.asarray(mask_utils.area([_to_pycoco(r) for r in rles]), np.int64)


def rle_to_bbox_xywh(rles: list[dict[str, Any]]) -> np.ndarray:
    """(N, 4) float64 COCO xywh boxes of the masks (pycocotools ``toBbox``)."""
    from pycocotools import mask as mask_utils

    if not rles:
        return np.zeros((0, 4))
    return np.asarray(mask_utils.toBbox([_to_pycoco(r) for r in rles]), np.float64).reshape(-1, 4)
