"""The output folder's state: frozen plan, shard commits, and the lock (local or S3 alike).

Layout of an output (``OUT`` is a local folder or an ``s3://`` prefix)::

    OUT/plan.json              num_images, shard_size, digests, plan_id
    OUT/listing.parquet        the frozen sorted listing: image_id, uri
    OUT/config.yaml            the resolved config of the first run
    OUT/images/shard-000007-<attempt>.parquet      parts, attempt-unique names
    OUT/instances/shard-000007-<attempt>.parquet
    OUT/_commits/shard-000007.json                 marker naming the parts of the committed attempt
    OUT/_lock.json             the running job's lock (jobs/lock.py)

S3 has no rename, so a shard is committed by writing its parts under names no other attempt uses,
then a small marker naming them (one PUT, atomic). Readers trust only parts a marker of the current
plan names; a crashed or duplicate attempt leaves at most unreferenced parts, which
``garbage_collect`` removes when the job ends (``_``-prefixed folders are also skipped by pyarrow's
dataset discovery, so ``OUT/images`` reads as a clean table once the job has finished).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from bmp_core.io.parquet import IMAGES_SCHEMA, INSTANCES_SCHEMA
from bmp_core.io.uris import filesystem, join_uri, protocol_of
from jobs.planner import Plan, config_changes
from jobs.prefetch import prefetch

logger = logging.getLogger(__name__)

TABLES = {"images": IMAGES_SCHEMA, "instances": INSTANCES_SCHEMA}
PART_READ_WINDOW = 16  # Parquet parts read ahead in parallel when a whole table is read back


class OutputStateError(RuntimeError):
    """The output cannot be used as asked (changed config or listing, locked); the message says why."""


class OutputStore:
    """Reads and writes one output location through fsspec."""

    def __init__(self, output_uri: str) -> None:
        self.uri = output_uri.rstrip("/") if "://" in output_uri else output_uri
        self.fs, self.root = filesystem(self.uri)
        self.is_local = protocol_of(self.uri) == "file"
        if self.is_local:
            self.uri = self.root  # absolute: workers may run in another directory

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def uri_of(self, *parts: str) -> str:
        return join_uri(self.uri, *parts)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole object. Local: temp file + rename, so a reader never sees half a file;
        S3: one PUT, which is atomic already."""
        path = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    @contextlib.contextmanager
    def open_text_for_write(self, rel: str) -> Iterator[IO[str]]:
        """A text file streamed to ``rel`` (local: temp + rename on success; S3: multipart upload)."""
        path = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    yield f
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            with self.fs.open(path, "w", encoding="utf-8") as f:
                yield f

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            return None

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        return None if data is None else json.loads(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=False).encode())

    def write_table(self, rel: str, table: pa.Table) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(rel, sink.getvalue())

    def read_parquet(self, rel: str) -> pa.Table:
        with self.fs.open(self.path(rel), "rb") as f:
            return pq.read_table(f)

    def list_dir(self, rel: str) -> list[str]:
        """Names (not paths) of the objects directly under ``rel``; [] when it does not exist."""
        self.fs.invalidate_cache()  # s3fs caches listings; another process may have written since
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel), detail=False))
        except FileNotFoundError:
            return []

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm(self.path(rel), recursive=True)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------------
# Plan freezing


def freeze_plan(store: OutputStore, plan: Plan, listing: pa.Table, config_yaml: str, config_dict: dict[str, Any],
                force: bool = False) -> None:
    """Record ``plan`` in a new output, or check that an existing output was made from the same one.

    Raises:
        OutputStateError: the output holds another plan and ``force`` is False.
    """
    old = store.read_json("plan.json")
    if old is not None and Plan.from_dict(old) == plan:
        return
    if old is not None:
        committed = len(committed_markers(store, Plan.from_dict(old).plan_id))
        reason = _plan_difference(store, Plan.from_dict(old), plan, config_dict)
        if not force:
            raise OutputStateError(
                f"{store.uri} was started with a different {reason}.\n"
                f"It holds {committed} committed shard(s) that would not match this run. Use a new "
                "--output, rerun with the original config and input, or pass --force to discard them "
                "and start over."
            )
        logger.warning("--force: discarding %d committed shard(s) of %s (%s)", committed, store.uri,
                       reason.splitlines()[0])
        for rel in ("_commits", "images", "instances", "traces", "coco.json", "run.json", "errors.csv"):
            store.remove(rel)
    # The listing and config go first: plan.json appearing is what makes them authoritative.
    store.write_table("listing.parquet", listing)
    store.write_bytes("config.yaml", config_yaml.encode())
    store.write_json("plan.json", plan.to_dict())


