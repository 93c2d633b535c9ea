"""The one rule that pairs a COCO ``file_name`` with an input URI (given boxes and evaluation alike).

A ``file_name`` (``x.jpg``, ``val2017/x.jpg``) matches a URI that ends with ALL of its path
components (``s3://b/coco/val2017/x.jpg``); of several matching names the longest wins. So
``train2017/x.jpg`` never matches ``.../val2017/x.jpg``, and a bare ``x.jpg`` matches any folder.
Paths are compared component by component after turning ``\\`` into ``/`` and dropping empty
and ``.`` components. Nothing is matched by image id: the job numbers images by its own sorted
listing, which has nothing to do with a dataset's ids.

It lives with the input side (``bmp_core/io``) because ``given_boxes`` needs it to read its input;
``bmp_core/analysis/evaluation.py`` uses the same index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def path_parts(path: str) -> tuple[str, ...]:
    """The components of a path or URI that the rule compares. A tar member (``shard.tar#val/x.jpg``)
    counts as the path ``shard.tar/val/x.jpg``: its member path is what a COCO ``file_name`` names."""
    base, sep, member = path.partition(".tar#")
    if sep:
        path = f"{base}.tar/{member}"
    return tuple(p for p in path.replace("\\", "/").split("/") if p and p != ".")


class FileNameIndex(Generic[T]):
    """``file_name -> value``, looked up by URI with the module's rule.

    Built once (a dict by base name), so a lookup costs O(entries sharing that base name).
    """

    def __init__(self, items: Iterable[tuple[str, T]]) -> None:
        self._by_base: dict[str, list[tuple[tuple[str, ...], T]]] = {}
        for name, value in items:
            parts = path_parts(name)
            if parts:
                self._by_base.setdefault(parts[-1], []).append((parts, value))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_base.values())

    def lookup(self, uri: str) -> T | None:
        """The value of the longest ``file_name`` that is a path suffix of ``uri``; None if none is."""
        uri_parts = path_parts(uri)
        best, best_len = None, 0
        for parts, value in self._by_base.get(uri_parts[-1] if uri_parts else "", ()):
            if len(parts) > best_len and uri_parts[-len(parts):] == parts:
                best, best_len = value, len(parts)
        return best


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


def match_images(output_images: Sequence[tuple[int, str]], gt_images: Sequence[dict[str, Any]]) -> ImageMatch:
    """Pair output images with ground-truth images by the module's rule (path suffix, longest wins).

    Args:
        output_images: ``(image_id, uri)`` of every output image.
        gt_images: the ground truth's ``images`` entries (``id``, ``file_name``).

    Returns:
        ``ImageMatch``.
    """
    index = FileNameIndex((g["file_name"], g) for g in gt_images)
    out_to_gt: dict[int, int] = {}
    taken: set[int] = set()
    missing_in_gt, ambiguous = [], []
    for image_id, uri in output_images:
        best = index.lookup(uri)
        if best is None:
            missing_in_gt.append(uri)
        elif best["id"] in taken:
            ambiguous.append(uri)
        else:
            out_to_gt[int(image_id)] = int(best["id"])
            taken.add(int(best["id"]))
    missing_in_output = [g["file_name"] for g in gt_images if int(g["id"]) not in taken]
    return ImageMatch(out_to_gt, missing_in_gt, missing_in_output, ambiguous)
