"""Binary mask -> polygon(s), in pure numpy (no OpenCV outside ``bmp_core/models``).

``mask_loops`` traces the exact pixel-edge ("crack") boundary of a mask: vertices on pixel corners,
``(x, y)`` with pixel ``(row, col)`` covering ``[col, col + 1] x [row, row + 1]``. Outer boundaries run
clockwise on screen (positive shoelace area in y-down coordinates), holes the other way, so the
signed areas of all loops add up to the mask's pixel count exactly. Pixels that touch only at a
corner are separate loops (4-connectivity: at such a corner the trace always turns right).

``mask_polygon`` makes ONE polygon of a mask for formats with one polygon per object (YOLO
segmentation): every other loop (further parts, holes) is joined to the largest outer boundary by a
zero-width bridge between their nearest vertices (the way Ultralytics' own COCO converter merges
multi-part segments). A bridge is walked once each way, so it adds no area under the even-odd or
non-zero fill rule: the holes stay holes and the parts stay parts when the polygon is filled.
"""

from __future__ import annotations

import numpy as np


def mask_loops(mask: np.ndarray) -> list[np.ndarray]:
    """The closed boundary loops of a mask, without repeated or collinear vertices.

    Args:
        mask: (H, W) bool.

    Returns:
        (K, 2) float64 arrays of ``(x, y)`` corners (the first vertex is not repeated at the end).
    """
    m = np.pad(np.asarray(mask, bool), 1)
    # Padded pixel (r, c) covers [c, c+1] x [r, r+1]; each edge is walked with the inside on its right.
    top_r, top_c = np.nonzero(m[1:, :] & ~m[:-1, :])  # top edge of inside pixel (r+1, c): +x at y = r+1
    bot_r, bot_c = np.nonzero(m[:-1, :] & ~m[1:, :])  # bottom edge of inside pixel (r, c): -x at y = r+1
    left_r, left_c = np.nonzero(m[:, 1:] & ~m[:, :-1])  # left edge of inside pixel (r, c+1): -y at x = c+1
    right_r, right_c = np.nonzero(m[:, :-1] & ~m[:, 1:])  # right edge of inside pixel (r, c): +y at x = c+1
    edges = (
        (np.stack([top_c, top_r + 1], 1), (1, 0)),
        (np.stack([bot_c + 1, bot_r + 1], 1), (-1, 0)),
        (np.stack([left_c + 1, left_r + 1], 1), (0, -1)),
        (np.stack([right_c + 1, right_r], 1), (0, 1)),
    )
    outgoing: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for pts, d in edges:
        for x, y in pts.tolist():
            outgoing.setdefault((x, y), []).append(d)
    loops = []
    while outgoing:
        start = next(iter(outgoing))
        vertex, direction = start, None
        corners: list[tuple[int, int]] = []
        while True:
            options = outgoing.get(vertex)
            if not options:
                break
            if direction is None or len(options) == 1:
                new = options[0]
            else:  # a corner where two pixels touch diagonally: turn right, (dx, dy) -> (-dy, dx)
                right = (-direction[1], direction[0])
                new = right if right in options else options[0]
            options.remove(new)
            if not options:
                del outgoing[vertex]
            if new != direction:
                corners.append(vertex)
            direction = new
            vertex = (vertex[0] + new[0], vertex[1] + new[1])
        loop = np.asarray(corners, np.float64) - 1.0  # undo the padding
        # The start vertex may sit mid-side: drop it when its neighbours are collinear with it.
        if len(loop) > 2:
            prev, nxt = loop[-1], loop[1]
            if (prev[0] == loop[0][0] == nxt[0]) or (prev[1] == loop[0][1] == nxt[1]):
                loop = loop[1:]
        if len(loop) >= 3:
            loops.append(loop)
    return loops


def signed_area(loop: np.ndarray) -> float:
    """Shoelace area in y-down coordinates: > 0 for outer boundaries of ``mask_loops``, < 0 for holes."""
    x, y = loop[:, 0], loop[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def simplify_loop(loop: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Douglas-Peucker on a closed loop: no vertex of the input is further than ``tolerance_px`` from
    the result. Loops that would collapse below 3 vertices are returned unchanged."""
    if tolerance_px <= 0 or len(loop) <= 4:
        return loop
    # Split the closed loop at its first vertex and the vertex farthest from it: two open chains.
    far = int(np.argmax(((loop - loop[0]) ** 2).sum(1)))
    keep = np.zeros(len(loop), bool)
    keep[[0, far]] = True
    closed = np.vstack([loop, loop[:1]])
    stack = [(0, far), (far, len(loop))]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        a, b = closed[i], closed[j]
        seg = closed[i + 1:j]
        ab = b - a
        norm = np.hypot(*ab)
        if norm == 0:
            dist = np.hypot(*(seg - a).T)
        else:
            dist = np.abs(ab[0] * (seg[:, 1] - a[1]) - ab[1] * (seg[:, 0] - a[0])) / norm
        k = int(np.argmax(dist))
        if dist[k] > tolerance_px:
            keep[i + 1 + k] = True
            stack.extend([(i, i + 1 + k), (i + 1 + k, j)])
    out = loop[keep]
    return out if len(out) >= 3 else loop


def bridge_loops(loops: list[np.ndarray]) -> np.ndarray:
    """Join loops into one polygon: each further loop is spliced into the polygon at the pair of
    vertices nearest to each other, by a zero-width bridge (``... p, q, ..., q, p, ...``).

    Args:
        loops: the first is the base (the largest outer boundary); the rest are joined in order.
    """
    poly = loops[0]
    for loop in loops[1:]:
        d2 = ((poly[:, None, :] - loop[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(d2)), d2.shape)
        poly = np.vstack([poly[:i + 1], loop[j:], loop[:j + 1], poly[i:]])
    return poly


def mask_polygon(mask: np.ndarray, tolerance_px: float = 1.0) -> np.ndarray | None:
    """One polygon covering the mask (parts and holes bridged, see the module docstring).

    Args:
        mask: (H, W) bool.
        tolerance_px: Douglas-Peucker tolerance per loop (0: the exact pixel boundary).

    Returns:
        (K, 2) float64 ``(x, y)`` vertices in pixel-corner coordinates, or None for an empty mask.
    """
    loops = [simplify_loop(loop, tolerance_px) for loop in mask_loops(mask)]
    if not loops:
        return None
    areas = np.array([signed_area(loop) for loop in loops])
    # Largest outer boundary first, then the rest by size (big parts before small ones and holes).
    order = np.argsort(-np.abs(areas), kind="stable")
    return bridge_loops([loops[k] for k in order])
