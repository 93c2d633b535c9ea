"""The pose input as the reference builds it, whole image at a time: the oracles the MaskPose adapter's
windowed, on-device steps are compared against (tests/models), and the "old way" rows of the adapter-stage
benchmark.

Test-only: the adapter never calls these. OpenCV and pycocotools are imported inside the functions only,
so importing ``bmp_core.testing`` stays light (tests/unit/test_import_boundary.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def outer_polygon_mask(mask: np.ndarray, min_points: int = 4) -> np.ndarray:
    """The conditioning mask as the reference builds it: outer contours only, rasterised as polygons.

    MaskPose was trained on COCO polygon masks, and the reference's inference turns a binary mask into
    its outer contours (``RETR_EXTERNAL``; contours with fewer than 4 points dropped) and rasterises those
    polygons with pycocotools. Holes inside the mask are therefore filled, and specks vanish.

    This full-image version is the plain definition; the adapter uses
    ``pose_maskpose.outer_polygon_boxed_mask``, which gives the same pixels without touching the whole image.

    Args:
        mask: (H, W) bool.
        min_points: contours with fewer points are dropped (a polygon needs more than 3).

    Returns:
        (H, W) bool; all False when no contour survives (the instance is then posed from its box).
    """
    import cv2
    from pycocotools import mask as mask_utils

    h, w = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = [c.reshape(-1).astype(np.float64).tolist() for c in contours if len(c) >= min_points]
    if not polygons:
        return np.zeros((h, w), bool)
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    return mask_utils.decode(rle).astype(bool)


def whole_image_crop(image_bgr: np.ndarray, warp: np.ndarray, input_size_wh: tuple[int, int],
                     mask: np.ndarray | None, alpha: float, polygons: bool = True) -> np.ndarray:
    """The reference's pose crop: the whole image conditioned with ``cv2.addWeighted`` on the person's mask
    (its ``outer_polygon_mask`` when ``polygons``; an empty mask or None: not conditioned), then the UDP
    crop through ``warp`` (bilinear, border 0: mmpose's TopdownAffine). (h, w, 3) uint8."""
    import cv2

    source = image_bgr
    if mask is not None:
        cond = outer_polygon_mask(mask) if polygons else mask
        if cond.any():
            source = cv2.addWeighted(image_bgr, 1 - alpha, image_bgr * cond[..., None].astype(np.uint8), alpha, 0)
    return cv2.warpAffine(source, warp, tuple(input_size_wh), flags=cv2.INTER_LINEAR)


def crops_to_tensor(crops_bgr: Sequence[np.ndarray], mean_rgb: Sequence[float],
                    std_rgb: Sequence[float]) -> np.ndarray:
    """(N, 3, h, w) float32 network input: BGR -> RGB, ``(x - mean) / std`` per channel (the plain numpy
    definition; the adapter normalises on its device with ``pose_maskpose.normalize_on_device``, which
    gives the same values; its constants: ``pose_maskpose.IMAGENET_MEAN_RGB`` / ``IMAGENET_STD_RGB``)."""
    batch = np.stack(crops_bgr)[..., ::-1].astype(np.float32)
    batch = (batch - np.float32(mean_rgb)) / np.float32(std_rgb)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
