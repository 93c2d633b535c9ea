"""Reading an output back (``load_output``, ``instances_of``, ``image_labels``, ``read_image_rgb``), checked
against pyarrow reading the parts folder whole, pycocotools decoding the masks and Pillow decoding images.

Written for mutation testing of ``bmp_core/output/reader.py`` (docs/development.md "Mutation testing").
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage
from pycocotools import mask as mask_utils

from bmp_core.output.reader import (
    SUMMARY_INSTANCE_COLUMNS,
    image_labels,
    iter_shards,
    load_output,
    read_image_rgb,
    read_table,
)
from bmp_core.output.store import OutputStore
from bmp_core.output.tables import IMAGES_SCHEMA, INSTANCES_SCHEMA
from tests.export_fixtures import Image, Person, box_mask, write_output


def _people(seed: int, n: int) -> list[Person]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x0, y0 = int(rng.integers(0, 40)), int(rng.integers(0, 30))
        out.append(Person(box_mask(48, 64, x0, y0, x0 + int(rng.integers(2, 20)), y0 + int(rng.integers(2, 15))),
                          det_score=float(rng.uniform(0.3, 1)), pose_score=float(rng.uniform(0.3, 1))))
    return out


@pytest.fixture()
def output(tmp_path: Path) -> tuple[str, list[Image]]:
    images = [Image(f"/in/{i}.jpg", people=_people(i, i % 3 + 1)) for i in range(5)]
    images[2] = Image("/in/2.jpg", error="decode")
    return write_output(str(tmp_path / "out"), images, shard_size=2), images


def test_load_output_is_the_committed_parts_sorted(output: tuple[str, list[Image]]) -> None:
    uri, images = output
    got = load_output(uri)
    # The reference: pyarrow reads every part of each folder (nothing else is there before a GC).
    ref_images = ds.dataset(f"{uri}/images").to_table().sort_by("image_id")
    ref_instances = ds.dataset(f"{uri}/instances").to_table().sort_by([("image_id", "ascending"),
                                                                      ("instance_id", "ascending")])
    assert got.images.column("image_id").to_pylist() == ref_images.column("image_id").to_pylist() == list(range(5))
    assert got.images.schema.equals(IMAGES_SCHEMA)
    assert got.instances.to_pydict() == ref_instances.cast(INSTANCES_SCHEMA).to_pydict()
    assert got.ok_image_ids() == [0, 1, 3, 4]
    assert got.run_info is None and got.eval_info is None
    OutputStore(uri).write_json("run.json", {"counts": {"images": 5}})
    OutputStore(uri).write_json("eval.json", {"ap": 0.5})
    again = load_output(uri)
    assert again.run_info == {"counts": {"images": 5}} and again.eval_info == {"ap": 0.5}


def test_summary_columns_and_one_images_masks_on_demand(output: tuple[str, list[Image]]) -> None:
    uri, images = output
    full = load_output(uri)
    summary = load_output(uri, full_instances=False)
    assert summary.instances.column_names == list(SUMMARY_INSTANCE_COLUMNS)
    assert summary.instances.to_pydict() == full.instances.select(list(SUMMARY_INSTANCE_COLUMNS)).to_pydict()
    for image_id in range(5):
        one = summary.instances_of(image_id)
        assert one.to_pydict() == full.instances_of(image_id).to_pydict()
        assert one.num_rows == (0 if images[image_id].error else len(images[image_id].people))
        assert one.column("instance_id").to_pylist() == list(range(one.num_rows))
    assert summary.instances_of(99).num_rows == 0


def test_shards_come_in_pairs_in_shard_order(output: tuple[str, list[Image]]) -> None:
    uri, _ = output
    store = OutputStore(uri)
    plan_id = store.read_json("plan.json")["plan_id"]
    pairs = list(iter_shards(store, plan_id))
    assert [im.column("image_id").to_pylist() for im, _ in pairs] == [[0, 1], [2, 3], [4]]
    for im, inst in pairs:
        assert set(inst.column("image_id").to_pylist()) <= set(im.column("image_id").to_pylist())
        assert im.schema.equals(IMAGES_SCHEMA) and inst.schema.equals(INSTANCES_SCHEMA)


def test_a_folder_of_parts_without_a_plan_reads_too(tmp_path: Path, output: tuple[str, list[Image]]) -> None:
    uri, _ = output
    full = load_output(uri)
    hand = tmp_path / "hand"
    for kind, table in (("images", full.images), ("instances", full.instances)):
        (hand / kind).mkdir(parents=True)
        pq.write_table(table.slice(0, 3), hand / kind / "shard-000007-x.parquet")
        pq.write_table(table.slice(3), hand / kind / "rest.parquet")
        (hand / kind / "notes.txt").write_text("not a part")
    got = load_output(str(hand), full_instances=False)
    assert got.images.column("image_id").to_pylist() == full.images.column("image_id").to_pylist()
    assert got.instance_parts == {7: ["instances/shard-000007-x.parquet"], -1: ["instances/rest.parquet"]}
    for image_id in range(5):
        assert got.instances_of(image_id).to_pydict() == full.instances_of(image_id).to_pydict()


def test_not_an_output_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path} has no committed images parts: not a bmp-label "
                                                r"output, or not started$"):
        load_output(str(tmp_path))


def test_image_labels_decode_like_pycocotools(output: tuple[str, list[Image]]) -> None:
    uri, images = output
    full = load_output(uri)
    labels = image_labels(full.instances_of(1), 48, 64)
    rows = full.instances_of(1)
    rles = [{"size": s, "counts": c} for s, c in zip(rows.column("mask_rle_size").to_pylist(),
                                                     rows.column("mask_rle_counts").to_pylist(), strict=True)]
    reference = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
    assert labels.masks.shape == (2, 48, 64) and labels.masks.dtype == bool
    assert np.array_equal(labels.masks, reference)
    assert np.array_equal(labels.masks, np.stack([p.mask for p in images[1].people]))
    np.testing.assert_allclose(labels.det_scores, [p.det_score for p in images[1].people], rtol=1e-6)
    np.testing.assert_allclose(labels.pose_scores, [p.pose_score for p in images[1].people], rtol=1e-6)
    assert labels.boxes_xyxy.shape == (2, 4) and labels.keypoints.shape == (2, 17, 3)
    assert labels.iteration.tolist() == [0, 0]
    assert (labels.det_scores.dtype, labels.pose_scores.dtype, labels.iteration.dtype) == (
        np.float32, np.float32, np.int32)
    empty = image_labels(full.instances_of(2), 48, 64)
    assert empty.masks.shape == (0, 48, 64) and empty.boxes_xyxy.shape == (0, 4)


def test_read_image_rgb_is_pillows_upright_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 30, 3), np.uint8)
    im = PILImage.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif)
    (tmp_path / "r.png").write_bytes(buf.getvalue())
    from PIL import ImageOps

    with PILImage.open(tmp_path / "r.png") as ref:
        expected = np.asarray(ImageOps.exif_transpose(ref).convert("RGB"))
    got = read_image_rgb(str(tmp_path / "r.png"))
    assert got.shape == (30, 20, 3) and np.array_equal(got, expected) and got.flags.c_contiguous


def test_parts_from_before_a_nullable_column_read_with_nulls(tmp_path: Path, output: tuple[str, list[Image]]
                                                             ) -> None:
    uri, _ = output
    full = load_output(uri)
    old = full.images.drop_columns(["container_uri"])
    hand = tmp_path / "old"
    (hand / "images").mkdir(parents=True)
    (hand / "instances").mkdir()
    pq.write_table(old, hand / "images" / "p.parquet")
    pq.write_table(full.instances, hand / "instances" / "p.parquet")
    got = load_output(str(hand))
    assert got.images.schema.equals(IMAGES_SCHEMA)
    assert got.images.column("container_uri").null_count == got.images.num_rows
    assert json.dumps(got.images.drop_columns(["container_uri"]).to_pydict()) == json.dumps(old.to_pydict())
    assert isinstance(got.images, pa.Table)
    # Asking for the missing column by name (what a caller of read_table(columns=...) does) reads it as nulls
    # too, instead of failing in pyarrow on the old part.
    store = OutputStore(str(hand))
    named = read_table(store, ["images/p.parquet"], "images", columns=["image_id", "container_uri"])
    assert named.column_names == ["image_id", "container_uri"]
    assert named.column("image_id").to_pylist() == old.column("image_id").to_pylist()
    assert named.column("container_uri").null_count == named.num_rows


def test_an_output_whose_images_have_no_people_yet(tmp_path: Path, output: tuple[str, list[Image]]) -> None:
    """Parts of ``images`` only (a folder of parts without any ``instances``): empty tables of the right
    columns, and no people for any image."""
    uri, _ = output
    full = load_output(uri)
    hand = tmp_path / "no_people"
    (hand / "images").mkdir(parents=True)
    pq.write_table(full.images, hand / "images" / "p.parquet")
    for full_instances, names in ((True, INSTANCES_SCHEMA.names), (False, list(SUMMARY_INSTANCE_COLUMNS))):
        got = load_output(str(hand), full_instances=full_instances)
        assert got.instances.num_rows == 0 and got.instances.column_names == names
        assert got.instances_of(1).num_rows == 0 and got.instances_of(1).schema.equals(INSTANCES_SCHEMA)


def test_parts_of_a_failed_attempt_are_not_read(output: tuple[str, list[Image]]) -> None:
    """Before the end-of-job clean-up, a shard's earlier attempt leaves parts no marker names."""
    from bmp_core.output.tables import ImageRow, images_table

    uri, _ = output
    store = OutputStore(uri)
    before = load_output(uri)
    stale = images_table([ImageRow(0, "/in/0.jpg", error="old attempt"), ImageRow(1, "/in/1.jpg")], shard_id=0)
    store.write_table("images/shard-000000-a0-stale.parquet", stale)
    store.write_table("instances/shard-000000-a0-stale.parquet", INSTANCES_SCHEMA.empty_table())
    got = load_output(uri)
    assert got.images.column("image_id").to_pylist() == list(range(5))  # once each
    assert got.images.to_pydict() == before.images.to_pydict()


@pytest.mark.parametrize("size", [(1, 3), (3, 1)])
def test_read_image_rgb_reads_any_image_the_job_accepted(tmp_path: Path, size: tuple[int, int]) -> None:
    rgb = np.arange(size[0] * size[1] * 3, dtype=np.uint8).reshape(*size, 3)
    PILImage.fromarray(rgb).save(tmp_path / "thin.png")
    assert np.array_equal(read_image_rgb(str(tmp_path / "thin.png")), rgb)
