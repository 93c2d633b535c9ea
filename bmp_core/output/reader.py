"""Read a bmp-label output (local folder or ``s3://`` prefix): the one read side of ``layout.py``.

The job's finalize and ``export-coco``, and ``viz`` / ``eval`` / ``report``, all read through here:
only parts that a commit marker of the current plan names are read (markers fetched in one batch),
so a crashed or duplicate attempt is never counted twice, and parts are read ``PART_READ_WINDOW``
ahead on threads (a 10M-image output has ~40,000 shards; read one after another at an S3 round
trip each, finishing a job would wait an hour on latency alone). An output without markers (a
hand-made one) falls back to every Parquet file under ``images/`` and ``instances/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bmp_core.io.prefetch import prefetch
from bmp_core.ops.rle import decode_rle
from bmp_core.output import layout
from bmp_core.output.commits import committed_markers
from bmp_core.output.plan import read_plan
from bmp_core.output.store import OutputStore
from bmp_core.output.tables import (
    INSTANCES_SCHEMA,
    STATUS_OK,
    TABLE_SCHEMAS,
    boxes_array,
    keypoints_array,
    per_keypoint_array,
    rles_of,
)

PART_READ_WINDOW = 16  # Parquet parts read ahead in parallel when a whole table is read back

# ``instances`` columns small enough to hold for millions of people (no masks, no keypoints): what
# counts and histograms need. Masks and keypoints are read per image, from that image's shard only.
SUMMARY_INSTANCE_COLUMNS = (
    "image_id", "instance_id", "det_score", "pose_score", "sam_score", "mask_area", "iteration", "prompted",
)


def read_parts(store: OutputStore, rels: Sequence[str], window: int = PART_READ_WINDOW,
               columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """Yield the Parquet parts ``rels`` in order, reading up to ``window`` ahead on threads.

    Raises:
        FileNotFoundError: a part is missing (a marker names it: the output was damaged).
    """
    if not rels:
        return
    with ThreadPoolExecutor(min(window, len(rels)), thread_name_prefix="bmp-parts") as pool:
        yield from prefetch(pool, lambda rel: store.read_parquet(rel, columns), rels, window)


def committed_parts(store: OutputStore) -> dict[int, tuple[str, str]] | None:
    """shard_id -> (images part, instances part) named by the current plan's markers, in shard order;
    None when the output has no plan (a hand-made output, or not one at all)."""
    plan = read_plan(store)
    if plan is None:
        return None
    return {s: (m.images_part, m.instances_part) for s, m in committed_markers(store, plan.plan_id).items()}


def _cast(table: pa.Table, kind: str, columns: Sequence[str] | None) -> pa.Table:
    full = TABLE_SCHEMAS[kind]
    target = full if columns is None else pa.schema([full.field(c) for c in columns])
    for f in target:
        if f.name not in table.column_names and f.nullable:
            # A part written before this nullable column existed (images.container_uri, key; instances.
            # keypoint_presence / keypoint_visibility): nulls, so an output started before an upgrade still
            # resumes and finalizes.
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table.select(target.names).cast(target)


def read_table(store: OutputStore, rels: Sequence[str], kind: str,
               columns: Sequence[str] | None = None) -> pa.Table:
    """The parts ``rels`` of one table (``kind``) concatenated in order, cast to its schema."""
    tables = [_cast(t, kind, columns) for t in read_parts(store, rels, columns=columns)]
    if tables:
        return pa.concat_tables(tables)
    return _cast(TABLE_SCHEMAS[kind].empty_table(), kind, columns)


def read_committed_table(store: OutputStore, plan_id: str, kind: str) -> pa.Table:
    """The ``images`` or ``instances`` table made of ``plan_id``'s committed parts, in shard order."""
    markers = committed_markers(store, plan_id)
    return read_table(store, [markers[s].part(kind) for s in markers], kind)


