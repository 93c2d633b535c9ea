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
    pattern = str(tmp_path / "tars" / "shard-{000000..000002}.tar")
    cfg = fake_config("job.shard_size=2")
    out = tmp_path / "out"
    run = run_job(cfg, RunOptions(pattern, str(out), num_workers=2, progress=False, lock_settle_s=0.05))

    images, instances = read_output(str(out))
    assert_one_row_per_image(images, 9)  # 6 + corrupt + ok + cut: sidecars are not images
    assert run.counts.images_error == 2
    images = images.sort_by("image_id")
    errors = {u.rsplit("#", 1)[1]: e for u, e in zip(images.column("uri").to_pylist(),
                                                     images.column("error").to_pylist(), strict=True) if e}
    assert set(errors) == {"corrupt.jpg", "cut.jpg"}
    assert "not an image" in errors["corrupt.jpg"] and "truncated tar" in errors["cut.jpg"]
    keys = images.column("key").to_pylist()
    assert keys[:6] == ["00000", "00001", "00002", "01000", "01001", "01002"]
    assert images.column("container_uri").to_pylist()[0] == str(tmp_path / "tars" / "shard-000000.tar")
    _check_labels(images, instances, expected, cfg)
    listing = pq.read_table(out / "listing.parquet")
    assert listing.column_names == ["image_id", "uri", "span_start", "span_end"]

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
    assert "in 3 tar file(s)" in capsys.readouterr().out


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
    assert_one_row_per_image(images, len(photos))
    assert sorted(images.column("uri").to_pylist()) == sorted(expected)
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
    assert code == 2 and "\n" not in err
    assert "--image-column 'image': no such column" in err and "its columns are: img, id" in err


def test_worker_killed_mid_shard_of_a_tar(ray_cluster: object, testdata: Path, tmp_path: Path) -> None:
    from .test_faults import _kill_a_worker, _wait_for_commits

    photos = _photos(testdata)
    expected = _write_shards(tmp_path / "tars", photos, per_tar=5)
    cfg = fake_config("models.fake.latency_ms=150", "job.shard_size=1")
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
    assert_one_row_per_image(images, len(photos))
    _check_labels(images, instances, expected, cfg)
    assert len(list((out / "images").iterdir())) == len(photos)  # only committed attempts are left
