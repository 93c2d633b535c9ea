"""Given boxes from COCO results lists and datasets, matched to images by file name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bmp_core.io.given_boxes import (
    GivenBoxes,
    GivenBoxesError,
    GivenBoxIndex,
    load_given_boxes,
    parse_given_boxes,
)

IMAGES = [
    {"id": 7, "file_name": "a.jpg"},
    {"id": 9, "file_name": "sub/b.jpg"},
    {"id": 11, "file_name": "c.jpg"},
]


def test_results_list_with_images_mapping_xywh_to_xyxy_and_score_thr() -> None:
    results = [
        {"image_id": 7, "bbox": [10, 20, 30, 40], "score": 0.9, "category_id": 1},
        {"image_id": 7, "bbox": [0, 0, 5, 5], "score": 0.1, "category_id": 1},
        {"image_id": 9, "bbox": [1, 2, 3, 4], "score": 0.5, "category_id": 1},
        {"image_id": 9, "bbox": [1, 2, 3, 4], "score": 0.99, "category_id": 18},  # a dog
    ]
    boxes = parse_given_boxes(results, {im["id"]: im["file_name"] for im in IMAGES}, score_thr=0.5)
    np.testing.assert_array_equal(boxes["a.jpg"].boxes_xyxy, [[10, 20, 40, 60]])
    np.testing.assert_array_equal(boxes["a.jpg"].scores, np.float32([0.9]))
    np.testing.assert_array_equal(boxes["sub/b.jpg"].boxes_xyxy, [[1, 2, 4, 6]])
    np.testing.assert_array_equal(boxes["sub/b.jpg"].scores, np.float32([0.5]))  # score >= thr is kept
    empty = boxes["c.jpg"]  # known, nobody in it
    assert empty.boxes_xyxy.shape == (0, 4) and empty.scores.shape == (0,)
    assert empty.boxes_xyxy.dtype == empty.scores.dtype == np.float32
    both = parse_given_boxes(results, {7: "a.jpg", 9: "b.jpg"}, category_id=None)["b.jpg"]
    assert both.boxes_xyxy.shape == (2, 4)
    np.testing.assert_array_equal(both.scores, np.float32([0.5, 0.99]))  # file order, boxes and scores aligned


def test_dataset_skips_crowd_and_names_its_own_images() -> None:
    dataset = {
        "images": IMAGES,
        "annotations": [
            {"image_id": 11, "bbox": [0, 0, 10, 10], "category_id": 1, "iscrowd": 0},
            {"image_id": 11, "bbox": [5, 5, 10, 10], "category_id": 1, "iscrowd": 1},
        ],
    }
    boxes = parse_given_boxes(dataset)
    boxes_xyxy, scores = boxes["c.jpg"]
    np.testing.assert_array_equal(boxes_xyxy, [[0, 0, 10, 10]])
    np.testing.assert_array_equal(scores, [1.0])  # ground truth has no score: 1.0
    assert boxes["a.jpg"].boxes_xyxy.shape == (0, 4)


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(GivenBoxesError, match="images_json_path"):
        parse_given_boxes([{"image_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(GivenBoxesError, match="no 'bbox'"):
        parse_given_boxes([{"image_id": 3}], {3: "x.jpg"})
    with pytest.raises(GivenBoxesError, match="results list"):
        parse_given_boxes({"foo": 1})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GivenBoxesError, match="not valid JSON"):
        load_given_boxes(str(bad))
    # file_name on the entry itself needs no mapping
    assert parse_given_boxes([{"file_name": "z.jpg", "bbox": [0, 0, 2, 2]}])["z.jpg"].boxes_xyxy.shape == (1, 4)


def test_load_from_files_and_lookup_by_uri(tmp_path: Path) -> None:
    (tmp_path / "gt.json").write_text(json.dumps({"images": IMAGES, "annotations": []}))
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": 9, "bbox": [0, 0, 4, 4], "score": 1.0}]))
    boxes = load_given_boxes(str(tmp_path / "dets.json"), images_json_path=str(tmp_path / "gt.json"))
    other = GivenBoxes(np.zeros((3, 4), np.float32), np.full(3, 0.5, np.float32))
    index = GivenBoxIndex({**boxes, "other/b.jpg": other})
    assert len(index) == 4
    found = index.lookup("s3://bucket/x/sub/b.jpg")
    np.testing.assert_array_equal(found.boxes_xyxy, [[0, 0, 4, 4]])
    np.testing.assert_array_equal(found.scores, [1.0])
    assert index.lookup("/data/other/b.jpg") is other  # the longer matching suffix wins
    # The one file-name rule (shared with eval): every component of the file_name must match.
    assert index.lookup("/data/third/b.jpg") is None
    assert index.lookup("/data/a.jpg").boxes_xyxy.shape == (0, 4)
    assert index.lookup("/data/unknown.jpg") is None


def test_shared_coco_testdata(testdata: Path) -> None:
    coco = testdata / "coco"
    dets = load_given_boxes(
        str(coco / "test_coco_det_AP_H_56.json"), images_json_path=str(coco / "test_coco.json")
    )
    gt = load_given_boxes(str(coco / "test_coco.json"))
    assert sum(len(b.boxes_xyxy) for b in dets.values()) == 118
    assert sum(len(b.boxes_xyxy) for b in gt.values()) == 14
    raw = json.loads((coco / "test_coco_det_AP_H_56.json").read_text())
    all_scores = np.concatenate([b.scores for b in dets.values()])
    np.testing.assert_allclose(np.sort(all_scores), np.sort(np.float32([d["score"] for d in raw])))
    assert all(np.all(b.scores == 1.0) for b in gt.values())
    names = {"000000000785.jpg", "000000040083.jpg", "000000196141.jpg", "000000197388.jpg"}
    assert set(dets) == set(gt) == names
