"""Pair a job output's images with a ground-truth file's images by file name (for ``evaluation``).

A ground-truth ``file_name`` (``val2017/x.jpg`` or ``x.jpg``) matches an output ``uri`` that ends with
all of its path components; the longest such match wins. Nothing is matched by image id: the job
numbers images by its own sorted listing, which has nothing to do with the dataset's ids.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ImageMatch:
    """Output images paired with ground-truth images.

    Attributes:
        output_to_gt: output ``image_id`` -> ground-truth image ``id``.
        missing_in_gt: output uris no ground-truth image matched.
        missing_in_output: ground-truth file names no output image matched.
        ambiguous: output uris that matched a ground-truth image another output image had matched.
    """

    output_to_gt: dict[int, int]
    missing_in_gt: list[str] = field(default_factory=list)
    missing_in_output: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)


def _path_parts(path: str) -> list[str]:
    return [p for p in path.replace("\\", "/").split("/") if p and p != "."]


def match_images(output_images: Sequence[tuple[int, str]], gt_images: Sequence[dict[str, Any]]) -> ImageMatch:
    """Pair output images with ground-truth images by file name (path suffix, longest wins).

    Args:
        output_images: ``(image_id, uri)`` of every output image.
        gt_images: the ground truth's ``images`` entries (``id``, ``file_name``).

    Returns:
        ``ImageMatch``.
    """
    by_name: dict[str, list[dict[str, Any]]] = {}
    for g in gt_images:
        by_name.setdefault(posixpath.basename(g["file_name"].replace("\\", "/")), []).append(g)
    out_to_gt: dict[int, int] = {}
    taken: set[int] = set()
    missing_in_gt, ambiguous = [], []
    for image_id, uri in output_images:
        uri_parts = _path_parts(uri)
        best, best_len = None, 0
        for g in by_name.get(uri_parts[-1] if uri_parts else "", []):
            parts = _path_parts(g["file_name"])
            # Both paths must agree on every component the ground truth names (val2017/x.jpg).
            if uri_parts[-len(parts):] == parts and len(parts) > best_len:
                best, best_len = g, len(parts)
        if best is None:
            missing_in_gt.append(uri)
        elif best["id"] in taken:
            ambiguous.append(uri)
        else:
            out_to_gt[int(image_id)] = int(best["id"])
            taken.add(int(best["id"]))
    missing_in_output = [g["file_name"] for g in gt_images if int(g["id"]) not in taken]
    return ImageMatch(out_to_gt, missing_in_gt, missing_in_output, ambiguous)