def iter_shards(store: OutputStore, plan_id: str) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(images, instances) of each committed shard, in shard order, read ahead (``export-coco``)."""
    markers = committed_markers(store, plan_id)
    rels = [m.part(kind) for m in markers.values() for kind in layout.TABLE_KINDS]
    tables = read_parts(store, rels)
    for images in tables:
        yield _cast(images, layout.IMAGES_DIR, None), _cast(next(tables), layout.INSTANCES_DIR, None)


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
        instance_parts: shard id -> paths (inside the output) of its ``instances`` parts (-1: parts
            whose name carries no shard id).
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
        rels = self.instance_parts.get(shard) or [p for ps in self.instance_parts.values() for p in ps]
        store = OutputStore(self.uri)
        tables = [_cast(store.read_parquet(rel, filters=[("image_id", "=", int(image_id))]), layout.INSTANCES_DIR,
                        None) for rel in rels]
        table = pa.concat_tables(tables) if tables else INSTANCES_SCHEMA.empty_table()
        return table.sort_by("instance_id")

    def ok_image_ids(self) -> list[int]:
        ok = self.images.filter(pc.equal(self.images.column("status"), STATUS_OK))
        return ok.column("image_id").to_pylist()


def _parts_by_shard(rels: list[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for rel in rels:
        match = re.search(r"shard-(\d+)", rel.rsplit("/", 1)[-1])
        out.setdefault(int(match.group(1)) if match else -1, []).append(rel)
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
    store = OutputStore(uri)
    parts = committed_parts(store)
    if parts is not None:
        rels = {layout.IMAGES_DIR: [p[0] for p in parts.values()], layout.INSTANCES_DIR: [p[1] for p in parts.values()]}
    else:
        rels = {kind: [f"{kind}/{n}" for n in store.list_dir(kind) if n.endswith(".parquet")]
                for kind in layout.TABLE_KINDS}
    if not rels[layout.IMAGES_DIR]:
        raise FileNotFoundError(f"{uri} has no committed images parts: not a bmp-label output, or not started")
    columns = None if full_instances else SUMMARY_INSTANCE_COLUMNS
    images = read_table(store, rels[layout.IMAGES_DIR], layout.IMAGES_DIR).sort_by("image_id")
    instances = read_table(store, rels[layout.INSTANCES_DIR], layout.INSTANCES_DIR, columns).sort_by(
        [("image_id", "ascending"), ("instance_id", "ascending")]
    )
    return JobOutput(
        uri=uri,
        images=images,
        instances=instances,
        run_info=store.read_json(layout.RUN_JSON),
        eval_info=store.read_json(layout.EVAL_JSON),
        instance_parts=_parts_by_shard(rels[layout.INSTANCES_DIR]),
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
        keypoint_visibility: (N, 17) float32 the pose model's P(visible); NaN where it predicts none.
        keypoint_presence: (N, 17) float32 P(inside the crop); NaN where it predicts none.
    """

    boxes_xyxy: np.ndarray
    keypoints: np.ndarray
    masks: np.ndarray
    det_scores: np.ndarray
    pose_scores: np.ndarray
    iteration: np.ndarray
    keypoint_visibility: np.ndarray | None = None
    keypoint_presence: np.ndarray | None = None


def image_labels(instances: pa.Table, height: int, width: int) -> ImageLabels:
    """Arrays of one image's ``instances`` rows (masks decoded from RLE).

    Args:
        instances: the rows of a single image.
        height: the image height in pixels (sizes the masks of an image with no people too).
        width: the image width in pixels.
    """
    return ImageLabels(
        boxes_xyxy=boxes_array(instances, "bbox_xyxy"),
        keypoints=keypoints_array(instances),
        masks=decode_rle(rles_of(instances), height, width),
        det_scores=instances.column("det_score").to_numpy().astype(np.float32),
        pose_scores=instances.column("pose_score").to_numpy().astype(np.float32),
        iteration=instances.column("iteration").to_numpy().astype(np.int32),
        keypoint_visibility=per_keypoint_array(instances, "keypoint_visibility"),
        keypoint_presence=per_keypoint_array(instances, "keypoint_presence"),
    )


def read_image_rgb(uri: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an input image, decoded (and EXIF-rotated) exactly as the job did."""
    from bmp_core.io.images import decode_image_bgr
    from bmp_core.io.sources import read_entry_bytes

    # No size limits here: the job already accepted this image. A tar member or Parquet row is read
    # back from its container (``TAR#MEMBER``, ``FILE#ROW``).
    data = read_entry_bytes(uri)
    return np.ascontiguousarray(decode_image_bgr(data, max_pixels=2**62, min_side=1)[:, :, ::-1])
