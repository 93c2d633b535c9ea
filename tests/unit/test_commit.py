"""The commit protocol, plan freezing and the output lock, on a local folder (S3: integration tests)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from bmp_core.config import BmpConfig, config_from_dict
from bmp_core.output.commits import commit_shard, committed_markers, garbage_collect
from bmp_core.output.plan import freeze_plan
from bmp_core.output.reader import read_committed_table
from bmp_core.output.store import OutputStateError, OutputStore
from bmp_core.output.tables import INSTANCES_SCHEMA, ImageRow, images_table
from jobs.lock import OutputLock
from jobs.planner import listing_table, make_plan


def _images(ids: list[int], tag: str) -> pa.Table:
    return images_table([ImageRow(i, f"/in/{i}.jpg", error=tag) for i in ids], shard_id=0)


def test_only_marked_parts_are_read_and_the_last_marker_wins(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    empty = INSTANCES_SCHEMA.empty_table()
    commit_shard(store, "p1", 0, "a1-x", _images([0, 1], "first"), empty)
    commit_shard(store, "p1", 0, "a2-y", _images([0, 1], "second"), empty)  # a duplicate attempt
    store.write_table("images/shard-000001-a1-z.parquet", _images([2, 3], "crashed before its marker"))
    commit_shard(store, "other-plan", 2, "a1-q", _images([4], "stale plan"), empty)
    table = read_committed_table(store, "p1", "images")
    assert table.column("image_id").to_pylist() == [0, 1]
    assert set(table.column("error").to_pylist()) == {"second"}
    assert set(committed_markers(store, "p1")) == {0}

    # After garbage collection the folder itself is a clean table for any Parquet reader.
    assert garbage_collect(store, "p1") == 5  # a1-x (images + instances), the crashed part, the stale plan's 2
    assert sorted(ds.dataset(str(tmp_path / "images")).to_table().column("image_id").to_pylist()) == [0, 1]


def test_unreadable_marker_is_not_trusted(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    (tmp_path / "_commits").mkdir()
    (tmp_path / "_commits" / "shard-000000.json").write_text('{"plan_id": "p1", "shard')
    assert committed_markers(store, "p1") == {}


def _freeze(store: OutputStore, cfg: BmpConfig, uris: list[str], force: bool = False) -> None:
    arr = pa.array(uris)
    freeze_plan(store, make_plan(cfg, arr), listing_table(arr), cfg, force)


def test_plan_is_frozen_and_changes_are_refused_unless_forced(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    cfg = BmpConfig()
    _freeze(store, cfg, ["/a.jpg", "/b.jpg"])
    plan_id = store.read_json("plan.json")["plan_id"]
    commit_shard(store, plan_id, 0, "a1-x", _images([0, 1], "x"), INSTANCES_SCHEMA.empty_table())
    _freeze(store, config_from_dict({}, ["job.queue_depth=4"]), ["/a.jpg", "/b.jpg"])  # same plan: fine

    with pytest.raises(OutputStateError, match=r"loop.iterations: 2 -> 3") as err:
        _freeze(store, config_from_dict({}, ["loop.iterations=3"]), ["/a.jpg", "/b.jpg"])
    assert "--force" in str(err.value) and "1 committed shard" in str(err.value)
    with pytest.raises(OutputStateError, match=r"input listing \(2 images then, 3 images now"):
        _freeze(store, cfg, ["/a.jpg", "/b.jpg", "/c.jpg"])

    _freeze(store, cfg, ["/a.jpg", "/b.jpg", "/c.jpg"], force=True)
    assert store.read_json("plan.json")["num_images"] == 3
    assert not (tmp_path / "_commits").exists() and not (tmp_path / "images").exists()


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    first = OutputLock(store, ttl_s=60, settle_s=0)
    first.acquire()
    second = OutputLock(store, ttl_s=60, settle_s=0)
    with pytest.raises(OutputStateError, match=f"host {socket.gethostname()}, pid {os.getpid()}"):
        second.acquire()
    first.release()
    assert not (tmp_path / "_lock.json").exists()
    second.acquire()
    second.release()

    # A holder whose process is gone (a killed driver on this host) does not block a rerun.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    store.write_json("_lock.json", {"token": "t", "host": socket.gethostname(), "pid": int(dead.stdout),
                                    "heartbeat_unix": time.time(), "ttl_s": 60})
    third = OutputLock(store, ttl_s=60, settle_s=0)
    third.acquire()
    third.release()

    # A holder on another host is trusted until its lease expires, or the user breaks the lock.
    store.write_json("_lock.json", {"token": "t", "host": "elsewhere", "pid": 1, "heartbeat_unix": time.time(),
                                    "ttl_s": 60})
    with pytest.raises(OutputStateError, match="--break-lock"):
        OutputLock(store, settle_s=0).acquire()
    OutputLock(store, settle_s=0).acquire(break_lock=True)
    store.write_json("_lock.json", {"token": "t", "host": "elsewhere", "pid": 1,
                                    "heartbeat_unix": time.time() - 61, "ttl_s": 60})
    OutputLock(store, settle_s=0).acquire()


def test_rewritten_given_boxes_file_is_a_plan_change(tmp_path: Path) -> None:
    """The boxes file is pinned by content: same path, new content -> refused and named; the same
    bytes at a new mtime -> the same plan."""
    import hashlib

    from jobs.planner import file_digests

    boxes = tmp_path / "dets.json"
    boxes.write_text('[{"image_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9, "category_id": 1}]')
    cfg = config_from_dict({}, [f"job.given_boxes={boxes}"])
    store = OutputStore(str(tmp_path / "out"))
    arr = pa.array(["/a.jpg"])

    def freeze() -> None:
        plan = make_plan(cfg, arr, file_digests(cfg))
        freeze_plan(store, plan, listing_table(arr), cfg)

    freeze()
    assert store.read_json("plan.json")["file_sha256"] == {
        "job.given_boxes": hashlib.sha256(boxes.read_bytes()).hexdigest()}
    os.utime(boxes, (time.time() + 60, time.time() + 60))
    freeze()  # touched, not changed
    boxes.write_text('[{"image_id": 1, "bbox": [0, 0, 9, 9], "score": 0.9, "category_id": 1}]')
    with pytest.raises(OutputStateError, match=r"content of the file job.given_boxes names") as err:
        freeze()
    assert "config:" not in str(err.value)  # the config itself did not change
    boxes.unlink()
    with pytest.raises(ValueError, match=r"file not found: .*dets.json"):
        file_digests(cfg)


def check_compare_and_swap(store: OutputStore) -> None:
    """The lock's primitives: a write based on an outdated read fails (shared with the S3 test)."""
    from jobs.lock import LOCK_NAME
    from jobs.lock_backends import cas_for

    cas, other = cas_for(store, LOCK_NAME), cas_for(store, LOCK_NAME)
    assert cas.read() is None
    assert cas.create(b"v1") is True
    assert other.create(b"other") is False  # exists
    data, v1 = cas.read()
    assert data == b"v1"
    assert other.replace(b"v2", v1) is True  # someone took it over from v1
    assert cas.replace(b"mine", v1) is False  # our read is outdated: refused
    assert cas.read()[0] == b"v2"
    cas.delete(v1)  # outdated: the object stays
    assert cas.read()[0] == b"v2"
    cas.delete(cas.read()[1])
    assert cas.read() is None
    assert cas.replace(b"x", v1) is False  # gone


