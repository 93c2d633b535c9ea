"""The frozen listing and the shards (pyarrow + hashlib, no Ray; output I/O only to reuse a frozen
Parquet listing on resume, ``list_job_input``).

The ``Plan`` record and how it is stored in an output live in ``bmp_core/output/plan.py``.

Loose files and Parquet rows: an image's id is its index in the sorted listing, so ids are stable
for as long as the listing is, and the listing is frozen in the output on the first run. Shard
``s`` holds ids ``[s * shard_size, min((s + 1) * shard_size, num_images))``. A tar input: the
listing is the sorted tars, one shard each, pinned by size and version; the worker streams its tar
and numbers the image members (``bmp_core/io/tars.py``). Two digests pin what an output was
made from: the listing digest (sha256 of every URI followed by ``\\n``, in order) and the config
digest (sha256 of the result-affecting config sections as canonical JSON, plus the sha256 of the
content of every input file the config names: ``job.given_boxes``, ``job.given_boxes_images``, so
rewriting such a file between a run and its resume is caught like a config change; and the tars'
or Parquet files' sizes and versions).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bmp_core.config import BmpConfig, config_to_dict
from bmp_core.io.sources import Container, InputListing, list_source
from bmp_core.io.sources import listing_table as kind_listing_table
from bmp_core.output import layout
from bmp_core.output.plan import INPUT_CONTAINERS_KEY, Plan, read_plan
from bmp_core.output.store import OutputStore

# job.* keys that change what the output contains (or how it is sharded); the others only change
# how fast it is made and may differ between a run and its resume.
RESULT_JOB_KEYS = (
    "shard_size", "max_image_pixels", "min_image_side", "image_extensions", "coco_keypoint_thr",
    # The given boxes are pass 0's people; their files are pinned by content too (PINNED_FILE_KEYS).
    "given_boxes", "given_boxes_images", "given_boxes_score_thr",
    # Which Parquet column holds the images, and which is kept as their key (only when set, so the
    # digest of an output of loose files or tars is what it was before these keys existed).
    "image_column", "id_column",
)
OPTIONAL_RESULT_JOB_KEYS = ("image_column", "id_column")
# Config keys added after outputs were made, left out of the digest while they hold the value that
# reproduces what those outputs did, so an output started before the upgrade still resumes (dotted key ->
# that value). The v2 keys: the pruning rule and the fake pose's visibility (docs/output.md).
NEUTRAL_NEW_KEYS = {"loop.pose_nms.remove_losing_old": False, "models.fake.visibility": False}
# models.* keys that never change what an output holds (where the checkpoints are staged).
NEVER_RESULT_MODEL_KEYS = ("stage_uri",)
# The lite person detector's keys (added after outputs were made): they shape the output only when the lite
# backend runs its detector, so they are left out of the digest otherwise (a bmp or fake output, or lite with
# given boxes only, as every lite output was before the detector existed) and resume as before.
LITE_DETECTOR_KEYS = ("detect_people", "detector_windows", "detector_overlap", "detector_score_thr",
                      "detector_merge_dist", "detector_duplicate_overlap")
# job.* keys naming input files whose content the output depends on.
PINNED_FILE_KEYS = ("given_boxes", "given_boxes_images")


def result_config(cfg: BmpConfig) -> dict[str, Any]:
    """The part of the config that determines the output's content (see ``RESULT_JOB_KEYS``)."""
    data = config_to_dict(cfg)
    job = {k: data["job"][k] for k in RESULT_JOB_KEYS
           if k not in OPTIONAL_RESULT_JOB_KEYS or data["job"][k] is not None}
    for key, neutral in NEUTRAL_NEW_KEYS.items():
        *path, leaf = key.split(".")
        node = data
        for part in path:
            node = node[part]
        if node[leaf] == neutral:
            del node[leaf]
    models = data["models"]
    for key in NEVER_RESULT_MODEL_KEYS:
        models.pop(key, None)
    if models["kind"] != "lite" or not models["lite"]["detect_people"]:
        for key in LITE_DETECTOR_KEYS:
            models["lite"].pop(key, None)
    return {"models": models, "loop": data["loop"], "job": job}


def config_digest(cfg: BmpConfig, file_sha256: dict[str, str] | None = None) -> str:
    """sha256 hex of ``result_config(cfg)``, and of ``file_sha256`` (``file_digests``) when given."""
    data = result_config(cfg)
    if file_sha256:
        data["file_sha256"] = file_sha256
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_digests(cfg: BmpConfig) -> dict[str, str]:
    """``{"job.<key>": sha256 hex}`` of each file named by a ``PINNED_FILE_KEYS`` key (read here).

    Raises:
        InputError: a named file cannot be read (before any worker starts).
    """
    from bmp_core.io.uris import sha256_of

    named = {f"job.{k}": getattr(cfg.job, k) for k in PINNED_FILE_KEYS}
    return {key: sha256_of(uri) for key, uri in named.items() if uri}