def _plan_difference(store: OutputStore, old: Plan, new: Plan, config_dict: dict[str, Any]) -> str:
    parts = []
    old_files, new_files = dict(old.file_sha256), dict(new.file_sha256)
    files_changed = [k for k in sorted(set(old_files) & set(new_files)) if old_files[k] != new_files[k]]
    for key in files_changed:
        parts.append(f"content of the file {key} names (sha256 {old_files[key][:12]} then, "
                     f"{new_files[key][:12]} now)")
    if old.config_digest != new.config_digest:
        old_cfg = yaml.safe_load(store.read_bytes("config.yaml") or b"{}") or {}
        changes = config_changes(old_cfg, config_dict)
        if changes or not files_changed:
            shown = "\n  ".join(changes[:20]) if changes else "(config.yaml unreadable; digests differ)"
            parts.append(f"config:\n  {shown}")
    if old.listing_digest != new.listing_digest:
        parts.append(
            f"input listing ({old.num_images} images then, {new.num_images} now; "
            f"digest {old.listing_digest[:12]} then, {new.listing_digest[:12]} now)"
        )
    if not parts and old.shard_size != new.shard_size:
        parts.append(f"shard size ({old.shard_size} then, {new.shard_size} now)")
    return "\n".join(parts) or "plan"


# --------------------------------------------------------------------------------------------
# Shard commits


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:06d}"


def new_attempt_id(attempt: int) -> str:
    """Unique across attempts, workers and reruns (a rerun restarts attempt numbers at 1)."""
    return f"a{attempt}-{uuid.uuid4().hex[:10]}"


def commit_shard(store: OutputStore, plan_id: str, shard_id: int, attempt_id: str, images: pa.Table,
                 instances: pa.Table, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a shard's parts, then its marker (last). Returns the marker."""
    parts = {}
    for kind, table in (("images", images), ("instances", instances)):
        rel = f"{kind}/{shard_name(shard_id)}-{attempt_id}.parquet"
        store.write_table(rel, table.cast(TABLES[kind]))
        parts[kind] = rel
    marker = {
        "plan_id": plan_id,
        "shard_id": shard_id,
        "attempt_id": attempt_id,
        "parts": parts,
        "num_images": images.num_rows,
        "num_instances": instances.num_rows,
        "committed_unix": time.time(),
        **(stats or {}),
    }
    store.write_json(f"_commits/{shard_name(shard_id)}.json", marker)
    return marker


def committed_markers(store: OutputStore, plan_id: str) -> dict[int, dict[str, Any]]:
    """shard_id -> marker, for markers of ``plan_id`` only (unreadable ones are ignored)."""
    names = [n for n in store.list_dir("_commits") if n.startswith("shard-") and n.endswith(".json")]
    # One concurrent batch read (s3fs fetches a list of keys in parallel): thousands of markers on
    # S3 take a second or two instead of one round trip each.
    blobs = store.fs.cat([store.path("_commits", n) for n in names], on_error="omit") if names else {}
    out = {}
    for path, data in blobs.items():
        try:
            marker = json.loads(data)
        except ValueError as err:
            logger.warning("ignoring unreadable commit marker %s: %s", path, err)
            continue
        if isinstance(marker, dict) and marker.get("plan_id") == plan_id:
            out[int(marker["shard_id"])] = marker
    return out


def read_parts(store: OutputStore, rels: Sequence[str], window: int = PART_READ_WINDOW) -> Iterator[pa.Table]:
    """Yield the Parquet parts ``rels`` in order, reading up to ``window`` ahead on threads.

    A 10M-image output has ~40,000 shards: read one after another at an S3 round trip each, the
    end of a job (and ``export-coco``) would wait an hour on latency alone.
    """
    if not rels:
        return
    with ThreadPoolExecutor(min(window, len(rels)), thread_name_prefix="bmp-parts") as pool:
        yield from prefetch(pool, store.read_parquet, rels, window)


def read_committed_table(store: OutputStore, plan_id: str, kind: str) -> pa.Table:
    """The ``images`` or ``instances`` table made of committed parts only, sorted by image id."""
    markers = committed_markers(store, plan_id)
    rels = [markers[s]["parts"][kind] for s in sorted(markers)]
    tables = [t.cast(TABLES[kind]) for t in read_parts(store, rels)]
    if not tables:
        return TABLES[kind].empty_table()
    return pa.concat_tables(tables)


def garbage_collect(store: OutputStore, plan_id: str) -> int:
    """Delete parts no marker of ``plan_id`` names (failed or duplicate attempts). Returns the count.

    Only safe while holding the lock, with no attempt in flight (the job calls it at the end).
    """
    keep = {p for m in committed_markers(store, plan_id).values() for p in m["parts"].values()}
    removed = 0
    for kind in TABLES:
        for name in store.list_dir(kind):
            rel = f"{kind}/{name}"
            if rel not in keep:
                store.remove(rel)
                removed += 1
    return removed
