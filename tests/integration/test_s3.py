"""S3 in and S3 out through a moto server on 127.0.0.1, as MinIO / AWS would be used."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import numpy as np
import pytest
from pycocotools.coco import COCO

from bmp_core.io.uris import read_bytes
from bmp_core.output.store import OutputStateError, OutputStore
from jobs.lock import OutputLock
from jobs.ray_runner import RunOptions, run_job

from ._helpers import (
    assert_one_row_per_image,
    fake_config,
    keypoints_by_uri,
    read_output,
    reference_keypoints,
)
from .conftest import BUCKET

pytestmark = pytest.mark.integration


def test_s3_in_s3_out(ray_cluster: object, s3_endpoint: str, testdata: Path, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    local = sorted(testdata.rglob("*.jpg"))
    for path in local:
        s3.upload_file(str(path), BUCKET, f"in/{path.relative_to(testdata)}")
    s3.put_object(Bucket=BUCKET, Key="in/readme.md", Body=b"not listed: wrong extension")

    cfg = fake_config("job.shard_size=4", "job.trace=true")
    out = f"s3://{BUCKET}/out/run1"
    run = run_job(cfg, RunOptions(f"s3://{BUCKET}/in/", out, num_workers=2, progress=False, lock_settle_s=0.05))

    images, instances = read_output(out)
    assert_one_row_per_image(images, len(local))
    expected_uris = [f"s3://{BUCKET}/in/{p.relative_to(testdata)}" for p in local]
    assert images.sort_by("image_id").column("uri").to_pylist() == expected_uris
    got = keypoints_by_uri(images, instances)
    for path, uri in zip(local, expected_uris, strict=True):
        np.testing.assert_array_equal(got[uri], reference_keypoints(path, cfg))

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="out/run1/")["Contents"]}
    for name in ("plan.json", "listing.parquet", "config.yaml", "run.json", "coco.json", "errors.csv"):
        assert f"out/run1/{name}" in keys
    assert "out/run1/_lock.json" not in keys  # released
    assert {k.split("/")[3] for k in keys if k.startswith("out/run1/traces/")} == {str(i) for i in range(len(local))}
    coco_path = tmp_path / "coco.json"
    coco_path.write_bytes(read_bytes(f"{out}/coco.json"))
    assert len(COCO(str(coco_path)).getAnnIds()) == instances.num_rows == run.counts.instances

    # Credentials never reach the outputs.
    for name in ("run.json", "coco.json", "config.yaml"):
        text = read_bytes(f"{out}/{name}").decode()
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text and os.environ["AWS_ACCESS_KEY_ID"] not in text

    # Resume on S3 skips everything; a job on an S3 output that another job holds is refused.
    assert run_job(cfg, RunOptions(f"s3://{BUCKET}/in/", out, progress=False,
                                   lock_settle_s=0.05)).counts.shards_skipped == -(-len(local) // 4)
    holder = OutputLock(OutputStore(out), ttl_s=60, settle_s=0)
    holder.acquire()
    try:
        with pytest.raises(OutputStateError, match="being written by another job"):
            run_job(cfg, RunOptions(f"s3://{BUCKET}/in/", out, progress=False, lock_settle_s=0.05))
    finally:
        holder.release()
    assert json.loads(read_bytes(f"{out}/run.json"))["counts"]["images"] == len(local)


def test_listing_a_prefix_streams_every_page(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefix over several list_objects_v2 pages (1000 keys each) lists exactly the images below
    it, at every depth, as boto3's own paginator sees them, without going through ``fs.find``."""
    import fsspec

    from bmp_core.io import uris as uris_mod

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [f"many/{d}/img_{i:05d}.{ext}" for i in range(1020)
            for d, ext in [(("a", "b/c", "d")[i % 3], ("jpg", "JPEG", "png", "txt")[i % 4])]]
    keys += ["many/", "many/marker/", "many_sibling/x.jpg", "other/y.jpg"]  # markers and neighbours
    for key in keys:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    expected = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="many/"):
        expected += [f"s3://{BUCKET}/{c['Key']}" for c in page.get("Contents", [])
                     if c["Key"].lower().endswith((".jpg", ".jpeg", ".png"))]
    assert len(expected) == 765  # i % 4 != 3 of 1020 keys: 2 pages of keys
    monkeypatch.setattr(fsspec.AbstractFileSystem, "find", lambda *a, **k: pytest.fail("fs.find used"))
    listed = uris_mod.list_input(f"s3://{BUCKET}/many", (".jpg", ".jpeg", ".png")).to_pylist()
    assert listed == sorted(expected)
    assert listed == uris_mod.list_input(f"s3://{BUCKET}/many/", (".jpg", ".jpeg", ".png")).to_pylist()


def test_lock_on_s3_is_compare_and_swap(s3_endpoint: str) -> None:
    """Conditional PUTs (If-None-Match / If-Match) on the S3 API: outdated writes fail, and of 8
    jobs starting together on one output exactly one takes the lock, with no settle delay."""
    from tests.integration.test_lock_timing import _race
    from tests.unit.test_commit import check_compare_and_swap

    check_compare_and_swap(OutputStore(f"s3://{BUCKET}/cas-test"))
    store = OutputStore(f"s3://{BUCKET}/race-test")
    won = _race(lambda: OutputLock(store, ttl_s=60, settle_s=0))
    assert len(won) == 1 and won[0].read().token == won[0].token
    won[0].release()
    assert won[0].read() is None


def test_lock_falls_back_to_a_lease_without_conditional_writes(s3_endpoint: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A store answering 501 to conditional writes still gets a working (lease) lock."""
    from jobs import lock_backends

    monkeypatch.setattr(lock_backends.S3Cas, "_put", lambda self, data, **condition: None)
    store = OutputStore(f"s3://{BUCKET}/lease-test")
    first = OutputLock(store, ttl_s=60, settle_s=0.05)
    first.acquire()
    with pytest.raises(OutputStateError, match="being written by another job"):
        OutputLock(store, ttl_s=60, settle_s=0.05).acquire()
    first.release()
    assert first.read() is None
