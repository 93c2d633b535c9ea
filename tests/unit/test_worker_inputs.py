"""BmpWorker on tar members and Parquet rows (no Ray): one row per entry, keys kept, bad members
are error rows, and the labels are those of the same images read as loose files."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bmp_core.config import config_from_dict
from bmp_core.io import tars
from bmp_core.io.sources import list_source
from bmp_core.output.reader import read_committed_table
from bmp_core.output.store import OutputStore
from bmp_core.output.tables import keypoints_array
from jobs.planner import make_plan, shard_inputs
from jobs.worker import BmpWorker, ShardTask

EXTS = (".jpg", ".png")


def _cfg() -> object:
    return config_from_dict({"models": {"kind": "fake", "device": "cpu"}},
                            ["job.batch_size=2", "job.decode_threads=2", "job.shard_size=5"])


def _keypoints_by_uri(rows: list, instances: pa.Table) -> dict[str, np.ndarray]:
    ids = np.asarray(instances.column("image_id").to_pylist(), dtype=np.int64)
    kpts = keypoints_array(instances)
    return {r.uri: kpts[ids == r.image_id] for r in rows}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_tar_shards_label_like_the_loose_files(testdata: Path, tmp_path: Path) -> None:
    photos = sorted((testdata / "coco").glob("*.jpg")) + sorted((testdata / "ochuman").glob("*.jpg"))
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for i, path in enumerate(photos):
            _add(tar, f"{i:04d}.jpg", path.read_bytes())
            _add(tar, f"{i:04d}.json", b'{"caption": "a sidecar, not an image"}')
        _add(tar, "9999.jpg", b"corrupt: not a jpeg")
    with tarfile.open(tmp_path / "shard-1.tar", "w") as tar:
        _add(tar, "a.jpg", photos[0].read_bytes())
    cfg = _cfg()
    listing = list_source(str(tmp_path / "shard-{0..1}.tar"), EXTS)
    plan = make_plan(cfg, listing)
    assert plan.num_shards == 2 and plan.num_images is None  # one shard per tar, members not counted yet
    worker = BmpWorker(cfg)
    out = str(tmp_path / "out")
    for shard in range(plan.num_shards):
        inputs = shard_inputs(listing, plan, shard)
        worker.process_shard(ShardTask(out, plan.plan_id, shard, plan.first_image_id(shard), inputs.uris, 1,
                                       listing.kind, inputs.spans, inputs.tar))
    images = read_committed_table(OutputStore(out), plan.plan_id, "images").sort_by("image_id")
    stride = tars.TAR_ID_STRIDE
    assert images.column("image_id").to_pylist() == list(range(len(photos) + 1)) + [stride]
    assert images.column("key").to_pylist() == [f"{i:04d}" for i in range(len(photos))] + ["9999", "a"]
    assert set(images.column("container_uri").to_pylist()) == {str(tmp_path / f"shard-{t}.tar") for t in (0, 1)}
    status = dict(zip(images.column("key").to_pylist(), images.column("error").to_pylist(), strict=True))
    assert "not an image" in (status.pop("9999") or "") and set(status.values()) == {None}

    # The same photos as loose files through the same worker: identical people.
    member_rows, member_instances = worker.label([], [], kind=listing.kind, tars=[(listing.tars[0], 0)])
    assert len(member_rows) == len(photos) + 1
    file_rows, file_instances = worker.label(range(len(photos)), [str(p) for p in photos])
    by_member = _keypoints_by_uri(member_rows, member_instances)
    by_file = _keypoints_by_uri(file_rows, file_instances)
    assert sum(len(v) for v in by_file.values()) > 0
    for i, path in enumerate(photos):
        np.testing.assert_array_equal(by_member[f"{tmp_path}/shard-0.tar#{i:04d}.jpg"], by_file[str(path)])


def test_parquet_rows_keep_their_ids(testdata: Path, tmp_path: Path) -> None:
    photos = sorted((testdata / "coco").glob("*.jpg"))
    table = pa.table({"photo_id": [1000 + i for i in range(len(photos))] + [2000],
                      "image": [{"bytes": p.read_bytes(), "path": p.name} for p in photos] + [
                          {"bytes": None, "path": "elsewhere.jpg"}]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}},
                           ["job.image_column=image", "job.id_column=photo_id", "job.batch_size=2"])
    listing = list_source(str(tmp_path / "t.parquet"), EXTS, "image", "photo_id")
    plan = make_plan(cfg, listing)
    inputs = shard_inputs(listing, plan, 0)
    uris = inputs.uris
    rows, instances = BmpWorker(cfg).label(range(len(uris)), uris, kind=listing.kind, spans=inputs.spans)
    assert [r.key for r in rows] == [str(1000 + i) for i in range(len(photos))] + ["2000"]
    assert rows[-1].error is not None and "elsewhere.jpg" in rows[-1].error
    file_rows, file_instances = BmpWorker(cfg).label(range(len(photos)), [str(p) for p in photos])
    by_row, by_file = _keypoints_by_uri(rows, instances), _keypoints_by_uri(file_rows, file_instances)
    for i, path in enumerate(photos):
        assert rows[i].width is not None and rows[i].error is None
        np.testing.assert_array_equal(by_row[uris[i]], by_file[str(path)])


def test_a_resume_reuses_the_frozen_parquet_listing_unless_a_file_or_the_config_changed(
        testdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bmp_core.io import parquet_images
    from bmp_core.output.plan import freeze_plan
    from jobs.planner import list_job_input, listing_table

    photos = sorted((testdata / "coco").glob("*.jpg"))
    pq.write_table(pa.table({"image": [p.read_bytes() for p in photos]}), tmp_path / "t.parquet")
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}}, ["job.image_column=image"])
    store = OutputStore(str(tmp_path / "out"))
    first = list_job_input(cfg, str(tmp_path / "t.parquet"), store)
    freeze_plan(store, make_plan(cfg, first), listing_table(first), cfg)

    reads: list[str] = []
    real_read = parquet_images.read_footer
    monkeypatch.setattr(parquet_images, "read_footer",
                        lambda uri, *a: reads.append(uri) or real_read(uri, *a))  # type: ignore[func-returns-value]
    again = list_job_input(cfg, str(tmp_path / "t.parquet"), store)
    assert reads == [] and again.uris.equals(first.uris) and again.spans_start.equals(first.spans_start)
    assert make_plan(cfg, again) == make_plan(cfg, first)  # the resume sees the same plan

    other = config_from_dict({"models": {"kind": "fake", "device": "cpu"}},
                             ["job.image_column=image", "job.shard_size=5"])
    assert len(list_job_input(other, str(tmp_path / "t.parquet"), store).uris) == len(first.uris)
    assert reads == [str(tmp_path / "t.parquet")]  # another config: read again, not the frozen listing
    stat = (tmp_path / "t.parquet").stat()
    os.utime(tmp_path / "t.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    list_job_input(cfg, str(tmp_path / "t.parquet"), store)
    assert len(reads) == 2  # a touched file: read again


def test_parts_written_before_the_container_columns_read_with_nulls(tmp_path: Path) -> None:
    from bmp_core.output.reader import read_table
    from bmp_core.output.tables import IMAGES_SCHEMA, ImageRow, images_table

    old_schema = pa.schema([f for f in IMAGES_SCHEMA if f.name not in ("container_uri", "key")])
    old_part = images_table([ImageRow(0, "/a.jpg", width=4, height=4)], 0).select(old_schema.names)
    new_part = images_table([ImageRow(1, "/t.tar#b.jpg", width=4, height=4, container_uri="/t.tar", key="b")], 1)
    store = OutputStore(str(tmp_path))
    store.write_table("images/old.parquet", old_part)
    store.write_table("images/new.parquet", new_part)
    table = read_table(store, ["images/old.parquet", "images/new.parquet"], "images")
    assert table.schema == IMAGES_SCHEMA
    assert table.column("key").to_pylist() == [None, "b"]
    assert table.column("width").to_pylist() == [4, 4]


def test_an_id_column_without_an_image_column_is_a_config_error() -> None:
    from bmp_core.config import ConfigError

    with pytest.raises(ConfigError, match="job.id_column is set but job.image_column is not"):
        config_from_dict({"models": {"kind": "fake", "device": "cpu"}}, ["job.id_column=id"])
    with pytest.raises(ConfigError, match="job.image_column: an empty column name"):
        config_from_dict({"models": {"kind": "fake", "device": "cpu"}}, ["job.image_column=' '"])


def test_a_tar_without_images_commits_an_empty_shard_and_finalizes(tmp_path: Path) -> None:
    from bmp_core.output.plan import freeze_plan
    from bmp_core.testing.images import SyntheticImage, write_synthetic_images
    from jobs.finalize import finalize_output
    from jobs.planner import listing_table

    photos = write_synthetic_images(tmp_path / "photos", (SyntheticImage("a.jpg", 160, 120, 1, 0),
                                                          SyntheticImage("b.jpg", 200, 150, 2, 1)))
    with tarfile.open(tmp_path / "s-0.tar", "w") as tar:
        for i, path in enumerate(photos):
            _add(tar, f"{i}.jpg", path.read_bytes())
    with tarfile.open(tmp_path / "s-1.tar", "w") as tar:
        _add(tar, "0.json", b"{}")  # sidecars only: no image member
    cfg = _cfg()
    listing = list_source(str(tmp_path / "s-{0..1}.tar"), EXTS)
    plan = make_plan(cfg, listing)
    store = OutputStore(str(tmp_path / "out"))
    freeze_plan(store, plan, listing_table(listing), cfg)
    worker = BmpWorker(cfg)
    reports = []
    for shard in range(plan.num_shards):
        inputs = shard_inputs(listing, plan, shard)
        reports.append(worker.process_shard(ShardTask(store.uri, plan.plan_id, shard, plan.first_image_id(shard),
                                                      inputs.uris, 1, listing.kind, inputs.spans, inputs.tar)))
    assert [r.num_images for r in reports] == [2, 0]
    counts = finalize_output(store, plan, cfg.job.coco_keypoint_thr)
    assert counts.images == 2 and counts.images_error == 0 and counts.coco_images == 2
