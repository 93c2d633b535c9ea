"""Edges of the input and output sides: 16-bit pixels, read errors, commit markers, COCO thresholds.

Every image here is generated in code (``bmp_core.testing.images``): these tests run without
``../shared/testdata``.
"""

from __future__ import annotations

import errno
import io
import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools.coco import COCO

from bmp_core.config import LoopConfig, config_from_dict
from bmp_core.io.images import decode_image_bgr
from bmp_core.loop import run_bmp
from bmp_core.output.coco import coco_dataset, write_coco_json
from bmp_core.output.commits import commit_shard, committed_markers, new_attempt_id
from bmp_core.output.store import OutputStore
from bmp_core.output.tables import ImageRow, images_table, instances_table
from bmp_core.testing import build_fake_models
from bmp_core.testing.images import SYNTHETIC_IMAGES, synthetic_image_bytes, synthetic_people_bgr

# ---------------------------------------------------------------------------------------------
# 16-bit images: 0..65535 maps to 0..255 by rounding v / 257, so 257 * k is exactly k


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png16(values: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (big-endian samples, filter 0), independent of PIL's encoder.

    ``values``: (H, W) uint16 for grayscale (color type 0), (H, W, 3) for RGB (color type 2).
    """
    height, width = values.shape[:2]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
            + _png_chunk(b"IEND", b""))


def _ramp(offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(16, 256) uint16 rows of ``257 * k + offset`` for k = 0..255 (clipped to 65535), and k."""
    k = np.tile(np.arange(256), (16, 1))
    return np.minimum(257 * k + offset, 65535).astype(np.uint16), k


def test_16bit_grayscale_ramp_decodes_to_exactly_k() -> None:
    values, k = _ramp()
    out = decode_image_bgr(_png16(values, 0))
    assert out.dtype == np.uint8 and out.shape == (16, 256, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], k)


def test_16bit_grayscale_rounds_to_the_nearest_level() -> None:
    # 257 k + 128 is just under half way to the next level (128 / 257 < 0.5): still k. 257 k + 129
    # is past half way: k + 1. Truncation (v // 257, v >> 8) or v / 256 would get one of them wrong.
    below, k = _ramp(128)
    np.testing.assert_array_equal(decode_image_bgr(_png16(below, 0))[:, :255, 0], k[:, :255])
    above, _ = _ramp(129)
    np.testing.assert_array_equal(decode_image_bgr(_png16(above, 0))[:, :255, 0], k[:, :255] + 1)


def test_16bit_tiff_ramp_decodes_to_exactly_k() -> None:
    values, k = _ramp()
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="TIFF")  # PIL mode I;16
    out = decode_image_bgr(buf.getvalue())
    np.testing.assert_array_equal(out[:, :, 1], k)


def test_16bit_rgb_ramp_decodes_to_exactly_k_per_channel() -> None:
    values, k = _ramp()
    rgb = np.stack([values, values[:, ::-1], np.full_like(values, 257 * 7)], axis=2)  # R, G, B
    out = decode_image_bgr(_png16(rgb, 2))
    np.testing.assert_array_equal(out[:, :, 2], k)  # R
    np.testing.assert_array_equal(out[:, :, 1], k[:, ::-1])  # G
    assert (out[:, :, 0] == 7).all()  # B


# ---------------------------------------------------------------------------------------------
# Read errors other than "not found" are error rows, not a failed shard


@pytest.fixture()
def fake_worker() -> object:
    from jobs.worker import BmpWorker

    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}},
                           ["job.batch_size=2", "job.decode_threads=2"])
    return BmpWorker(cfg)