def listing_digest(uris: pa.Array) -> str:
    """sha256 hex of ``"".join(u + "\\n" for u in uris)``, computed on the Arrow buffers."""
    lines = pc.binary_join_element_wise(
        uris.cast(pa.large_string()), pa.scalar("", pa.large_string()), pa.scalar("\n", pa.large_string())
    )
    if len(lines) == 0:
        return hashlib.sha256(b"").hexdigest()
    _, offsets_buf, data_buf = lines.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[lines.offset: lines.offset + len(lines) + 1]
    return hashlib.sha256(memoryview(data_buf)[offsets[0]: offsets[-1]]).hexdigest()


def make_plan(cfg: BmpConfig, uris: pa.Array | InputListing, file_sha256: dict[str, str] | None = None) -> Plan:
    """The plan for a sorted listing under ``cfg``; ``file_sha256``: ``file_digests(cfg)``.

    ``uris`` may be an ``InputListing`` (``bmp_core.io.sources.list_source``): a tar or Parquet
    input's containers digest is then pinned too (``INPUT_CONTAINERS_KEY``), and a tar input gets
    one shard per tar.
    """
    files = dict(file_sha256 or {})
    num_tars = 0
    if isinstance(uris, InputListing):
        if uris.containers_sha256 is not None:
            files[INPUT_CONTAINERS_KEY] = uris.containers_sha256
        num_tars = len(uris.tars)  # a tar input: one shard per tar
        uris = uris.uris
    return Plan(None if num_tars else len(uris), cfg.job.shard_size, listing_digest(uris),
                config_digest(cfg, files), tuple(sorted(files.items())), num_tars)


def shard_uris(uris: pa.Array, plan: Plan, shard_id: int) -> list[str]:
    """The URIs of one shard of listed images, in image-id order."""
    start, stop = plan.shard_range(shard_id)
    return uris.slice(start, stop - start).to_pylist()


@dataclass(frozen=True)
class ShardInputs:
    """What a worker reads for one shard: listed images (``uris``, ``spans``) or one tar (``tar``)."""

    uris: tuple[str, ...] = ()
    spans: tuple[tuple[int, int], ...] = ()  # a Parquet row's (row, row group); empty otherwise
    tar: Container | None = None


def shard_inputs(listing: InputListing, plan: Plan, shard_id: int) -> ShardInputs:
    """The inputs of one shard, in image-id order."""
    if plan.is_tar:
        plan.first_image_id(shard_id)  # in range
        return ShardInputs(tar=listing.tars[shard_id])
    start, stop = plan.shard_range(shard_id)
    uris = tuple(listing.uris.slice(start, stop - start).to_pylist())
    if listing.spans_start is None or listing.spans_end is None:
        return ShardInputs(uris)
    starts = listing.spans_start.slice(start, stop - start).to_pylist()
    ends = listing.spans_end.slice(start, stop - start).to_pylist()
    return ShardInputs(uris, tuple(zip(starts, ends, strict=True)))


def listing_table(uris: pa.Array | InputListing) -> pa.Table:
    """The frozen listing as a table: ``image_id`` (int64), ``uri`` (string); for a Parquet input
    also ``span_start``, ``span_end`` (int64: the row and its row group). A tar input: ``shard_id``
    (int64), ``uri``, ``size`` (int64 bytes), ``version`` (S3 ETag or local mtime) of each tar."""
    if isinstance(uris, InputListing):
        return kind_listing_table(uris)  # its kind's columns (bmp_core/io/sources.py)
    return pa.table({"image_id": pa.array(np.arange(len(uris), dtype=np.int64)), "uri": uris.cast(pa.string())})


def list_job_input(cfg: BmpConfig, input_uri: str, store: OutputStore | None,
                   file_sha256: dict[str, str] | None = None) -> InputListing:
    """The input's listing; for Parquet files unchanged since ``store``'s plan (same sizes and
    versions, same config), the frozen ``listing.parquet`` instead of reading every footer again.

    ``file_sha256``: ``file_digests(cfg)`` (computed here when None).
    """
    files = file_digests(cfg) if file_sha256 is None else file_sha256

    def reuse(containers_sha256: str, num_containers: int) -> pa.Table | None:
        old = None if store is None else read_plan(store)
        if old is None or dict(old.file_sha256).get(INPUT_CONTAINERS_KEY) != containers_sha256:
            return None
        if old.config_digest != config_digest(cfg, {**files, INPUT_CONTAINERS_KEY: containers_sha256}):
            return None  # e.g. other image extensions: other members
        if store is None or not store.exists(layout.LISTING_PARQUET):
            return None
        table = store.read_parquet(layout.LISTING_PARQUET)
        return table if table.num_rows == old.num_images else None  # the input kind reads it back

    return list_source(input_uri, cfg.job.image_extensions, cfg.job.image_column, cfg.job.id_column, reuse)
