"""``BmpPredictor`` inside a real Ray Data pipeline: read_images / read_binary_files -> map_batches ->
write_parquet on the shared test images, read back with pyarrow and checked against the plain loop."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from bmp_core.io.images import decode_image_bgr
from bmp_core.loop import run_bmp
from bmp_core.testing import build_fake_models
from jobs.ray_data import BmpPredictor, prediction_schema

from ._helpers import REPO, fake_config

pytestmark = pytest.mark.integration


def _inputs(testdata: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """The test photos, one too small to label, and (for the bytes case) a file that is no image."""
    src = tmp_path / "in"
    src.mkdir()
    photos = sorted(testdata.rglob("*.jpg"))[:4]
    for p in photos:
        shutil.copy(p, src / p.name)
    Image.new("RGB", (8, 8), "white").save(src / "tiny.png")
    return src, [src / p.name for p in photos]


def _check(table: object, by_path: dict[str, np.ndarray], cfg: object) -> None:
    models = build_fake_models(cfg.models.fake)  # type: ignore[attr-defined]
    rows = table.to_pylist()  # type: ignore[attr-defined]
    for row in rows:
        path = row["path"]
        if path not in by_path:
            continue
        inst = run_bmp(by_path[path], models, cfg.loop).instances  # type: ignore[attr-defined]
        assert row["status"] == "ok" and row["num_instances"] == len(inst) > 0, path
        np.testing.assert_array_equal(np.array(row["keypoints"], np.float32), inst.keypoints)
        masks = [mask_utils.decode({"size": s, "counts": c.encode()}).astype(bool)
                 for c, s in zip(row["mask_rle_counts"], row["mask_rle_size"], strict=True)]
        np.testing.assert_array_equal(np.array(masks), inst.masks)


def test_read_images_map_batches_write_parquet(ray_cluster: object, testdata: Path, tmp_path: Path) -> None:
    import ray

    src, photos = _inputs(testdata, tmp_path)
    cfg = fake_config()
    ds = ray.data.read_images(str(src), include_paths=True, mode="RGB")
    ds = ds.map_batches(BmpPredictor, fn_constructor_kwargs={"config": cfg}, batch_size=2,
                        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    ds.write_parquet(str(tmp_path / "labels"))

    table = pq.read_table(tmp_path / "labels")
    assert table.num_rows == len(photos) + 1  # one row per image, the bad one included
    assert "image" not in table.column_names and table.schema.names[-len(prediction_schema()):] == \
        prediction_schema().names
    for field in prediction_schema():
        assert table.schema.field(field.name).type == field.type, field.name  # the instances types survive
    tiny = [r for r in table.to_pylist() if r["path"].endswith("tiny.png")]
    assert len(tiny) == 1 and tiny[0]["status"] == "error" and "too small" in tiny[0]["error"]
    assert tiny[0]["keypoints"] is None
    # read_images gives RGB pixels as stored (no EXIF rotation): the loop on the same pixels.
    by_path = {str(p): np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB"))[:, :, ::-1])
               for p in photos}
    _check(table, by_path, cfg)


def test_read_binary_files_bytes_column_and_a_config_path(ray_cluster: object, testdata: Path,
                                                          tmp_path: Path) -> None:
    import ray

    src, photos = _inputs(testdata, tmp_path)
    (src / "broken.jpg").write_bytes(photos[0].read_bytes()[:300])  # a cut JPEG
    ds = ray.data.read_binary_files(str(src), include_paths=True)
    ds = ds.map_batches(BmpPredictor, fn_constructor_kwargs={"config": str(REPO / "configs/fake.yaml"),
                                                                 "image_column": "bytes"},
                        batch_size=3, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
                        batch_format="pyarrow")
    ds.write_parquet(str(tmp_path / "labels"))

    table = pq.read_table(tmp_path / "labels")
    rows = table.select(["path", "status", "error"]).to_pylist()
    status = {Path(r["path"]).name: (r["status"], r["error"]) for r in rows}
    assert len(status) == table.num_rows == len(photos) + 2
    assert status["broken.jpg"][0] == "error" and "corrupt" in status["broken.jpg"][1]
    assert status["tiny.png"][0] == "error"
    _check(table, {str(p): decode_image_bgr(p.read_bytes()) for p in photos}, fake_config())


def test_two_stages_decode_on_cpu_tasks_then_label_on_actors(ray_cluster: object, testdata: Path,
                                                              tmp_path: Path) -> None:
    """docs/ray-data.md's pattern: decode_images as CPU tasks, BmpPredictor on an actor pool with two
    batches in flight per actor; the stages stay two operators (different resources: no fusion), and
    the labels are the job decoder's pixels through the plain loop."""
    import ray

    from jobs.ray_data import decode_images

    src, photos = _inputs(testdata, tmp_path)
    (src / "broken.jpg").write_bytes(photos[0].read_bytes()[:300])  # a cut JPEG
    ds = ray.data.read_binary_files(str(src), include_paths=True)
    ds = ds.map_batches(decode_images, batch_size=2, num_cpus=0.5)
    ds = ds.map_batches(BmpPredictor, fn_constructor_kwargs={"config": fake_config()}, batch_size=2, num_cpus=1,
                        compute=ray.data.ActorPoolStrategy(size=1, max_tasks_in_flight_per_actor=2))
    ds.write_parquet(str(tmp_path / "labels"))

    operators = ds.stats()
    assert "MapBatches(decode_images)" in operators and "MapBatches(BmpPredictor)" in operators
    assert "MapBatches(decode_images)->MapBatches(BmpPredictor)" not in operators  # not fused into the actor
    table = pq.read_table(tmp_path / "labels")
    assert "image" not in table.column_names and "decode_error" not in table.column_names
    status = {Path(r["path"]).name: (r["status"], r["error"]) for r in table.select(["path", "status", "error"])
              .to_pylist()}
    assert len(status) == table.num_rows == len(photos) + 2
    assert status["broken.jpg"][0] == "error" and "corrupt" in status["broken.jpg"][1]
    assert status["tiny.png"][0] == "error" and "too small" in status["tiny.png"][1]
    _check(table, {str(p): decode_image_bgr(p.read_bytes()) for p in photos}, fake_config())


def test_lite_config(ray_cluster: object, testdata: Path, tmp_path: Path) -> None:
    pytest.importorskip("mediapipe", reason="the lite backend needs MediaPipe (bmp-label[lite])")
    import ray

    coco = testdata / "coco"
    photos = sorted(coco.glob("*.jpg"))
    # The first pass's people come from the COCO boxes (instead of the lite detector), matched by file
    # name through the passed-through `path` column.
    overrides = [f"job.given_boxes={coco / 'test_coco_det_AP_H_56.json'}",
                 f"job.given_boxes_images={coco / 'test_coco.json'}"]
    ds = ray.data.read_images([str(p) for p in photos], include_paths=True, mode="RGB")
    ds = ds.map_batches(BmpPredictor, fn_constructor_kwargs={"config": str(REPO / "configs/lite_cpu.yaml"),
                                                                 "overrides": overrides},
                        batch_size=2, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    ds.write_parquet(str(tmp_path / "labels"))
    table = pq.read_table(tmp_path / "labels")
    assert table.num_rows == len(photos)
    assert table.column("status").to_pylist() == ["ok"] * len(photos), table.column("error").to_pylist()
    assert sum(table.column("num_instances").to_pylist()) > 0
    for row in table.to_pylist():
        assert len(row["keypoints"]) == len(row["mask_rle_counts"]) == row["num_instances"]
