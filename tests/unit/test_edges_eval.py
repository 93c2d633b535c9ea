"""Edges of eval: which ground-truth image an output image is, and which score ranks predictions.

The ground truth is built in code (rectangular people with all 17 keypoints labeled), so these tests
run without ``../shared/testdata``; every number is checked against pycocotools' COCOeval run
directly on result lists built here, not through ``bmp_core.analysis.evaluation``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pycocotools import mask as mask_utils

from bmp_core.analysis.evaluation import evaluate_output
from bmp_core.io.image_matching import match_images
from bmp_core.output.reader import JobOutput
from bmp_core.output.tables import IMAGES_SCHEMA, INSTANCES_SCHEMA
from tests.unit.test_evaluation import pycocotools_stats

HEIGHT, WIDTH = 200, 400
# Two people per image in the left half; a "displaced" copy lands in the empty right half.
PEOPLE_XYWH = ((20, 30, 60, 150), (110, 40, 70, 140))
SHIFT_X = 200
# Keypoints in box-normalised coordinates (a standing person).
TEMPLATE = np.array([(0.5, 0.08), (0.45, 0.06), (0.55, 0.06), (0.4, 0.08), (0.6, 0.08), (0.3, 0.22),
                     (0.7, 0.22), (0.2, 0.38), (0.8, 0.38), (0.15, 0.52), (0.85, 0.52), (0.38, 0.55),
                     (0.62, 0.55), (0.38, 0.75), (0.62, 0.75), (0.38, 0.95), (0.62, 0.95)])


def _keypoints_xy(x: float, y: float, w: float, h: float) -> np.ndarray:
    return np.array([x, y]) + TEMPLATE * np.array([w, h])


def _mask(x: int, y: int, w: int, h: int) -> np.ndarray:
    m = np.zeros((HEIGHT, WIDTH), bool)
    m[y: y + h, x: x + w] = True
    return m


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _ground_truth(file_names: tuple[str, ...]) -> dict[str, Any]:
    images, annotations = [], []
    for image_id, name in enumerate(file_names, start=1):
        images.append({"id": image_id, "file_name": name, "width": WIDTH, "height": HEIGHT})
        for x, y, w, h in PEOPLE_XYWH:
            kpts = np.concatenate([_keypoints_xy(x, y, w, h), np.full((17, 1), 2.0)], axis=1)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "bbox": [x, y, w, h], "area": float(w * h), "segmentation": _rle(_mask(x, y, w, h)),
                "keypoints": kpts.reshape(-1).tolist(), "num_keypoints": 17,
            })
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}


class _Prediction:
    """One predicted person: its keypoints, mask and box may each sit on the person or be displaced."""

    def __init__(self, person: tuple[int, int, int, int], pose_on: bool, mask_on: bool,
                 pose_score: float, det_score: float) -> None:
        x, y, w, h = person
        self.keypoints = np.concatenate(
            [_keypoints_xy(x + (0 if pose_on else SHIFT_X), y, w, h), np.full((17, 1), 0.9)], axis=1)
        mx = x + (0 if mask_on else SHIFT_X)
        self.mask = _mask(mx, y, w, h)
        self.box_xyxy = [mx, y, mx + w, y + h]
        self.pose_score, self.det_score = pose_score, det_score


def _predictions() -> list[_Prediction]:
    """Per person: one prediction with the right pose but a wrong mask and box, and one the other
    way round. The pose score trusts the first, the detector score the second: ranked by the pose
    score every keypoint hit comes before every keypoint miss, ranked by the detector score after."""
    out = []
    for k, person in enumerate(PEOPLE_XYWH):
        out.append(_Prediction(person, pose_on=True, mask_on=False, pose_score=0.9 - 0.01 * k, det_score=0.2))
        out.append(_Prediction(person, pose_on=False, mask_on=True, pose_score=0.3, det_score=0.8 - 0.01 * k))
    return out


def _output(uris: list[str], predictions: list[_Prediction]) -> JobOutput:
    n = len(uris)
    images = pa.Table.from_pydict({
        "image_id": list(range(n)), "uri": uris, "status": ["ok"] * n, "error": [None] * n,
        "width": [WIDTH] * n, "height": [HEIGHT] * n, "num_instances": [len(predictions)] * n,
        "read_s": [None] * n, "decode_s": [None] * n, "label_s": [None] * n, "shard_id": [0] * n,
        "container_uri": [None] * n, "key": [None] * n,
    }, schema=IMAGES_SCHEMA)
    cols: dict[str, list[Any]] = {name: [] for name in INSTANCES_SCHEMA.names}
    for image_id in range(n):
        for k, p in enumerate(predictions):
            rle = _rle(p.mask)
            cols["image_id"].append(image_id)
            cols["instance_id"].append(k)
            cols["bbox_xyxy"].append(p.box_xyxy)
            cols["det_score"].append(p.det_score)
            cols["pose_score"].append(p.pose_score)
            cols["sam_score"].append(0.5)
            cols["keypoints"].append(p.keypoints.tolist())
            cols["mask_rle_counts"].append(rle["counts"])
            cols["mask_rle_size"].append(rle["size"])
            cols["mask_area"].append(int(p.mask.sum()))
            cols["mask_bbox_xyxy"].append(p.box_xyxy)
            cols["det_mask_iou"].append(1.0)
            cols["iteration"].append(0)
            cols["prompted"].append(True)
            cols["keypoint_presence"].append(None)
            cols["keypoint_visibility"].append(None)
    return JobOutput("/out", images, pa.Table.from_pydict(cols, schema=INSTANCES_SCHEMA), None, None)


def _direct_stats(gt: dict[str, Any], gt_path: Path, predictions: list[_Prediction], gt_image_ids: list[int],
                  iou_type: str, score: str) -> np.ndarray:
    """COCOeval stats the plain way, each prediction scored by its ``score`` attribute."""
    results = []
    for image_id in gt_image_ids:
        for p in predictions:
            entry: dict[str, Any] = {"image_id": image_id, "category_id": 1, "score": getattr(p, score)}
            if iou_type == "keypoints":
                entry["keypoints"] = p.keypoints.reshape(-1).tolist()
            elif iou_type == "segm":
                entry["segmentation"] = _rle(p.mask)
            else:
                x1, y1, x2, y2 = p.box_xyxy
                entry["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            results.append(entry)
    gt_path.write_text(json.dumps(gt))
    return pycocotools_stats(gt_path, results, iou_type)


@pytest.mark.parametrize(("iou_type", "right", "wrong"), [
    ("keypoints", "pose_score", "det_score"),
    ("segm", "det_score", "pose_score"),
    ("bbox", "det_score", "pose_score"),
])
def test_predictions_are_ranked_by_the_documented_score(tmp_path: Path, iou_type: str, right: str,
                                                        wrong: str) -> None:
    """Keypoints by the pose score, masks and boxes by the detector score (module docstring)."""
    names = ("val2017/000000000001.jpg", "val2017/000000000002.jpg")
    gt = _ground_truth(names)
    predictions = _predictions()
    output = _output([f"/data/coco/{n}" for n in names], predictions)
    result = evaluate_output(output, gt, iou_types=(iou_type,), per_iteration=False)
    assert result.images.matched == 2
    ours = np.array(list(result.overall.stats[iou_type].values()))
    expected = _direct_stats(gt, tmp_path / "gt.json", predictions, [1, 2], iou_type, right)
    otherwise = _direct_stats(gt, tmp_path / "gt.json", predictions, [1, 2], iou_type, wrong)
    assert expected[0] == pytest.approx(1.0)  # every hit ranked before every miss
    assert otherwise[0] < expected[0] - 0.2  # the test can tell the two scores apart
    np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_a_train2017_uri_does_not_match_a_val2017_ground_truth_file() -> None:
    gt_images = [{"id": 1, "file_name": "val2017/000000000001.jpg"},
                 {"id": 2, "file_name": "val2017/000000000002.jpg"},
                 {"id": 3, "file_name": "val2017/000000000003.jpg"}]
    outputs = [(0, "s3://bucket/coco/val2017/000000000001.jpg"),  # the same file
               (1, "s3://bucket/coco/train2017/000000000002.jpg"),  # same name, another split
               (2, "/data/myval2017/000000000003.jpg")]  # "val2017/x.jpg" only as a string suffix
    match = match_images(outputs, gt_images)
    assert match.output_to_gt == {0: 1}
    assert match.missing_in_gt == ["s3://bucket/coco/train2017/000000000002.jpg",
                                   "/data/myval2017/000000000003.jpg"]
    assert match.missing_in_output == ["val2017/000000000002.jpg", "val2017/000000000003.jpg"]
    assert match.ambiguous == []


def test_eval_scores_only_the_images_of_the_same_split() -> None:
    names = ("val2017/000000000001.jpg", "val2017/000000000002.jpg")
    gt = _ground_truth(names)
    # The output holds image 2 from train2017: it is not the ground truth's image 2.
    output = _output(["/data/coco/val2017/000000000001.jpg", "/data/coco/train2017/000000000002.jpg"],
                     _predictions())
    result = evaluate_output(output, gt, iou_types=("segm",), per_iteration=False)
    images = result.images
    assert (images.matched, images.num_missing_in_gt, images.num_missing_in_output) == (1, 1, 1)
    assert images.missing_in_gt == ["/data/coco/train2017/000000000002.jpg"]
    assert result.overall.num_predictions == len(_predictions())  # image 1's predictions only
    assert result.overall.stats["segm"]["AR100"] == pytest.approx(1.0)  # scored on image 1 alone
