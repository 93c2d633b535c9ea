"""Shard commits: attempt-unique Parquet parts, then one marker that names them (``layout.py``).

A shard is committed when its marker ``_commits/shard-NNNNNN.json`` exists and names the current
plan. The marker is written last, in one atomic PUT (or rename), so a crashed attempt leaves at most
parts no marker names, and two attempts of one shard never both count: the last marker wins, and
the other attempt's parts become garbage for ``garbage_collect``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa

from bmp_core.output import layout
from bmp_core.output.store import OutputStore
from bmp_core.output.tables import TABLE_SCHEMAS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardCommit:
    """A commit marker: which parts hold a shard's rows, and what the attempt that wrote them did.

    Attributes:
        plan_id: the plan the shard was labeled under (markers of another plan are never trusted).
        shard_id, attempt_id: the shard and the attempt (``new_attempt_id``) whose parts these are.
        images_part, instances_part: paths of the parts inside the output.
        num_images, num_instances: rows in each part (``bmp-label plan`` and the report count them
            without opening the parts).
        committed_unix: wall clock of the commit.
        seconds: the attempt's labeling time; num_errors: its error rows; worker: ``host:pid``.
    """

    plan_id: str
    shard_id: int
    attempt_id: str
    images_part: str
    instances_part: str
    num_images: int
    num_instances: int
    committed_unix: float
    seconds: float | None = None
    num_errors: int | None = None
    worker: str | None = None

    def part(self, kind: str) -> str:
        """The part of ``kind`` (``images`` or ``instances``)."""
        return {layout.IMAGES_DIR: self.images_part, layout.INSTANCES_DIR: self.instances_part}[kind]

    def to_json(self) -> bytes:
        data = {
            "plan_id": self.plan_id, "shard_id": self.shard_id, "attempt_id": self.attempt_id,
            "parts": {layout.IMAGES_DIR: self.images_part, layout.INSTANCES_DIR: self.instances_part},
            "num_images": self.num_images, "num_instances": self.num_instances,
            "committed_unix": self.committed_unix,
            "seconds": self.seconds, "num_errors": self.num_errors, "worker": self.worker,
        }
        return json.dumps(data, indent=1).encode()

    @staticmethod
    def from_json(data: bytes) -> ShardCommit:
        """Raises ValueError (or KeyError/TypeError) on a marker that is not one."""
        d = json.loads(data)
        return ShardCommit(
            plan_id=str(d["plan_id"]), shard_id=int(d["shard_id"]), attempt_id=str(d["attempt_id"]),
            images_part=str(d["parts"][layout.IMAGES_DIR]), instances_part=str(d["parts"][layout.INSTANCES_DIR]),
            num_images=int(d["num_images"]), num_instances=int(d["num_instances"]),
            committed_unix=float(d.get("committed_unix", 0.0)), seconds=d.get("seconds"),
            num_errors=d.get("num_errors"), worker=d.get("worker"),
        )


def new_attempt_id(attempt: int) -> str:
    """Unique across attempts, workers and reruns (a rerun restarts attempt numbers at 1)."""
    return f"a{attempt}-{uuid.uuid4().hex[:10]}"


def commit_shard(store: OutputStore, plan_id: str, shard_id: int, attempt_id: str, images: pa.Table,
                 instances: pa.Table, seconds: float | None = None, num_errors: int | None = None,
                 worker: str | None = None) -> ShardCommit:
    """Write a shard's parts, then its marker (last). Returns the marker."""
    rels = {}
    for kind, table in ((layout.IMAGES_DIR, images), (layout.INSTANCES_DIR, instances)):
        rels[kind] = layout.part_rel(kind, shard_id, attempt_id)
        store.write_table(rels[kind], table.cast(TABLE_SCHEMAS[kind]))
    marker = ShardCommit(plan_id, shard_id, attempt_id, rels[layout.IMAGES_DIR], rels[layout.INSTANCES_DIR],
                         images.num_rows, instances.num_rows, time.time(), seconds, num_errors, worker)
    store.write_bytes(layout.marker_rel(shard_id), marker.to_json())
    return marker


def committed_markers(store: OutputStore, plan_id: str) -> dict[int, ShardCommit]:
    """shard_id -> marker, for markers of ``plan_id`` only (unreadable ones are ignored with a warning).

    All markers are fetched in one concurrent batch (``OutputStore.read_many``).
    """
    names = [n for n in store.list_dir(layout.COMMITS_DIR) if layout.is_marker_name(n)]
    blobs = store.read_many([f"{layout.COMMITS_DIR}/{n}" for n in names])
    out = {}
    for rel, data in sorted(blobs.items()):
        try:
            marker = ShardCommit.from_json(data)
        except (ValueError, KeyError, TypeError) as err:
            logger.warning("ignoring unreadable commit marker %s: %s", rel, err)
            continue
        if marker.plan_id == plan_id:
            out[marker.shard_id] = marker
    return dict(sorted(out.items()))


def garbage_collect(store: OutputStore, plan_id: str) -> int:
    """Delete parts no marker of ``plan_id`` names (failed or duplicate attempts). Returns the count.

    Only safe while holding the lock, with no attempt in flight (the job calls it at the end).
    """
    keep = {m.part(kind) for m in committed_markers(store, plan_id).values() for kind in layout.TABLE_KINDS}
    removed = 0
    for kind in layout.TABLE_KINDS:
        for name in store.list_dir(kind):
            rel = f"{kind}/{name}"
            if rel not in keep:
                store.remove(rel)
                removed += 1
    return removed
