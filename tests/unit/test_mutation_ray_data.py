"""The Ray Data UDF's edges that mutation testing (scripts/mutation.sh) found unchecked: the URI column
reaching ``job.given_boxes`` for every batch kind, overrides and config objects, the size limits at
their bounds, alpha on white against PIL, the column types of an all-ok and an empty batch, and the
messages a user reads. Synthetic images only (no ../shared/testdata)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from bmp_core.config import load_config
from bmp_core.io.images import ImageDecodeError
from bmp_core.testing.images import encode_image, synthetic_people_bgr
from jobs.ray_data import BmpPredictor, pixels_to_bgr, prediction_schema, to_bgr

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "fake.yaml"
# Two people in known.jpg (640x425), COCO xywh with scores the fake detector never gives.
DETECTIONS = [{"image_id": 1, "category_id": 1, "bbox": [40.0, 30.0, 150.0, 300.0], "score": 0.9},
              {"image_id": 1, "category_id": 1, "bbox": [400.0, 60.0, 120.0, 280.0], "score": 0.6}]


@pytest.fixture()
def given(tmp_path: Path) -> tuple[BmpPredictor, bytes, str]:
    """A predictor whose boxes file names only known.jpg; that image's bytes and its path."""
    (tmp_path / "dets.json").write_text(json.dumps(DETECTIONS))
    (tmp_path / "names.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "known.jpg"}]}))
    data = encode_image(synthetic_people_bgr(425, 640, 3, 0), "known.jpg")
    predictor = BmpPredictor(str(CONFIG), overrides=[f"job.given_boxes={tmp_path / 'dets.json'}",
                                                     f"job.given_boxes_images={tmp_path / 'names.json'}"])
    return predictor, data, str(tmp_path / "photos" / "known.jpg")


def _pass0_scores(column: pa.Array, i: int) -> list[float]:
    return sorted({round(s, 4) for s in column[i].as_py()}, reverse=True)


def test_the_uri_column_finds_given_boxes_in_every_batch_kind(given: tuple[BmpPredictor, bytes, str]) -> None:
    predictor, data, path = given
    images = np.array([data, data], object)
    paths = np.array([path, None], object)  # a row without a name is "row 1": not in the boxes file
    outs = [predictor({"image": images, "path": paths}),
            predictor(pa.table({"image": pa.array([data, data]), "path": pa.array([path, None], pa.string())})),
            predictor(pd.DataFrame({"image": list(images), "path": list(paths)}))]
    for out in outs:
        det_score = out["det_score"] if isinstance(out, dict) else out.column("det_score").combine_chunks()
        assert out["status"][0].as_py() == out["status"][1].as_py() == "ok"
        # Pass 0 of the named image starts from the file's boxes (scores 0.9, 0.6; later passes may add
        # people); the unnamed one from the detector alone.
        assert {0.9, 0.6} <= set(_pass0_scores(det_score, 0))
        assert not {0.9, 0.6} & set(_pass0_scores(det_score, 1))
    # The default uri column is "path"; another name is given as uri_column.
    renamed = BmpPredictor(predictor.cfg, uri_column="file")({"image": images[:1], "file": paths[:1]})
    assert {0.9, 0.6} <= set(_pass0_scores(renamed["det_score"], 0))
    direct = predictor.predict([data], [path])
    assert {0.9, 0.6} <= set(_pass0_scores(direct[prediction_schema().names.index("det_score")], 0))


def test_overrides_and_a_config_object_reach_the_decoder() -> None:
    small = synthetic_people_bgr(48, 48, 1, 0)
    batch = {"image": np.array([np.ascontiguousarray(small[:, :, ::-1]), encode_image(small, "s.png")], object)}
    assert BmpPredictor(CONFIG)(batch)["status"].to_pylist() == ["ok", "ok"]
    for predictor in (BmpPredictor(str(CONFIG), overrides=["job.min_image_side=64"]),
                      BmpPredictor(load_config(CONFIG, ["job.min_image_side=64"]))):
        out = predictor(batch)
        assert out["status"].to_pylist() == ["error", "error"]  # pixels and bytes: the same limit
        assert all("minimum side 64" in e for e in out["error"].to_pylist())


def test_messages_for_values_that_are_not_images() -> None:
    with pytest.raises(ImageDecodeError, match=r"^not an image: a str \(expected HWC uint8 pixels or bytes\)$"):
        to_bgr("photo.jpg", 10**6, 16)
    with pytest.raises(ImageDecodeError, match=r"^no image \(null\)$"):
        to_bgr(None, 10**6, 16)
    with pytest.raises(ImageDecodeError, match=r"got float32 \(read_images\(mode='RGB'\) gives uint8\)$"):
        pixels_to_bgr(np.zeros((32, 32, 3), np.float32), 10**6, 16)
    with pytest.raises(ImageDecodeError, match=r"^too many pixels: 24x20 = 480 > limit 479 \(job.max_image_pixels\)$"):
        pixels_to_bgr(np.zeros((20, 24, 3), np.uint8), 479, 16)
    predictor = BmpPredictor(CONFIG)
    with pytest.raises(ValueError, match=r"column\(s\) status, width would be overwritten"):
        predictor({"image": np.zeros((1, 32, 32, 3), np.uint8), "width": np.array([1]),
                   "status": np.array(["raw"], object)})


def test_size_limits_at_their_bounds() -> None:
    for shape in ((20, 24, 3), (24, 20, 3)):  # exactly the limits (pixels, either side): accepted
        assert pixels_to_bgr(np.zeros(shape, np.uint8), 480, 20).shape == shape
    for shape in ((19, 24, 3), (24, 19, 3)):  # one side short, the other long enough
        with pytest.raises(ImageDecodeError, match="too small"):
            pixels_to_bgr(np.zeros(shape, np.uint8), 10**6, 20)


def test_alpha_is_composited_on_white_like_pil() -> None:
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (20, 24, 4), np.uint8)
    rgba[:10, :, 3] = 255  # opaque: the colour as it is
    rgba[10:, :, 3] = 0  # transparent: white
    got = pixels_to_bgr(rgba, 10**6, 16)
    white = Image.new("RGBA", (24, 20), (255, 255, 255, 255))
    expected = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba, "RGBA")).convert("RGB"))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected[:, :, ::-1])