def test_lock_compare_and_swap_local(tmp_path: Path) -> None:
    check_compare_and_swap(OutputStore(str(tmp_path)))


def test_read_parts_keeps_order_with_a_window_and_raises_a_missing_part(tmp_path: Path) -> None:
    from bmp_core.output.reader import read_parts

    store = OutputStore(str(tmp_path))
    rels = []
    for i in range(23):
        store.write_table(f"images/p{i:02d}.parquet", _images([i], f"part {i}"))
        rels.append(f"images/p{i:02d}.parquet")
    rels = rels[::-1]  # any order the caller asks for, not the folder's
    for window in (1, 4, 64):
        got = [t.column("image_id").to_pylist() for t in read_parts(store, rels, window)]
        assert got == [[int(r[8:10])] for r in rels]
    with pytest.raises(FileNotFoundError):
        list(read_parts(store, [*rels[:5], "images/missing.parquet", *rels[5:]], 4))


def test_a_tar_plan_round_trips_and_its_completeness_is_counted_per_tar() -> None:
    from bmp_core.io.tars import TAR_ID_STRIDE
    from bmp_core.output.commits import ShardCommit
    from bmp_core.output.plan import Plan
    from jobs.finalize import check_complete

    plan = Plan(None, 256, "l" * 64, "c" * 64, (("input.containers", "d" * 64),), num_tars=3)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan.num_shards == 3 and [plan.first_image_id(s) for s in range(3)] == [0, TAR_ID_STRIDE,
                                                                                   2 * TAR_ID_STRIDE]
    with pytest.raises(ValueError, match="use first_image_id"):
        plan.shard_range(0)

    def marker(shard: int, n: int) -> ShardCommit:
        return ShardCommit(plan.plan_id, shard, "a1", "i", "j", n, 0, 0.0)

    markers = {0: marker(0, 2), 1: marker(1, 0), 2: marker(2, 1)}  # an empty tar is a committed shard of 0
    ids = [0, 1, 2 * TAR_ID_STRIDE]
    check_complete(plan, pa.table({"image_id": pa.array(ids, pa.int64())}), markers)
    with pytest.raises(OutputStateError, match="1 of the 3 tars have no committed shard"):
        check_complete(plan, pa.table({"image_id": pa.array(ids, pa.int64())}), {0: markers[0], 2: markers[2]})
    with pytest.raises(OutputStateError, match=r"images table has 3 rows for 4 images counted in 3 tars"):
        check_complete(plan, pa.table({"image_id": pa.array(ids, pa.int64())}), {**markers, 1: marker(1, 1)})
    with pytest.raises(OutputStateError, match=r"\(1 duplicated ids\)"):
        check_complete(plan, pa.table({"image_id": pa.array([0, 0, 2 * TAR_ID_STRIDE], pa.int64())}), markers)
