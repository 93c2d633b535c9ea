"""The end of a job: clean up, check the one-row-per-image invariant, write errors.csv and coco.json.

No Ray here: ``bmp-label export-coco`` runs this on any machine that can read the output.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bmp_core.io.coco import write_coco_json
from bmp_core.io.parquet import STATUS_ERROR
from jobs.commit import (
    OutputStateError,
    OutputStore,
    committed_markers,
    garbage_collect,
    read_committed_table,
    read_parts,
)
from jobs.planner import Plan

logger = logging.getLogger(__name__)


def load_plan(store: OutputStore) -> Plan:
    data = store.read_json("plan.json")
    if data is None:
        raise OutputStateError(f"{store.uri} has no plan.json: not a bmp-label output (or never started)")
    return Plan.from_dict(data)


def check_complete(plan: Plan, images: pa.Table) -> None:
    """Every image id 0..N-1 exactly once, or raise (a bug in the commit protocol if it ever fires)."""
    ids = np.sort(images.column("image_id").to_numpy())
    if len(ids) != plan.num_images or not np.array_equal(ids, np.arange(plan.num_images)):
        dup = int(len(ids) - len(np.unique(ids)))
        raise OutputStateError(
            f"images table has {len(ids)} rows for {plan.num_images} images ({dup} duplicated ids)"
        )


def errors_csv(images: pa.Table) -> bytes:
    """``image_id,uri,error`` of the failed images, by image id."""
    failed = images.filter(pc.equal(images.column("status"), STATUS_ERROR)).sort_by("image_id")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["image_id", "uri", "error"])
    for row in zip(*(failed.column(c).to_pylist() for c in ("image_id", "uri", "error"))):
        writer.writerow(row)
    return out.getvalue().encode()


def export_coco(store: OutputStore, keypoint_thr: float, out_rel: str = "coco.json") -> dict[str, int]:
    """Rebuild ``coco.json`` from the committed Parquet parts. Returns image/annotation counts."""
    plan = load_plan(store)
    markers = committed_markers(store, plan.plan_id)

    def parts() -> Iterator[tuple[pa.Table, pa.Table]]:
        # Shards in id order keep annotation ids in (image_id, instance_id) order overall.
        rels = [markers[s]["parts"][kind] for s in sorted(markers) for kind in ("images", "instances")]
        tables = read_parts(store, rels)
        for images in tables:
            yield images, next(tables)

    info = {"source": store.uri, "plan_id": plan.plan_id}
    with store.open_text_for_write(out_rel) as fp:
        return write_coco_json(fp, parts, keypoint_thr, info)


def finalize_output(store: OutputStore, plan: Plan, keypoint_thr: float) -> dict[str, Any]:
    """Garbage-collect, verify, write ``errors.csv`` and ``coco.json``. Returns counts for run.json."""
    removed = garbage_collect(store, plan.plan_id)
    if removed:
        logger.info("removed %d part(s) of failed or duplicate attempts", removed)
    images = read_committed_table(store, plan.plan_id, "images")
    check_complete(plan, images)
    store.write_bytes("errors.csv", errors_csv(images))
    coco_counts = export_coco(store, keypoint_thr)
    num_errors = int(pc.sum(pc.equal(images.column("status"), STATUS_ERROR)).as_py() or 0)
    return {
        "images": images.num_rows,
        "images_ok": images.num_rows - num_errors,
        "images_error": num_errors,
        "instances": int(pc.sum(images.column("num_instances")).as_py() or 0),
        "coco_images": coco_counts["images"],
        "coco_annotations": coco_counts["annotations"],
        "orphan_parts_removed": removed,
    }