def test_column_types_of_an_all_ok_and_an_empty_batch() -> None:
    schema = prediction_schema()
    pixels = np.ascontiguousarray(synthetic_people_bgr(64, 80, 1, 0)[:, :, ::-1])
    for images in (np.array([pixels], object), np.empty(0, object)):
        out = BmpPredictor(CONFIG)({"image": images})
        assert [out[name].type for name in schema.names] == schema.types
        assert {len(out[name]) for name in schema.names} == {len(images)}


def test_dict_batches_reach_ray_data_typed_with_nan_where_visibility_is_not_predicted() -> None:
    """A model without per-keypoint presence/visibility (the fakes' default) leaves those vectors null; a
    dict batch carries them as NaN vectors, so Ray Data's own conversion of the batch
    (``BlockAccessor.batch_to_block``) keeps every column's ``prediction_schema`` type (a null inside
    those lists made it pickle the column: a Parquet file no reader could use), one person in the batch
    as well as many. An error row stays null; predicted vectors pass as they are."""
    block_accessor = pytest.importorskip("ray.data.block").BlockAccessor
    schema = prediction_schema()
    pixels = np.ascontiguousarray(synthetic_people_bgr(64, 80, 2, 0)[:, :, ::-1])
    cases = [([], [pixels, b"not an image", pixels]), (["models.fake.num_people=1"], [b"not an image", pixels]),
             (["models.fake.visibility=true"], [pixels, b"not an image", pixels])]
    for overrides, values in cases:
        images = np.empty(len(values), object)
        images[:] = values
        predicted = "models.fake.visibility=true" in overrides
        predictor = BmpPredictor(CONFIG, overrides=overrides)
        plain = dict(zip(schema.names, predictor.predict(list(images)), strict=True))  # the typed columns
        block = block_accessor.batch_to_block(predictor({"image": images}))
        assert [block.schema.field(name).type for name in schema.names] == schema.types
        ok = [i for i, v in enumerate(values) if not isinstance(v, bytes)]
        people = sum(plain["num_instances"][i].as_py() for i in ok)
        assert people == 1 if "models.fake.num_people=1" in overrides else people > 1
        for name in ("keypoint_presence", "keypoint_visibility"):
            got, want = block.column(name).to_pylist(), plain[name].to_pylist()
            for i in range(len(values)):
                if i not in ok:  # the error row
                    assert got[i] is None and want[i] is None
                    continue
                assert len(got[i]) == len(want[i]) > 0
                if predicted:
                    assert got[i] == want[i] and all(v is not None for v in want[i])
                else:
                    assert all(v is None for v in want[i])
                    assert all(len(v) == 17 and np.isnan(v).all() for v in got[i])


