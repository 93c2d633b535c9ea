"""Read a finished bmp-label output (local folder or ``s3://`` prefix) for viz, eval and report.

The job writes (jobs/commit.py)::

    OUT/plan.json, OUT/run.json, OUT/coco.json, OUT/errors.csv
    OUT/images/shard-000007-<attempt>.parquet, OUT/instances/shard-000007-<attempt>.parquet
    OUT/_commits/shard-000007.json       marker naming the parts of the committed attempt
    OUT/traces/<image_id>/...            per-pass data for GIFs, only with the ``trace`` run option

Like the job's own reader, only parts that a commit marker of the current plan names are read, so a
crashed or duplicate attempt is never counted twice. An output without markers (a hand-made one, or
an older layout) falls back to every Parquet file under ``images/`` and ``instances/``. This module
reimplements the read side because ``bmp_core`` must not import ``jobs``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bmp_core.io.parquet import (
    IMAGES_SCHEMA,
    INSTANCES_SCHEMA,
    STATUS_OK,
    boxes_array,
    keypoints_array,
    rles_of,
)
from bmp_core.io.uris import filesystem, join_uri
from bmp_core.ops.rle import decode_rle

logger = logging.getLogger(__name__)

_SCHEMAS = {"images": IMAGES_SCHEMA, "instances": INSTANCES_SCHEMA}


# ``instances`` columns small enough to hold for millions of people (no masks, no keypoints): what
# counts and histograms need. Masks and keypoints are read per image, from that image's shard only.
SUMMARY_INSTANCE_COLUMNS = (
    "image_id", "instance_id", "det_score", "pose_score", "sam_score", "mask_area", "iteration", "prompted",
)


@dataclass(frozen=True)
class JobOutput:
    """The tables and summaries of one output.

    Attributes:
        uri: the output location as given.
        images: ``images`` table (one row per input image, ok or failed), sorted by ``image_id``.
        instances: ``instances`` table, sorted by ``(image_id, instance_id)``; all columns, or only
            ``SUMMARY_INSTANCE_COLUMNS`` when loaded with ``full_instances=False``.
        run_info: ``run.json`` as a dict, or None when the job has not finished.
        eval_info: ``eval.json`` (written by ``bmp-label eval``), or None.
        instance_parts: shard id -> path of its committed ``instances`` part (-1: parts whose name
            carries no shard id).
    """

    uri: str
    images: pa.Table
    instances: pa.Table
    run_info: dict[str, Any] | None
    eval_info: dict[str, Any] | None
    instance_parts: dict[int, list[str]] = field(default_factory=dict)

    def instances_of(self, image_id: int) -> pa.Table:
        """All columns of the ``instances`` rows of one image, in merge order."""
        if set(INSTANCES_SCHEMA.names) <= set(self.instances.column_names):
            return self.instances.filter(pc.equal(self.instances.column("image_id"), image_id))
        row = self.images.filter(pc.equal(self.images.column("image_id"), image_id))
        shard = row.column("shard_id")[0].as_py() if row.num_rows else -1
        paths = self.instance_parts.get(shard) or [p for ps in self.instance_parts.values() for p in ps]
        fs, _ = filesystem(self.uri)
        table = _read_parts(fs, paths, "instances", filters=[("image_id", "=", int(image_id))])
        return table.sort_by("instance_id")

    def ok_image_ids(self) -> list[int]:
        ok = self.images.filter(pc.equal(self.images.column("status"), STATUS_OK))
        return ok.column("image_id").to_pylist()


def _read_json(fs: Any, path: str) -> Any:
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))


def _committed_parts(fs: Any, root: str) -> dict[str, list[str]] | None:
    """kind -> part paths named by the current plan's markers; None when there are no markers."""
    plan = _read_json(fs, f"{root}/plan.json")
    marker_dir = f"{root}/_commits"
    if plan is None or not fs.exists(marker_dir):
        return None
    parts: dict[str, list[str]] = {"images": [], "instances": []}
    for path in sorted(fs.ls(marker_dir, detail=False)):
        name = path.rsplit("/", 1)[-1]
        if not (name.startswith("shard-") and name.endswith(".json")):
            continue
        try:
            marker = json.loads(fs.cat_file(path))
        except (ValueError, OSError) as err:
            logger.warning("ignoring unreadable commit marker %s: %s", name, err)
            continue
        if marker.get("plan_id") != plan.get("plan_id"):
            continue  # a marker left from an earlier plan of this output
        for kind, paths in parts.items():
            paths.append(f"{root}/{marker['parts'][kind]}")
    return parts


