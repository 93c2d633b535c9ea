"""``instances`` + ``images`` tables -> a COCO person-keypoints dataset (the format mmpose/mmdet train from).

The job's ``coco.json``: every person of every ``ok`` image is a training target (the pass-all
policy); the encoder is the export's (``bmp_core/output/export/coco.py``: field by field there), so
the job's file and ``bmp-label export --format coco`` cannot disagree. Failed images have no size
and are not COCO images.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa

from bmp_core.output.export.coco import coco_keypoints, write_coco_stream
from bmp_core.output.export.policy import ExportPolicy
from bmp_core.output.export.source import export_shards

__all__ = ["CocoCounts", "coco_dataset", "coco_keypoints", "write_coco_json"]


@dataclass(frozen=True)
class CocoCounts:
    """What a COCO file holds."""

    images: int
    annotations: int


def write_coco_json(
    fp: IO[str],
    parts: Callable[[], Iterable[tuple[pa.Table, pa.Table]]],
    keypoint_score_thr: float = 0.3,
    info: dict[str, Any] | None = None,
) -> CocoCounts:
    """Stream the same dataset as ``coco_dataset`` to ``fp``, one part at a time, in one pass.

    Memory stays at what ``parts`` holds at once (the job reads a window of 16 shards' parts
    ahead) plus one small entry per image, however large the output is.

    Args:
        fp: a text file open for writing.
        parts: returns an iterable of (images, instances) table pairs, in image-id order, each pair
            covering the same images.
        keypoint_score_thr, info: as in ``coco_dataset``.

    Returns:
        the number of images and annotations written.
    """
    shards = export_shards(parts(), ExportPolicy(keypoint_thr=keypoint_score_thr))
    written = write_coco_stream(fp, shards, keypoint_score_thr, info)
    return CocoCounts(images=written.images, annotations=written.annotations)


def coco_dataset(
    images: pa.Table, instances: pa.Table, keypoint_score_thr: float = 0.3, info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build the COCO dict in memory (small outputs, tests): ``write_coco_json`` of one part.

    Args:
        images: the ``images`` table (any row order).
        instances: the ``instances`` table.
        keypoint_score_thr: keypoints scoring below this are written as unlabeled (v = 0).
        info: extra ``info`` fields (tool, version, source output).

    Returns:
        ``{"info", "licenses", "images", "annotations", "categories"}``; annotation ids are 1-based,
        in (image_id, instance_id) order; image ids are the job's ``image_id``.
    """
    buf = io.StringIO()
    write_coco_json(buf, lambda: [(images, instances)], keypoint_score_thr, info)
    return json.loads(buf.getvalue())
