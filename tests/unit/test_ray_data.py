"""The Ray Data UDF called as Ray Data calls it (a batch in, a batch out), without Ray.

Every labeled row is checked against the plain loop (``run_bmp``, one image at a time) encoded by
pycocotools, not against the UDF's own encoder.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from bmp_core.config import load_config
from bmp_core.io.images import ImageDecodeError, decode_image_bgr
from bmp_core.loop import run_bmp
from bmp_core.output.tables import INSTANCES_SCHEMA
from bmp_core.testing import build_fake_models
from jobs.ray_data import BmpPredictor, pixels_to_bgr, prediction_schema

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "fake.yaml"


def _photos(testdata: Path, n: int = 3) -> list[Path]:
    return sorted(testdata.rglob("*.jpg"))[:n]


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _check_row(out: dict, i: int, image_bgr: np.ndarray) -> None:
    """Row ``i`` of the UDF's output holds the loop's people on ``image_bgr``, in merge order."""
    cfg = load_config(CONFIG)
    inst = run_bmp(image_bgr, build_fake_models(cfg.models.fake), cfg.loop).instances
    assert out["status"][i].as_py() == "ok" and out["error"][i].as_py() is None
    assert out["num_instances"][i].as_py() == len(inst) > 0
    assert (out["height"][i].as_py(), out["width"][i].as_py()) == image_bgr.shape[:2]
    assert out["instance_id"][i].as_py() == list(range(len(inst)))
    np.testing.assert_array_equal(np.array(out["keypoints"][i].as_py(), np.float32), inst.keypoints)
    np.testing.assert_array_equal(np.array(out["bbox_xyxy"][i].as_py(), np.float32), inst.boxes_xyxy)
    np.testing.assert_array_equal(np.array(out["det_score"][i].as_py(), np.float32), inst.det_scores)
    for k, (counts, size) in enumerate(zip(out["mask_rle_counts"][i].as_py(), out["mask_rle_size"][i].as_py(),
                                           strict=True)):
        decoded = mask_utils.decode({"size": size, "counts": counts.encode()}).astype(bool)
        np.testing.assert_array_equal(decoded, inst.masks[k])
        assert out["mask_area"][i].as_py()[k] == int(inst.masks[k].sum())


def test_pixels_from_read_images_and_bad_rows(testdata: Path) -> None:
    photos = _photos(testdata)
    images = np.empty(len(photos) + 4, object)  # ragged, as read_images gives images of several sizes
    for i, p in enumerate(photos):
        images[i] = _rgb(p)
    images[len(photos)] = np.zeros((4, 4, 3), np.uint8)  # too small
    images[len(photos) + 1] = np.zeros((32, 32, 3), np.float32)  # not uint8
    images[len(photos) + 2] = None
    images[len(photos) + 3] = np.zeros((32, 32, 2), np.uint8)  # no such layout
    paths = np.array([str(p) for p in photos] + ["small", "float", "null", "2ch"], object)
    labels = np.arange(len(images))
    out = BmpPredictor(CONFIG)({"image": images, "path": paths, "label": labels})

    assert "image" not in out and out["path"] is paths and out["label"] is labels  # passed through as given
    assert list(out) == ["path", "label", *prediction_schema().names]
    for i, p in enumerate(photos):
        _check_row(out, i, np.ascontiguousarray(_rgb(p)[:, :, ::-1]))
    errors = out["error"].to_pylist()[len(photos):]
    assert out["status"].to_pylist()[len(photos):] == ["error"] * 4
    assert "too small" in errors[0] and "uint8" in errors[1] and "null" in errors[2] and "shape" in errors[3]
    for name in (f.name for f in INSTANCES_SCHEMA if f.name != "image_id"):
        assert out[name].null_count == 4 and out[name].type == pa.list_(INSTANCES_SCHEMA.field(name).type)
    assert out["num_instances"].to_pylist()[len(photos):] == [0] * 4


def test_bytes_and_hf_struct_columns_decode_like_the_job(testdata: Path) -> None:
    photos = _photos(testdata, 2)
    data = [p.read_bytes() for p in photos]
    values = np.array([data[0], {"bytes": data[1], "path": "x.jpg"}, b"not an image",
                       {"bytes": None, "path": "y"}], object)
    out = BmpPredictor(str(CONFIG), image_column="bytes")({"bytes": values})
    for i in range(2):
        _check_row(out, i, decode_image_bgr(data[i]))  # EXIF orientation applied, as for the job's files
    assert out["status"].to_pylist() == ["ok", "ok", "error", "error"]
    assert "not an image" in out["error"][2].as_py() and "path 'y' only" in out["error"][3].as_py()


def test_decode_stage_then_predictor_labels_as_from_bytes(testdata: Path) -> None:
    """decode_images (the CPU stage) gives the job decoder's pixels as RGB and a reason per bad row;
    BmpPredictor on its output labels the good rows as the loop does and passes the reasons on."""
    from jobs.ray_data import decode_images

    photos = _photos(testdata, 2)
    data = [p.read_bytes() for p in photos]
    batch = {"path": np.array(["a.jpg", "b.jpg", "cut.jpg"], object),
             "bytes": np.array([data[0], data[1], data[0][:300]], object)}
    decoded = decode_images(batch)
    assert set(decoded) == {"path", "image", "decode_error"}
    for i in range(2):
        np.testing.assert_array_equal(decoded["image"][i], decode_image_bgr(data[i])[:, :, ::-1])
    assert decoded["decode_error"][0] is None and "corrupt" in decoded["decode_error"][2]
    out = BmpPredictor(str(CONFIG))(decoded)
    assert "image" not in out and "decode_error" not in out and list(out["path"]) == ["a.jpg", "b.jpg", "cut.jpg"]
    for i in range(2):
        _check_row(out, i, decode_image_bgr(data[i]))
    assert out["status"][2].as_py() == "error" and out["error"][2].as_py() == decoded["decode_error"][2]


def test_pyarrow_batch_gives_a_table_with_the_same_columns(testdata: Path) -> None:
    photos = _photos(testdata, 2)
    table = pa.table({"id": ["a", "b"], "image": [p.read_bytes() for p in photos]})
    predictor = BmpPredictor(CONFIG)
    out = predictor(table)
    assert isinstance(out, pa.Table)
    assert out.column_names == ["id", *prediction_schema().names]
    assert out.column("id").to_pylist() == ["a", "b"]
    images = np.array(table.column("image").to_pylist(), object)
    as_dict = predictor({"id": np.array(["a", "b"], object), "image": images})
    for name in prediction_schema().names:
        if name in ("keypoint_presence", "keypoint_visibility"):
            continue
        assert out.column(name).combine_chunks().equals(as_dict[name]), name
    # Per-keypoint vectors the model does not predict: null in a table, NaN in a dict batch (numpy, Ray's
    # way back for dicts, has no typed null inside a list); present ones are equal.
    for name in ("keypoint_presence", "keypoint_visibility"):
        from_table, from_dict = out.column(name).to_pylist(), as_dict[name].to_pylist()
        assert as_dict[name].type == out.schema.field(name).type, name
        for people_t, people_d in zip(from_table, from_dict, strict=True):
            assert len(people_t) == len(people_d) > 0
            for vec_t, vec_d in zip(people_t, people_d, strict=True):
                assert (vec_t is None and len(vec_d) == 17 and np.isnan(vec_d).all()) or vec_t == vec_d, name


def test_clear_errors_for_a_missing_or_clashing_column() -> None:
    predictor = BmpPredictor(CONFIG)
    with pytest.raises(KeyError, match="no column 'image' .*columns: bytes, path.*image_column="):
        predictor({"bytes": np.array([b""], object), "path": np.array(["x"], object)})
    pixels = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="status would be overwritten; pass column_prefix="):
        predictor({"image": pixels, "status": np.array(["raw"], object)})
    out = BmpPredictor(CONFIG, column_prefix="bmp_")({"image": pixels, "status": np.array(["raw"], object)})
    assert out["status"].tolist() == ["raw"] and out["bmp_status"].to_pylist() == ["ok"]


def test_pixel_layouts_match_pil_conversions() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 24), np.uint8)
    rgba = rng.integers(0, 256, (20, 24, 4), np.uint8)
    np.testing.assert_array_equal(pixels_to_bgr(gray, 10**6, 16),
                                  np.asarray(Image.fromarray(gray).convert("RGB"))[:, :, ::-1])
    np.testing.assert_array_equal(pixels_to_bgr(gray[:, :, None], 10**6, 16), pixels_to_bgr(gray, 10**6, 16))
    # Alpha on white, as the decoder does for an RGBA PNG: compare with decoding that PNG.
    png = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(png, "PNG")
    got = pixels_to_bgr(rgba, 10**6, 16).astype(int)
    assert np.abs(got - decode_image_bgr(png.getvalue()).astype(int)).max() <= 1
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        pixels_to_bgr(gray, 100, 16)