def test_unreadable_inputs_become_error_rows(fake_worker: object, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import bmp_core.io.uris as uris_module

    good = tmp_path / "good.jpg"
    good.write_bytes(synthetic_image_bytes(SYNTHETIC_IMAGES[0]))
    directory = tmp_path / "a_directory.jpg"
    directory.mkdir()  # a real directory where a file was listed
    denied, broken = tmp_path / "denied.jpg", tmp_path / "broken.jpg"
    denied.write_bytes(b"x")
    broken.write_bytes(b"x")
    # Permission and I/O errors cannot be produced reliably on disk (tests may run as root, no
    # failing device): raise them where the worker reads, as fsspec/s3fs would report them.
    real_read = uris_module.read_bytes

    def read_bytes(uri: str) -> bytes:
        if uri.endswith("denied.jpg"):
            raise PermissionError(errno.EACCES, "Permission denied", uri)
        if uri.endswith("broken.jpg"):
            raise OSError(errno.EIO, "Input/output error", uri)
        return real_read(uri)

    monkeypatch.setattr(uris_module, "read_bytes", read_bytes)
    uris = [str(good), str(directory), str(denied), str(broken), str(tmp_path / "gone.jpg")]
    rows, instances = fake_worker.label(list(range(len(uris))), uris)
    assert [r.image_id for r in rows] == list(range(len(uris)))
    errors = {Path(r.uri).name: r.error for r in rows}
    assert errors["good.jpg"] is None and rows[0].num_instances > 0
    assert "directory" in errors["a_directory.jpg"]
    assert "permission denied" in errors["denied.jpg"]
    assert "read failed" in errors["broken.jpg"] and "Input/output error" in errors["broken.jpg"]
    assert "not found" in errors["gone.jpg"]
    assert set(instances.column("image_id").to_pylist()) == {0}


def test_unreadable_inputs_still_commit_the_shard(fake_worker: object, tmp_path: Path) -> None:
    from jobs.worker import ShardTask

    good = tmp_path / "good.jpg"
    good.write_bytes(synthetic_image_bytes(SYNTHETIC_IMAGES[0]))
    (tmp_path / "dir.jpg").mkdir()
    out = tmp_path / "out"
    task = ShardTask(str(out), "p1", 0, 0, (str(good), str(tmp_path / "dir.jpg")))
    report = fake_worker.process_shard(task)
    assert report.num_images == 2 and report.num_errors == 1
    assert set(committed_markers(OutputStore(str(out)), "p1")) == {0}


# ---------------------------------------------------------------------------------------------
# Commit markers: their counts are those of the parts they name


def _labeled_tables(num_images: int) -> tuple[pa.Table, pa.Table]:
    models = build_fake_models()
    rows, results = [], []
    for k in range(num_images):
        spec = SYNTHETIC_IMAGES[k % len(SYNTHETIC_IMAGES)]
        image = synthetic_people_bgr(spec.height, spec.width, spec.num_people, spec.seed)
        result = run_bmp(image, models, LoopConfig())
        results.append(result)
        rows.append(ImageRow(10 + k, f"/in/{k}.jpg", width=spec.width, height=spec.height,
                             num_instances=len(result.instances)))
    rows.append(ImageRow(10 + num_images, "/in/bad.jpg", error="empty file (0 bytes)"))
    return images_table(rows, shard_id=4), instances_table([r.image_id for r in rows[:-1]], results)


def test_commit_marker_counts_match_its_parts(tmp_path: Path) -> None:
    images, instances = _labeled_tables(3)
    assert images.num_rows == 4 and instances.num_rows > images.num_rows  # the counts differ
    store = OutputStore(str(tmp_path))
    marker = commit_shard(store, "p1", 4, new_attempt_id(1), images, instances, num_errors=1)
    on_disk = json.loads((tmp_path / "_commits" / "shard-000004.json").read_text())
    assert marker == committed_markers(store, "p1")[4]
    assert (on_disk["num_images"], on_disk["num_instances"]) == (marker.num_images, marker.num_instances)
    # Counted independently: rows of the Parquet files the marker names.
    assert on_disk["num_images"] == pq.read_table(tmp_path / on_disk["parts"]["images"]).num_rows == 4
    assert on_disk["num_instances"] == pq.read_table(tmp_path / on_disk["parts"]["instances"]).num_rows
    assert on_disk["num_instances"] == instances.num_rows


def test_worker_commit_marker_counts_match_its_report(fake_worker: object, tmp_path: Path) -> None:
    from jobs.worker import ShardTask

    uris = []
    for spec in SYNTHETIC_IMAGES[:3]:
        (tmp_path / spec.file_name).write_bytes(synthetic_image_bytes(spec))
        uris.append(str(tmp_path / spec.file_name))
    uris.append(str(tmp_path / "missing.jpg"))
    out = tmp_path / "out"
    report = fake_worker.process_shard(ShardTask(str(out), "p1", 2, 6, tuple(uris)))
    marker = committed_markers(OutputStore(str(out)), "p1")[2]
    assert (marker.num_images, marker.num_instances) == (report.num_images, report.num_instances) == (
        4, pq.read_table(out / marker.instances_part).num_rows)
    assert marker.num_errors == 1


# ---------------------------------------------------------------------------------------------
# COCO: v = 2 from a score >= coco_keypoint_thr on; every annotation is in the person category


def _coco_inputs(scores: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """One synthetic image labeled by the fakes, its first instances' keypoint scores replaced."""
    spec = SYNTHETIC_IMAGES[0]
    image = synthetic_people_bgr(spec.height, spec.width, spec.num_people, spec.seed)
    result = run_bmp(image, build_fake_models(), LoopConfig())
    n = len(scores)
    assert len(result.instances) >= n
    keypoints = result.instances.keypoints.copy()
    keypoints[:n, :, 2] = scores
    result = replace(result, instances=replace(result.instances, keypoints=keypoints))
    images = images_table([ImageRow(0, "/in/a.jpg", width=spec.width, height=spec.height,
                                    num_instances=len(result.instances))], shard_id=0)
    return images, instances_table([0], [result])


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_coco_keypoint_scoring_exactly_the_threshold_is_labeled(thr: float) -> None:
    # Scores are stored as float32: "exactly the threshold" is the float32 nearest to it, and one
    # float32 step below it must not be labeled.
    at = np.float32(thr)
    below = np.nextafter(at, np.float32(0))
    row = np.full(17, 0.05, np.float32)
    row[:6] = at
    row[6:9] = below
    row[9:] = np.linspace(0.1, 0.9, 8)  # around the threshold on both sides
    images, instances = _coco_inputs(row[None])
    dataset = coco_dataset(images, instances, keypoint_score_thr=thr)
    first = dataset["annotations"][0]
    v = np.asarray(first["keypoints"]).reshape(17, 3)[:, 2]
    expected = np.where(row >= at, 2, 0)
    assert (v[:6] == 2).all() and (v[6:9] == 0).all()
    np.testing.assert_array_equal(v, expected)
    assert first["num_keypoints"] == int((expected == 2).sum())
    # The streamed writer (what the job writes) agrees.
    buf = io.StringIO()
    write_coco_json(buf, lambda: iter([(images, instances)]), keypoint_score_thr=thr)
    assert json.loads(buf.getvalue())["annotations"][0]["keypoints"] == first["keypoints"]


def test_every_coco_annotation_is_in_the_person_category(tmp_path: Path) -> None:
    images, instances = _coco_inputs(np.full((1, 17), 0.9, np.float32))
    assert instances.num_rows > 1
    buf = io.StringIO()
    write_coco_json(buf, lambda: iter([(images, instances)]))
    path = tmp_path / "coco.json"
    path.write_text(buf.getvalue())
    coco = COCO(str(path))  # pycocotools' own index of the file
    person_ids = coco.getCatIds(catNms=["person"])
    assert person_ids == [1]  # COCO's person category id, which mmpose/mmdet training configs expect
    assert len(coco.getAnnIds(catIds=person_ids)) == len(coco.getAnnIds()) == instances.num_rows
    assert {a["category_id"] for a in coco.dataset["annotations"]} == {1}
    assert {a["category_id"] for a in coco_dataset(images, instances)["annotations"]} == {1}
