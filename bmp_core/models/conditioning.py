"""MaskPose's mask conditioning as two 256-entry look-up tables, for the MaskPose adapter and the lite
backend alike (one definition: both backends see the same conditioned pixels; docs/method.md).

Pure numpy: the lite backend's crops (``lite/crops.py``) use it without OpenCV.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=8)
def blend_tables(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(256,) uint8 look-up tables of ``cv2.addWeighted(v, 1 - alpha, v * m, alpha, 0)`` for m = 1 (the
    person) and m = 0 (the background), read-only.

    The reference conditions with ``cv2.addWeighted``, which rounds to nearest (a float cast would truncate:
    at alpha 0.2, the background values with ``4 v mod 5`` in {3, 4}, two in five, would come out one grey
    level darker). ``addWeighted`` is elementwise and its second input is either the pixel itself (mask) or
    0 (background), so a table per case gives its exact result for every value: float32 products, summed,
    rounded half to even (OpenCV's ``cvRound``) and saturated, as OpenCV computes 8-bit inputs
    (tests/lite/test_lite_crops.py and tests/models/test_maskpose_parity.py compare with addWeighted).
    """
    v = np.arange(256, dtype=np.float32)
    keep, add = np.float32(1.0 - alpha), np.float32(alpha)
    person = np.clip(np.rint(v * keep + v * add), 0, 255).astype(np.uint8)
    background = np.clip(np.rint(v * keep), 0, 255).astype(np.uint8)
    person.flags.writeable = background.flags.writeable = False
    return person, background
