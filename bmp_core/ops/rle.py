"""COCO run-length encoding of masks through pycocotools (the format masks leave workers in).

An RLE here is ``{"size": [H, W], "counts": str}`` (compressed COCO RLE, counts as UTF-8 text), the
form COCO JSON files and Parquet store.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def encode_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """(N, H, W) bool -> N compressed COCO RLEs."""
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got {masks.shape}")
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


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
