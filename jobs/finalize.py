"""The end of a job: clean up, check the one-row-per-image invariant, write errors.csv and coco.json.

No Ray here: ``bmp-label export-coco`` runs this on any machine that can read the output. Reads go
through ``bmp_core.output.reader`` (batched markers, parts read ahead), like ``viz`` / ``eval``.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bmp_core.output import layout
from bmp_core.output.coco import CocoCounts, write_coco_json
from bmp_core.output.commits import ShardCommit, committed_markers, garbage_collect
from bmp_core.output.plan import Plan, load_plan
from bmp_core.output.reader import iter_shards, read_table
from bmp_core.output.store import OutputStateError, OutputStore
from bmp_core.output.tables import STATUS_ERROR

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalCounts:
    """The finished output's counts (``run.json`` ``counts``)."""

    images: int
    images_ok: int
    images_error: int
    instances: int
    coco_images: int
    coco_annotations: int
    orphan_parts_removed: int


def check_complete(plan: Plan, images: pa.Table, markers: dict[int, ShardCommit] | None = None) -> None:
    """Every image exactly once, or raise (a bug in the commit protocol if it ever fires).

    Listed images: the ids 0..N-1. A tar input (``markers``: the committed shards' markers, needed):
    every tar's shard committed, and shard ``s``'s ids ``s * TAR_ID_STRIDE + 0..n-1`` with ``n`` the
    images its marker counted.
    """
    ids = np.sort(images.column("image_id").to_numpy())
    if not plan.is_tar:
        expected = np.arange(plan.num_images or 0)
        what = f"{plan.num_images} images"
    else:
        markers = markers or {}
        missing = [s for s in range(plan.num_shards) if s not in markers]
        if missing:
            raise OutputStateError(f"{len(missing)} of the {plan.num_tars} tars have no committed shard "
                                   f"(e.g. shard {missing[0]})")
        expected = np.concatenate([plan.first_image_id(s) + np.arange(markers[s].num_images, dtype=np.int64)
                                   for s in range(plan.num_shards)] or [np.zeros(0, np.int64)])
        what = f"{len(expected)} images counted in {plan.num_tars} tars"
    if len(ids) != len(expected) or not np.array_equal(ids, expected):
        dup = int(len(ids) - len(np.unique(ids)))
        raise OutputStateError(f"images table has {len(ids)} rows for {what} ({dup} duplicated ids)")


def errors_csv(images: pa.Table) -> bytes:
    """``image_id,uri,error`` of the failed images, by image id."""
    failed = images.filter(pc.equal(images.column("status"), STATUS_ERROR)).sort_by("image_id")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["image_id", "uri", "error"])
    for row in zip(*(failed.column(c).to_pylist() for c in ("image_id", "uri", "error")), strict=True):
        writer.writerow(row)
    return out.getvalue().encode()


def export_coco(store: OutputStore, keypoint_thr: float, out_rel: str = layout.COCO_JSON) -> CocoCounts:
    """Rebuild ``coco.json`` from the committed Parquet parts, shard by shard."""
    plan = load_plan(store)
    info = {"source": store.uri, "plan_id": plan.plan_id}
    with store.open_text_for_write(out_rel) as fp:
        # Shards in id order keep annotation ids in (image_id, instance_id) order overall.
        return write_coco_json(fp, lambda: iter_shards(store, plan.plan_id), keypoint_thr, info)


def finalize_output(store: OutputStore, plan: Plan, keypoint_thr: float) -> FinalCounts:
    """Garbage-collect, verify, write ``errors.csv`` and ``coco.json``."""
    removed = garbage_collect(store, plan.plan_id)
    if removed:
        logger.info("removed %d part(s) of failed or duplicate attempts", removed)
    markers = committed_markers(store, plan.plan_id)  # read once: the table's parts and a tar's counts
    images = read_table(store, [markers[s].part(layout.IMAGES_DIR) for s in markers], layout.IMAGES_DIR)
    check_complete(plan, images, markers)
    store.write_bytes(layout.ERRORS_CSV, errors_csv(images))
    coco = export_coco(store, keypoint_thr)
    num_errors = int(pc.sum(pc.equal(images.column("status"), STATUS_ERROR)).as_py() or 0)
    return FinalCounts(
        images=images.num_rows,
        images_ok=images.num_rows - num_errors,
        images_error=num_errors,
        instances=int(pc.sum(images.column("num_instances")).as_py() or 0),
        coco_images=coco.images,
        coco_annotations=coco.annotations,
        orphan_parts_removed=removed,
    )
