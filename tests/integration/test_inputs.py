"""WebDataset tar shards and Parquet image tables as input, end to end: local and on moto S3, with a
corrupt member, a truncated tar, resume, a rewritten tar refused, and a worker killed mid-shard."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import threading
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bmp_core.io.tars import TAR_ID_STRIDE
from bmp_core.output.store import OutputStateError
from bmp_core.testing.images import SyntheticImage, write_synthetic_images
from jobs.cli import main
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


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _photos(testdata: Path) -> list[Path]:
    """The test photos; with a plain clone's demo set (4 COCO photos) also synthetic ones, so that every
    case here has the 10 it cuts into tars and tables."""
    photos = sorted(testdata.rglob("*.jpg"))
    if len(photos) < 10:
        extra = Path(tempfile.mkdtemp(prefix="bmp-photos-"))
        specs = [SyntheticImage(f"synthetic_{i}.jpg", 200 + 10 * i, 300, 1 + i % 3, i) for i in range(10 - len(photos))]
        photos += write_synthetic_images(extra, tuple(specs))
    return photos


def _write_shards(folder: Path, photos: list[Path], per_tar: int) -> dict[str, Path]:
    """``shard-00000{k}.tar`` of ``per_tar`` photos each (+ a .json sidecar per sample); member URI -> photo."""
    folder.mkdir(parents=True, exist_ok=True)
    where = {}
    for k in range(-(-len(photos) // per_tar)):
        tar_path = folder / f"shard-{k:06d}.tar"
        with tarfile.open(tar_path, "w") as tar:
            for i, path in enumerate(photos[k * per_tar: (k + 1) * per_tar]):
                key = f"{k:02d}{i:03d}"
                _add(tar, f"{key}.jpg", path.read_bytes())
                _add(tar, f"{key}.json", b'{"source": "sidecar"}')
                where[f"{tar_path}#{key}.jpg"] = path
    return where


def _assert_one_row_per_member(images: pa.Table, expected: dict[str, Path]) -> None:
    """Every member once; the member k of the t-th tar (sorted) is image t * TAR_ID_STRIDE + k."""
    uris = images.column("uri").to_pylist()
    assert sorted(uris) == sorted(expected) and len(set(uris)) == len(uris)
    tar_index = {t: i for i, t in enumerate(sorted({u.split("#")[0] for u in expected}))}
    by_tar: dict[str, list[str]] = {}
    for uri in expected:  # _write_shards lists members in tar order
        by_tar.setdefault(uri.split("#")[0], []).append(uri)
    want = {u: tar_index[t] * TAR_ID_STRIDE + k for t, members in by_tar.items() for k, u in enumerate(members)}
    assert dict(zip(uris, images.column("image_id").to_pylist(), strict=True)) == want


def _check_labels(images: pa.Table, instances: pa.Table, expected: dict[str, Path], cfg: object) -> None:
    got = keypoints_by_uri(images, instances)
    for uri, path in expected.items():
        np.testing.assert_array_equal(got[uri], reference_keypoints(path, cfg))  # type: ignore[arg-type]


def test_local_tars_corrupt_truncated_resume_and_rewrite(ray_cluster: object, testdata: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    photos = _photos(testdata)
    expected = _write_shards(tmp_path / "tars", photos[:6], per_tar=3)  # shard-000000, shard-000001
    # shard-000002: a corrupt member, then a photo whose data the truncation cuts.
    bad = tmp_path / "tars" / "shard-000002.tar"
    with tarfile.open(bad, "w") as tar:
        _add(tar, "corrupt.jpg", b"\xff\xd8 not really a jpeg")
        _add(tar, "ok.jpg", photos[6].read_bytes())
        _add(tar, "cut.jpg", photos[7].read_bytes())
    with tarfile.open(bad) as tar:
        cut = tar.getmember("cut.jpg")
    bad.write_bytes(bad.read_bytes()[: cut.offset_data + cut.size // 2])  # cut.jpg halved, no end blocks
    expected[f"{bad}#ok.jpg"] = photos[6]
    not_a_tar = tmp_path / "tars" / "shard-000003.tar"
    not_a_tar.write_bytes(b"an html error page saved as a tar " * 30)
    pattern = str(tmp_path / "tars" / "shard-{000000..000003}.tar")
    cfg = fake_config("job.shard_size=2")  # a tar input: one shard per tar, whatever shard_size says
    out = tmp_path / "out"
    run = run_job(cfg, RunOptions(pattern, str(out), num_workers=2, progress=False, lock_settle_s=0.05))
    assert run.counts.shards == 4 and run.plan.num_images is None

    images, instances = read_output(str(out))
    # 6 + corrupt + ok + cut (sidecars are not images) + the file that is no tar: tar t's member k is t*S + k.
    s = TAR_ID_STRIDE
    assert sorted(images.column("image_id").to_pylist()) == [0, 1, 2, s, s + 1, s + 2, 2 * s, 2 * s + 1, 2 * s + 2,
                                                             3 * s]
    assert run.counts.images == 10 and run.counts.images_error == 3
    images = images.sort_by("image_id")
    errors = {u.rsplit("/", 1)[1]: e for u, e in zip(images.column("uri").to_pylist(),
                                                     images.column("error").to_pylist(), strict=True) if e}
    assert set(errors) == {"shard-000002.tar#corrupt.jpg", "shard-000002.tar#cut.jpg", "shard-000003.tar"}
    assert "not an image" in errors["shard-000002.tar#corrupt.jpg"]
    assert "truncated tar" in errors["shard-000002.tar#cut.jpg"]
    assert "not a tar archive" in errors["shard-000003.tar"]
    assert "shard-000003.tar" in (out / "errors.csv").read_text()
    keys = images.column("key").to_pylist()
    assert keys[:6] == ["00000", "00001", "00002", "01000", "01001", "01002"]
    assert images.column("container_uri").to_pylist()[0] == str(tmp_path / "tars" / "shard-000000.tar")
    _check_labels(images, instances, expected, cfg)
    listing = pq.read_table(out / "listing.parquet")
    assert listing.column_names == ["shard_id", "uri", "size", "version"]
    assert listing.column("size").to_pylist()[2] == bad.stat().st_size

    # Resume: nothing to do. A rewritten tar (same listing): refused, naming the input.
    again = run_job(cfg, RunOptions(pattern, str(out), progress=False, lock_settle_s=0.05))
    assert again.counts.shards_labeled == 0 and again.counts.shards_skipped == run.counts.shards
    first = tmp_path / "tars" / "shard-000000.tar"
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(OutputStateError, match="a tar or Parquet file of it was rewritten"):
        run_job(cfg, RunOptions(pattern, str(out), progress=False, lock_settle_s=0.05))
    assert main(["plan", "--config", str(Path(__file__).parents[2] / "configs" / "fake.yaml"), "--input", pattern,
                 "--output", str(out)]) == 0
    assert "4 tar file(s)" in capsys.readouterr().out


def test_tars_and_parquet_on_s3(ray_cluster: object, s3_endpoint: str, testdata: Path, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    photos = _photos(testdata)
    local = _write_shards(tmp_path / "tars", photos, per_tar=4)
    for path in sorted((tmp_path / "tars").glob("*.tar")):
        s3.upload_file(str(path), BUCKET, f"wds/{path.name}")
    s3.put_object(Bucket=BUCKET, Key="wds/README.md", Body=b"not a tar")
    expected = {u.replace(str(tmp_path / "tars"), f"s3://{BUCKET}/wds"): p for u, p in local.items()}
    cfg = fake_config("job.shard_size=3")
    out = f"s3://{BUCKET}/out/wds"
    run_job(cfg, RunOptions(f"s3://{BUCKET}/wds/*.tar", out, num_workers=2, progress=False, lock_settle_s=0.05))
    images, instances = read_output(out)
    _assert_one_row_per_member(images, expected)
    _check_labels(images, instances, expected, cfg)

    # Parquet: two files under a prefix, HF Image structs, an id column, row groups of 2.
    for part, chunk in enumerate((photos[:5], photos[5:])):
        table = pa.table({"image": [{"bytes": p.read_bytes(), "path": p.name} for p in chunk],
                          "uid": [f"{part}-{p.stem}" for p in chunk], "caption": ["x"] * len(chunk)})
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=2)
        s3.put_object(Bucket=BUCKET, Key=f"hf/train/part-{part}.parquet", Body=buf.getvalue())
    cfg = fake_config("job.shard_size=3", "job.image_column=image", "job.id_column=uid")
    out = f"s3://{BUCKET}/out/hf"
    run_job(cfg, RunOptions(f"s3://{BUCKET}/hf/train/", out, num_workers=2, progress=False, lock_settle_s=0.05))
    images, instances = read_output(out)
    assert_one_row_per_image(images, len(photos))
    images = images.sort_by("image_id")
    assert images.column("key").to_pylist() == [f"{0 if i < 5 else 1}-{p.stem}" for i, p in enumerate(photos)]
    rows = {u: photos[i] for i, u in enumerate(images.column("uri").to_pylist())}
    assert all(u.startswith(f"s3://{BUCKET}/hf/train/part-") for u in rows)
    _check_labels(images, instances, rows, cfg)


def test_missing_parquet_column_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq.write_table(pa.table({"img": [b"x"], "id": [1]}), tmp_path / "t.parquet")
    config = str(Path(__file__).parents[2] / "configs" / "fake.yaml")
    code = main(["run", "--config", config, "--input", str(tmp_path / "t.parquet"), "--output",
                 str(tmp_path / "out"), "--image-column", "image", "--no-progress"])
    err = capsys.readouterr().err.strip()
    message, hint = err.splitlines()  # one line, then the hint's (bmp_core.errors.UserError)
    assert code == 2 and message.startswith("bmp-label run: ") and hint.startswith("  hint: ")
    assert "--image-column 'image': no such column" in message and "its columns are: img, id" in message


def test_worker_killed_mid_shard_of_a_tar(ray_cluster: object, testdata: Path, tmp_path: Path) -> None:
    from .test_faults import _kill_a_worker, _wait_for_commits

    photos = _photos(testdata)
    expected = _write_shards(tmp_path / "tars", photos, per_tar=3)
    expected_tars = {uri.split("#")[0] for uri in expected}
    cfg = fake_config("models.fake.latency_ms=150")
    out = tmp_path / "out"
    result: dict[str, object] = {}

    def job() -> None:
        try:
            result["run"] = run_job(cfg, RunOptions(str(tmp_path / "tars" / "*.tar"), str(out), num_workers=1,
                                                    progress=False, lock_settle_s=0.05))
        except Exception as err:  # noqa: BLE001 - re-raised in the main thread below
            result["error"] = err

    thread = threading.Thread(target=job)
    thread.start()
    _wait_for_commits(out, 1)
    _kill_a_worker()
    thread.join(timeout=300)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    assert result["run"].counts.failed_attempts >= 1  # type: ignore[attr-defined]
    images, instances = read_output(str(out))
    _assert_one_row_per_member(images, expected)
    _check_labels(images, instances, expected, cfg)
    assert len(list((out / "images").iterdir())) == len(expected_tars)  # only committed attempts are left


def test_a_tar_rewritten_after_the_plan_stops_the_job_at_once_naming_it(ray_cluster: object, testdata: Path,
                                                                        tmp_path: Path) -> None:
    from bmp_core.output.plan import freeze_plan
    from bmp_core.output.store import OutputStore
    from jobs.actor_pool import JobError
    from jobs.planner import list_job_input, listing_table, make_plan

    photos = _photos(testdata)
    _write_shards(tmp_path / "tars", photos[:4], per_tar=2)
    pattern = str(tmp_path / "tars" / "*.tar")
    cfg = fake_config("job.max_attempts=3")
    out = tmp_path / "out"
    store = OutputStore(str(out))
    listing = list_job_input(cfg, pattern, store)
    freeze_plan(store, make_plan(cfg, listing), listing_table(listing), cfg)  # what a first run leaves
    # The plan is frozen; then a tar is rewritten before its shard runs: the listing check of a
    # rerun would refuse it, so here the workers see the changed file (the plan check is skipped).
    rewritten = tmp_path / "tars" / "shard-000001.tar"
    with tarfile.open(rewritten, "a") as tar:
        _add(tar, "late.jpg", photos[5].read_bytes())
    from jobs import ray_runner

    def prepare(cfg_: object, opts: RunOptions, store_: OutputStore) -> tuple[object, object]:
        return make_plan(cfg, listing), listing

    original = ray_runner.prepare_output
    ray_runner.prepare_output = prepare  # type: ignore[assignment]
    try:
        with pytest.raises(JobError, match=r"shard 1: the tar .*shard-000001.tar changed since the plan") as err:
            run_job(cfg, RunOptions(pattern, str(out), num_workers=1, progress=False, lock_settle_s=0.05))
        assert "ray::" not in str(err.value) and "Traceback" not in str(err.value)  # the reason, not Ray's wrapper
    finally:
        ray_runner.prepare_output = original  # type: ignore[assignment]