def test_the_decode_stage_in_ray_datas_batch_formats_with_a_bad_row_first() -> None:
    """``decode_images`` then ``BmpPredictor`` as Ray Data runs them: the decode stage's dict (or pandas)
    batch becomes a block through Ray Data's own conversion (``BlockAccessor.batch_to_block``: the images a
    tensor column, which holds no nulls, so a bad row has placeholder pixels) and reaches the predictor as a
    pyarrow batch (``batch_format="pyarrow"``) or a dict; a bad row first does not stop the rows after it,
    and it becomes an error row with the decoder's reason. Labels as from the encoded bytes directly."""
    from jobs.ray_data import decode_images

    block_accessor = pytest.importorskip("ray.data.block").BlockAccessor
    people = synthetic_people_bgr(96, 128, 1, 0)
    encoded = [b"\xff\xd8 not a jpeg", encode_image(people, "a.png"), encode_image(people[:, ::-1], "b.jpg")]
    paths = np.array(["bad.jpg", "a.png", "b.jpg"], object)
    decoded = decode_images({"path": paths, "bytes": np.array(encoded, object)})
    from_pandas = decode_images(pd.DataFrame({"path": paths, "bytes": encoded}))
    for batch in (decoded, from_pandas):
        assert list(batch) == ["path", "image", "decode_error"] and list(batch["path"]) == list(paths)
        assert batch["decode_error"][1] is None and batch["decode_error"][2] is None
        with pytest.raises(ImageDecodeError) as err:
            to_bgr(encoded[0], 10**8, 16)
        assert batch["decode_error"][0] == str(err.value)
        np.testing.assert_array_equal(batch["image"][1], people[:, :, ::-1])
    block = block_accessor.batch_to_block(decoded)
    assert isinstance(block.schema.field("image").type, pa.ExtensionType)  # Ray's tensor type, not pickled
    assert "pickled" not in str(block.schema.field("image").type).lower()
    assert block.column("decode_error").to_pylist() == list(decoded["decode_error"])

    predictor = BmpPredictor(CONFIG)
    direct = predictor({"image": np.array(encoded, object), "path": paths})
    assert direct["num_instances"].to_pylist()[1] > 0 and direct["num_instances"].to_pylist()[2] > 0
    for out in (predictor(block), predictor(decoded)):
        assert out["status"].to_pylist() == ["error", "ok", "ok"]
        assert out["error"].to_pylist() == [decoded["decode_error"][0], None, None]
        for name in ("num_instances", "width", "height", "bbox_xyxy", "keypoints"):
            assert out[name].to_pylist()[1:] == direct[name].to_pylist()[1:], name
    with pytest.raises(KeyError, match=r"decode_images: the batch has no column 'bytes' \(columns: path, data\); "
                       r"pass bytes_column= in fn_kwargs"):
        decode_images({"path": paths, "data": np.array(encoded, object)})
