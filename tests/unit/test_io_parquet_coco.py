"""Results -> Parquet -> back, and -> COCO JSON that pycocotools reads (the independent check)."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO

from bmp_core.coco_meta import KEYPOINT_NAMES as COCO_KEYPOINT_NAMES
from bmp_core.config import LoopConfig
from bmp_core.loop import run_bmp
from bmp_core.ops.rle import decode_rle
from bmp_core.output.coco import coco_dataset
from bmp_core.output.tables import (
    IMAGES_SCHEMA,
    INSTANCES_SCHEMA,
    ImageRow,
    boxes_array,
    images_table,
    instances_table,
    keypoints_array,
)
from bmp_core.testing import build_fake_models
from bmp_core.testing.images import SYNTHETIC_IMAGES, synthetic_people_bgr


def _roundtrip(table: pa.Table) -> pa.Table:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return pq.read_table(io.BytesIO(buf.getvalue()))


@pytest.fixture(scope="module")
def labeled() -> tuple[list, pa.Table, pa.Table]:
    models = build_fake_models()
    spec = SYNTHETIC_IMAGES[0]  # synthetic: runs without ../shared/testdata
    small = synthetic_people_bgr(spec.height, spec.width, spec.num_people, spec.seed)
    results = [run_bmp(small, models, LoopConfig()), run_bmp(small[:, ::-1].copy(), models, LoopConfig())]
    assert all(len(r.instances) > 0 for r in results)
    inst = _roundtrip(instances_table([7, 9], results))
    h, w = small.shape[:2]
    rows = [ImageRow(7, "/x/a.jpg", width=w, height=h, num_instances=len(results[0].instances)),
            ImageRow(8, "/x/bad.jpg", error="empty file (0 bytes)"),
            ImageRow(9, "/x/b.jpg", width=w, height=h, num_instances=len(results[1].instances))]
    imgs = _roundtrip(images_table(rows, shard_id=0))
    return results, imgs, inst


def test_parquet_round_trip(labeled: tuple[list, pa.Table, pa.Table]) -> None:
    results, imgs, inst = labeled
    assert imgs.schema.equals(IMAGES_SCHEMA) and inst.schema.equals(INSTANCES_SCHEMA)
    assert imgs.column("status").to_pylist() == ["ok", "error", "ok"]
    for image_id, result in zip([7, 9], results, strict=True):
        rows = inst.filter(pa.compute.equal(inst.column("image_id"), image_id))
        expected = result.instances
        assert rows.column("instance_id").to_pylist() == list(range(len(expected)))
        np.testing.assert_array_equal(keypoints_array(rows), expected.keypoints)
        np.testing.assert_array_equal(boxes_array(rows), expected.boxes_xyxy)
        rles = [{"size": s, "counts": c} for c, s in zip(rows.column("mask_rle_counts").to_pylist(),
                                                           rows.column("mask_rle_size").to_pylist(), strict=True)]
        np.testing.assert_array_equal(decode_rle(rles), expected.masks)
        assert rows.column("mask_area").to_pylist() == expected.masks.sum(axis=(1, 2)).tolist()
        sam = rows.column("sam_score").to_pylist()
        assert [s is None for s in sam] == np.isnan(expected.sam_scores).tolist()


def test_empty_results_give_an_empty_table_with_the_schema() -> None:
    assert instances_table([], []).schema.equals(INSTANCES_SCHEMA)


def test_coco_loads_in_pycocotools_and_round_trips(labeled: tuple[list, pa.Table, pa.Table], tmp_path) -> None:
    results, imgs, inst = labeled
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco_dataset(imgs, inst, keypoint_score_thr=0.3)))
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [7, 9]  # the failed image is not a COCO image
    cat = coco.loadCats(coco.getCatIds(catNms=["person"]))[0]
    assert tuple(cat["keypoints"]) == COCO_KEYPOINT_NAMES and len(cat["skeleton"]) == 19
    for image_id, result in zip([7, 9], results, strict=True):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        expected = result.instances
        assert len(anns) == len(expected)
        for ann, k in zip(anns, range(len(expected)), strict=True):
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), expected.masks[k])
            kp = np.array(ann["keypoints"]).reshape(17, 3)
            visible = expected.keypoints[k, :, 2] >= 0.3
            assert (kp[:, 2] == np.where(visible, 2, 0)).all()
            np.testing.assert_allclose(kp[visible, :2], expected.keypoints[k, visible, :2], atol=0.01)
            assert (kp[~visible] == 0).all() and ann["num_keypoints"] == visible.sum()
            assert ann["area"] == expected.masks[k].sum() and ann["iscrowd"] == 0
            ys, xs = np.nonzero(expected.masks[k])
            if len(xs):  # COCO bbox = tight box of the mask (pycocotools' own toBbox agrees)
                np.testing.assert_allclose(ann["bbox"], [xs.min(), ys.min(), xs.max() + 1 - xs.min(),
                                                         ys.max() + 1 - ys.min()], atol=0.01)
            assert ann["score"] == pytest.approx(float(expected.pose_scores[k]))
    # pycocotools can also use it as a results file against itself (evaluation path).
    res = coco.loadRes(coco.dataset["annotations"])
    assert len(res.getAnnIds()) == len(coco.getAnnIds())


def test_streamed_coco_equals_the_in_memory_one(labeled: tuple[list, pa.Table, pa.Table]) -> None:
    from bmp_core.output.coco import CocoCounts, write_coco_json

    _, imgs, inst = labeled
    whole = coco_dataset(imgs, inst)
    # Two parts: image 7 (+ the failed 8), then image 9.
    parts = [(imgs.slice(0, 2), inst.filter(pa.compute.equal(inst.column("image_id"), 7))),
             (imgs.slice(2, 1), inst.filter(pa.compute.equal(inst.column("image_id"), 9)))]
    buf = io.StringIO()
    counts = write_coco_json(buf, lambda: iter(parts))
    streamed = json.loads(buf.getvalue())
    assert streamed == whole
    assert counts == CocoCounts(images=2, annotations=len(whole["annotations"]))