def _read_parts(
    fs: Any, paths: list[str], kind: str, columns: Sequence[str] | None = None, filters: list | None = None
) -> pa.Table:
    full = _SCHEMAS[kind]
    schema = full if columns is None else pa.schema([full.field(c) for c in columns])
    tables = []
    for path in paths:
        with fs.open(path, "rb") as f:  # a file object: pyarrow reads only the columns asked for
            cols = None if columns is None else list(columns)
            tables.append(pq.read_table(f, columns=cols, filters=filters).cast(schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _parts_by_shard(paths: list[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for path in paths:
        match = re.search(r"shard-(\d+)", path.rsplit("/", 1)[-1])
        out.setdefault(int(match.group(1)) if match else -1, []).append(path)
    return out


def load_output(uri: str, full_instances: bool = True) -> JobOutput:
    """Read an output's tables and JSON summaries.

    Args:
        uri: local folder or ``s3://bucket/prefix``.
        full_instances: read every ``instances`` column (masks included: needed by ``eval``); False
            reads ``SUMMARY_INSTANCE_COLUMNS`` only, and ``instances_of`` fetches one image's masks
            from its shard's part when asked (``viz``, ``report`` on big outputs).

    Returns:
        ``JobOutput``.

    Raises:
        FileNotFoundError: ``uri`` holds neither commit markers nor Parquet parts.
    """
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    parts = _committed_parts(fs, root)
    if parts is None:
        parts = {
            kind: sorted(p for p in fs.glob(f"{root}/{kind}/*.parquet")) for kind in ("images", "instances")
        }
    if not parts["images"]:
        raise FileNotFoundError(f"{uri} has no committed images parts: not a bmp-label output, or not started")
    columns = None if full_instances else SUMMARY_INSTANCE_COLUMNS
    images = _read_parts(fs, parts["images"], "images").sort_by("image_id")
    instances = _read_parts(fs, parts["instances"], "instances", columns).sort_by(
        [("image_id", "ascending"), ("instance_id", "ascending")]
    )
    return JobOutput(
        uri=uri,
        images=images,
        instances=instances,
        run_info=_read_json(fs, f"{root}/run.json"),
        eval_info=_read_json(fs, f"{root}/eval.json"),
        instance_parts=_parts_by_shard(parts["instances"]),
    )


@dataclass(frozen=True)
class ImageLabels:
    """The labels of one image as arrays, ready to draw.

    Attributes:
        boxes_xyxy: (N, 4) float32 detector boxes.
        keypoints: (N, 17, 3) float32 ``(x, y, score)``.
        masks: (N, H, W) bool refined masks.
        det_scores, pose_scores: (N,) float32.
        iteration: (N,) int32 pass that found each person.
    """

    boxes_xyxy: np.ndarray
    keypoints: np.ndarray
    masks: np.ndarray
    det_scores: np.ndarray
    pose_scores: np.ndarray
    iteration: np.ndarray


def image_labels(instances: pa.Table, height: int, width: int) -> ImageLabels:
    """Arrays of one image's ``instances`` rows (masks decoded from RLE).

    Args:
        instances: the rows of a single image.
        height, width: the image size (for an image with no people).
    """
    return ImageLabels(
        boxes_xyxy=boxes_array(instances, "bbox_xyxy"),
        keypoints=keypoints_array(instances),
        masks=decode_rle(rles_of(instances), height, width),
        det_scores=instances.column("det_score").to_numpy().astype(np.float32),
        pose_scores=instances.column("pose_score").to_numpy().astype(np.float32),
        iteration=instances.column("iteration").to_numpy().astype(np.int32),
    )


def output_path(uri: str, *parts: str) -> str:
    """``uri/part/...`` (local or s3)."""
    return join_uri(uri, *parts)


def read_image_rgb(uri: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an input image, decoded (and EXIF-rotated) exactly as the job did."""
    from bmp_core.io.images import decode_image_bgr
    from bmp_core.io.uris import read_bytes

    # No size limits here: the job already accepted this image.
    return np.ascontiguousarray(decode_image_bgr(read_bytes(uri), max_pixels=2**62, min_side=1)[:, :, ::-1])


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file to a local path or s3 URI (parent folders are created)."""
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)
