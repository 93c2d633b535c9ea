"""The layout of a bmp-label output: every name under ``OUT/``, described once.

``OUT`` is a local folder or an ``s3://`` prefix::

    OUT/plan.json              what the output is made from: num_images (or num_tars), shard_size,
                               digests, plan_id
    OUT/listing.parquet        the frozen sorted listing: image_id, uri (+ span_start, span_end of
                               Parquet rows: row and row group); a tar input: shard_id, uri, size,
                               version of each tar (its members are listed by the images table)
    OUT/config.yaml            the resolved config of the first run
    OUT/images/shard-000007-<attempt>.parquet      one row per input image (``tables.IMAGES_SCHEMA``;
                                                   ``container_uri``, ``key``: the tar / Parquet file and
                                                   the WebDataset key / id column of an image inside one)
    OUT/instances/shard-000007-<attempt>.parquet   one row per person (``tables.INSTANCES_SCHEMA``)
    OUT/_commits/shard-000007.json                 marker naming the parts of the committed attempt
    OUT/_lock.json             the running job's lock (jobs/lock.py)
    OUT/_path_probe.txt        a local output's token: every worker must read it (jobs/path_probe.py)
    OUT/_weights/<hash>/<name> a cluster job's checkpoints, copied once by the driver for every node
                               (jobs/staging.py; the layout of the checkpoint cache)
    OUT/traces/<image_id>/trace.json               per-pass data for GIFs (the ``job.trace`` option)
    OUT/run.json               what the last run did (counts, timings, versions), written at its end
    OUT/errors.csv             image_id, uri, error of every image that failed
    OUT/coco.json              the COCO person-keypoints dataset of the committed shards
    OUT/eval.json, OUT/report.html, OUT/viz/       written by ``bmp-label eval | report | viz``

S3 has no rename, so a shard is committed by writing its parts under names no other attempt uses,
then a small marker naming them (one PUT, atomic; ``commits.py``). Readers trust only parts that a
marker of the current plan names (``reader.py``); a crashed or duplicate attempt leaves at most
unreferenced parts, which the job deletes when it ends. ``_``-prefixed folders are skipped by pyarrow's
dataset discovery, so ``OUT/images`` reads as a clean table once the job has finished.
"""

from __future__ import annotations

PLAN_JSON = "plan.json"
LISTING_PARQUET = "listing.parquet"
CONFIG_YAML = "config.yaml"
RUN_JSON = "run.json"
ERRORS_CSV = "errors.csv"
COCO_JSON = "coco.json"
EVAL_JSON = "eval.json"
REPORT_HTML = "report.html"
VIZ_DIR = "viz"
LOCK_JSON = "_lock.json"
PATH_PROBE = "_path_probe.txt"
WEIGHTS_DIR = "_weights"
COMMITS_DIR = "_commits"
IMAGES_DIR = "images"
INSTANCES_DIR = "instances"
TRACES_DIR = "traces"
TRACE_JSON = "trace.json"

TABLE_KINDS = (IMAGES_DIR, INSTANCES_DIR)  # a table's kind is also the folder of its parts
# What a run writes besides the plan: discarded together by ``--force``.
RESULTS = (COMMITS_DIR, IMAGES_DIR, INSTANCES_DIR, TRACES_DIR, COCO_JSON, RUN_JSON, ERRORS_CSV)


def shard_name(shard_id: int) -> str:
    """``shard-000007``: the stem of a shard's marker and parts."""
    return f"shard-{shard_id:06d}"


def part_rel(kind: str, shard_id: int, attempt_id: str) -> str:
    """``images/shard-000007-<attempt>.parquet`` (``kind``: one of ``TABLE_KINDS``)."""
    return f"{kind}/{shard_name(shard_id)}-{attempt_id}.parquet"


def marker_rel(shard_id: int) -> str:
    """``_commits/shard-000007.json``."""
    return f"{COMMITS_DIR}/{shard_name(shard_id)}.json"


def is_marker_name(name: str) -> bool:
    return name.startswith("shard-") and name.endswith(".json")


def trace_rel(image_id: int, name: str = TRACE_JSON) -> str:
    """``traces/<image_id>/<name>``."""
    return f"{TRACES_DIR}/{int(image_id)}/{name}"
