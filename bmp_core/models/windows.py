"""Mask windows found on the device, so that the loop never reads an image-sized mask to find them.

A window is ``(x0, y0, x1, y1)`` int64 pixel edges, end exclusive, all zeros for an empty mask: the
tight box ``bmp_core.ops.masks.mask_windows`` finds on the host (tests/models/test_adapters.py
compares the two). The adapters hand them over with their masks (``Detections.mask_windows_xyxy``,
``SegmentOutput.mask_windows_xyxy``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def tight_windows(masks: Any) -> np.ndarray:
    """(N, H, W) torch masks (bool, or nonzero = inside) -> (N, 4) int64 tight windows on the host.

    Two reductions and two min/max per mask on the masks' device, one (N, 4) copy to the host.
    """
    import torch

    n, h, w = masks.shape
    if n == 0:
        return np.zeros((0, 4), np.int64)
    inside = masks if masks.dtype == torch.bool else masks != 0
    rows, cols = inside.any(dim=2), inside.any(dim=1)  # (N, H), (N, W)

    def first_and_end(hit: Any, size: int) -> tuple[Any, Any]:
        index = torch.arange(size, device=hit.device)
        first = torch.where(hit, index, size).amin(dim=1)
        end = torch.where(hit, index, -1).amax(dim=1) + 1
        return first, end

    r0, r1 = first_and_end(rows, h)
    c0, c1 = first_and_end(cols, w)
    windows = torch.stack([c0, r0, c1, r1], dim=1)
    windows[~rows.any(dim=1)] = 0
    return windows.cpu().numpy().astype(np.int64)
