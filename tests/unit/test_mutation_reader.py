"""The output reader's edges that mutation testing (scripts/mutation.sh) found unchecked, checked against
pyarrow reading the part files, pycocotools decoding the masks and PIL decoding the images: summary
loads with per-image reads, outputs without markers, parts from before a nullable column existed,
per-shard iteration, label arrays, and reading an input image back."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage
from pycocotools import mask as mask_utils

from bmp_core.output import layout
from bmp_core.output.plan import read_plan
from bmp_core.output.reader import (
    SUMMARY_INSTANCE_COLUMNS,
    committed_parts,
    image_labels,
    iter_shards,
    load_output,
    read_image_rgb,
    read_table,
)
from bmp_core.output.store import OutputStore
from bmp_core.output.tables import IMAGES_SCHEMA, INSTANCES_SCHEMA
from tests.export_fixtures import Image, Person, box_mask, write_output


def _output(tmp_path: Path) -> str:
    """Five images over three shards: people in images 0, 2 and 4 (two in 4), an error image 3."""
    m = lambda *box: box_mask(48, 64, *box)  # noqa: E731
    images = [Image("a.jpg", people=[Person(m(2, 3, 20, 30))]), Image("b.jpg"),
              Image("c.jpg", people=[Person(m(10, 10, 40, 40), det_score=0.5)]), Image("d.jpg", error="unreadable"),
              Image("e.jpg", people=[Person(m(0, 0, 8, 8), pose_score=0.3), Person(m(30, 5, 60, 45), sam_score=None)])]
    return write_output(str(tmp_path / "out"), images, shard_size=2)


def _parts(uri: str, kind: str) -> pa.Table:
    """Every part of one table, read by pyarrow alone, in image order."""
    folder = Path(uri) / kind
    table = pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))])
    return table.sort_by([("image_id", "ascending")] + ([("instance_id", "ascending")] if kind == "instances" else []))


def test_a_summary_load_reads_one_images_people_from_its_shard(tmp_path: Path) -> None:
    uri = _output(tmp_path)
    full, summary = load_output(uri), load_output(uri, full_instances=False)
    assert summary.instances.column_names == list(SUMMARY_INSTANCE_COLUMNS)
    assert full.instances.equals(_parts(uri, "instances").cast(INSTANCES_SCHEMA))
    assert summary.images.equals(full.images) and summary.images.column("image_id").to_pylist() == [0, 1, 2, 3, 4]
    for image_id in range(5):
        assert summary.instances_of(image_id).equals(full.instances_of(image_id)), image_id
    assert full.instances_of(4).column("instance_id").to_pylist() == [0, 1]
    assert summary.instances_of(99).num_rows == 0 and summary.instances_of(99).schema == INSTANCES_SCHEMA
    assert full.ok_image_ids() == [0, 1, 2, 4]


def test_an_output_without_markers_reads_every_part(tmp_path: Path) -> None:
    uri = _output(tmp_path)
    store = OutputStore(uri)
    assert committed_parts(store) is not None
    (Path(uri) / layout.PLAN_JSON).unlink()  # a hand-made output: no plan, so no markers to follow
    assert committed_parts(store) is None
    job = load_output(uri, full_instances=False)
    assert job.images.column("image_id").to_pylist() == [0, 1, 2, 3, 4]
    assert job.instances_of(4).equals(load_output(uri).instances_of(4))
    assert job.run_info is None and job.eval_info is None
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path}/empty has no committed images parts"):
        load_output(str(tmp_path / "empty"))


def test_parts_from_before_a_nullable_column_read_with_nulls(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    old = pa.table({f.name: pa.array(["x"] if pa.types.is_string(f.type) else [1], f.type)
                    for f in IMAGES_SCHEMA if f.name not in ("container_uri", "key")})
    store.write_bytes("images/old.parquet", _parquet_bytes(old))
    table = read_table(store, ["images/old.parquet"], "images")
    assert table.schema == IMAGES_SCHEMA
    assert table.column("container_uri").to_pylist() == [None] and table.column("key").to_pylist() == [None]
    assert read_table(store, ["images/old.parquet"], "images", ["uri", "image_id"]).to_pylist() == [
        {"uri": "x", "image_id": 1}]
    empty = read_table(store, [], "instances", ["image_id", "det_score"])
    assert empty.num_rows == 0 and empty.schema == pa.schema([INSTANCES_SCHEMA.field("image_id"),
                                                              INSTANCES_SCHEMA.field("det_score")])


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_shards_are_iterated_in_order_with_their_people(tmp_path: Path) -> None:
    uri = _output(tmp_path)
    store = OutputStore(uri)
    plan_id = read_plan(store).plan_id
    shards = list(iter_shards(store, plan_id))
    assert [images.column("image_id").to_pylist() for images, _ in shards] == [[0, 1], [2, 3], [4]]
    instances = _parts(uri, "instances").cast(INSTANCES_SCHEMA)
    for images, people in shards:
        assert images.schema == IMAGES_SCHEMA and people.schema == INSTANCES_SCHEMA
        ids = images.column("image_id")
        assert people.equals(instances.filter(pc.is_in(instances.column("image_id"), ids)))


def test_label_arrays_match_pycocotools(tmp_path: Path) -> None:
    job = load_output(_output(tmp_path))
    rows = job.instances_of(4)
    labels = image_labels(rows, 48, 64)
    assert labels.boxes_xyxy.dtype == np.float32 and labels.boxes_xyxy.shape == (2, 4)
    assert labels.keypoints.shape == (2, 17, 3) and labels.keypoints.dtype == np.float32
    assert labels.det_scores.dtype == labels.pose_scores.dtype == np.float32 and labels.iteration.dtype == np.int32
    np.testing.assert_allclose(labels.pose_scores, [0.3, 0.8])
    for k, (counts, size) in enumerate(zip(rows.column("mask_rle_counts").to_pylist(),
                                           rows.column("mask_rle_size").to_pylist(), strict=True)):
        reference = mask_utils.decode({"size": size, "counts": counts.encode()}).astype(bool)
        np.testing.assert_array_equal(labels.masks[k], reference)
    none = image_labels(job.instances_of(1), 48, 64)
    assert none.masks.shape == (0, 48, 64) and none.boxes_xyxy.shape == (0, 4)


def test_an_input_image_is_read_back_as_pil_decodes_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 5, 3), np.uint8)  # tiny: under any job's minimum side, read back all the same
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, "PNG")
    (tmp_path / "x.png").write_bytes(buf.getvalue())
    got = read_image_rgb(str(tmp_path / "x.png"))
    np.testing.assert_array_equal(got, np.asarray(PILImage.open(tmp_path / "x.png").convert("RGB")))
    assert got.flags["C_CONTIGUOUS"]
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        info = tarfile.TarInfo("m/x.png")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    np.testing.assert_array_equal(read_image_rgb(f"{tmp_path / 's.tar'}#m/x.png"), rgb)


def test_people_are_read_from_memory_or_from_their_shard_only(tmp_path: Path) -> None:
    """A summary load reads one image's people from that image's shard alone; a full load from memory."""
    uri = _output(tmp_path)
    full, summary = load_output(uri), load_output(uri, full_instances=False)
    expected = {i: full.instances_of(i) for i in range(5)}
    # Shard 2 (image 4) loses its instances part: images 0 to 3 still read; a full load needs no part.
    (part,) = [p for p in (Path(uri) / "instances").glob("*.parquet") if "shard-000002" in p.name]
    part.unlink()
    for i in range(4):
        assert summary.instances_of(i).equals(expected[i]), i
    for p in (Path(uri) / "instances").glob("*.parquet"):
        p.unlink()
    assert all(full.instances_of(i).equals(expected[i]) for i in range(5))


def test_only_committed_parts_and_the_summaries_are_read(tmp_path: Path) -> None:
    uri = _output(tmp_path)
    stray = pa.table({f.name: pa.array(["x"] if pa.types.is_string(f.type) else [99], f.type) for f in IMAGES_SCHEMA})
    (Path(uri) / "images" / "shard-000000-crashed.parquet").write_bytes(_parquet_bytes(stray))  # no marker names it
    store = OutputStore(uri)
    store.write_json(layout.RUN_JSON, {"num_images": 5})
    store.write_json(layout.EVAL_JSON, {"AP": 0.5})
    job = load_output(uri)
    assert job.images.column("image_id").to_pylist() == [0, 1, 2, 3, 4]
    assert job.run_info == {"num_images": 5} and job.eval_info == {"AP": 0.5}


def test_a_summary_load_does_not_read_masks_or_keypoints(tmp_path: Path) -> None:
    """Damaged mask and keypoint columns do not stop a summary load (only its columns are fetched)."""
    uri = _output(tmp_path)
    for part in (Path(uri) / "instances").glob("*.parquet"):
        meta = pq.ParquetFile(part).metadata
        data = bytearray(part.read_bytes())
        for name in ("mask_rle_counts", "keypoints"):
            chunk = next(meta.row_group(0).column(c) for c in range(meta.num_columns)
                         if meta.row_group(0).column(c).path_in_schema.split(".")[0] == name)
            start = min(o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o)
            data[start:start + 16] = b"\xff" * 16
        part.write_bytes(bytes(data))
    with pytest.raises((OSError, pa.ArrowException)):
        load_output(uri)  # every column: fails on the damaged ones ...
    summary = load_output(uri, full_instances=False)  # ... the summary columns alone do not
    assert summary.instances.column("image_id").to_pylist() == [0, 2, 4, 4]


def test_tiny_and_large_images_are_read_back(tmp_path: Path) -> None:
    for h, w in ((1, 1), (16, 24)):
        rgb = np.random.default_rng(h).integers(0, 256, (h, w, 3), np.uint8)
        PILImage.fromarray(rgb).save(tmp_path / f"{h}.png")
        np.testing.assert_array_equal(read_image_rgb(str(tmp_path / f"{h}.png")), rgb)


def test_label_arrays_carry_visibility_and_presence_as_the_part_holds_them(tmp_path: Path) -> None:
    """``image_labels``' per-keypoint arrays against pyarrow reading the part file: the values of a model that
    predicts them, NaN for one that does not (null), and NaN for every person of a part written before
    the two columns existed, whether ``instances_of`` takes the people from memory or from their part."""
    rng = np.random.default_rng(7)
    vis, pres = rng.uniform(0, 1, 17).astype(np.float32), rng.uniform(0, 1, 17).astype(np.float32)
    people = [Person(box_mask(48, 64, 2, 2, 30, 46), visibility=vis, presence=pres),
              Person(box_mask(48, 64, 34, 2, 62, 46))]  # a model without them: null
    uri = write_output(str(tmp_path / "out"), [Image("a.jpg", people=people)], shard_size=1)
    (part,) = (Path(uri) / "instances").glob("*.parquet")
    raw = pq.read_table(part).sort_by("instance_id")
    for full in (True, False):
        labels = image_labels(load_output(uri, full_instances=full).instances_of(0), 48, 64)
        for name, got in (("keypoint_visibility", labels.keypoint_visibility),
                          ("keypoint_presence", labels.keypoint_presence)):
            stored = raw.column(name).to_pylist()
            assert got.shape == (2, 17) and got.dtype == np.float32 and stored[1] is None
            np.testing.assert_array_equal(got[0], np.asarray(stored[0], np.float32))
            assert np.isnan(got[1]).all()
        np.testing.assert_array_equal(labels.keypoint_visibility[0], vis)
        np.testing.assert_array_equal(labels.keypoint_presence[0], pres)

    hand = tmp_path / "old"  # the same people in a part from before the columns existed
    (hand / "images").mkdir(parents=True)
    (hand / "instances").mkdir()
    pq.write_table(pq.read_table(next((Path(uri) / "images").glob("*.parquet"))), hand / "images" / "p.parquet")
    pq.write_table(raw.drop_columns(["keypoint_visibility", "keypoint_presence"]), hand / "instances" / "p.parquet")
    for full in (True, False):
        old = load_output(str(hand), full_instances=full).instances_of(0)
        assert old.schema.equals(INSTANCES_SCHEMA)
        assert old.column("keypoint_visibility").null_count == old.column("keypoint_presence").null_count == 2
        assert old.column("keypoints").to_pylist() == raw.column("keypoints").to_pylist()
        old_labels = image_labels(old, 48, 64)
        assert np.isnan(old_labels.keypoint_visibility).all() and np.isnan(old_labels.keypoint_presence).all()
        np.testing.assert_array_equal(old_labels.boxes_xyxy, labels.boxes_xyxy)


def test_read_back_applies_no_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image the job accepted with a raised ``max_image_pixels`` reads back: the decoder's default limit
    (100 Mpixel, lowered here to 100 pixels so a small image is "too big") is not applied, while the
    decoder itself still refuses the image at that limit."""
    from bmp_core.io import images
    from bmp_core.io.images import ImageDecodeError

    monkeypatch.setattr(images.decode_image_bgr, "__defaults__", (100, images.DEFAULT_MIN_SIDE))
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(tmp_path / "big.png")
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        images.decode_image_bgr((tmp_path / "big.png").read_bytes())
    assert np.array_equal(read_image_rgb(str(tmp_path / "big.png")), rgb)
