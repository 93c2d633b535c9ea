"""``eval``'s keypoint visibility score (AP of visible v=2 over occluded v=1 by predicted visibility, on
OKS-matched people), checked against a brute-force AP; and OCHuman-Pose evaluated like OCHuman."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from bmp_core.analysis.evaluation import EvaluationResult, box_oks_scale, evaluate_output, format_table, is_ochuman_pose
from bmp_core.analysis.visibility import average_precision
from bmp_core.output.tables import INSTANCES_SCHEMA
from bmp_core.testing.fakes import _TEMPLATE_XY
from tests.unit.test_evaluation import gt_as_output


def brute_force_ap(scores: list[float], positive: list[bool]) -> float:
    """Sum over distinct thresholds t (high to low) of (recall(t) - recall(previous t)) * precision(t)."""
    total = sum(positive)
    ap, last_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        picked = [p for s, p in zip(scores, positive, strict=True) if s >= t]
        recall = sum(picked) / total
        ap += (recall - last_recall) * (sum(picked) / len(picked))
        last_recall = recall
    return ap


def test_average_precision_by_hand_and_brute_force() -> None:
    # visible .9, occluded .8, visible .7, occluded .6: precision 1 at recall .5, 2/3 at recall 1
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0], bool)) == pytest.approx(5 / 6)
    # ties enter together: {.5 visible, .5 occluded} first -> precision 1/2 at recall 1
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0], bool)) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.choice([0.1, 0.2, 0.5, 0.7, 0.9, 1.0], 30)
        positive = rng.uniform(size=30) < 0.6
        if positive.any():
            assert average_precision(scores, positive) == pytest.approx(
                brute_force_ap(scores.tolist(), positive.tolist()))


def _person(x: float, y: float, w: float, h: float, v: np.ndarray) -> dict[str, Any]:
    xy = np.array([x, y]) + _TEMPLATE_XY * np.array([w, h])
    kpts = np.concatenate([xy, v[:, None]], axis=1)
    kpts[v == 0, :2] = 0
    return {"bbox": [x, y, w, h], "area": 0.25 * w * h, "iscrowd": 0, "category_id": 1,
            "keypoints": kpts.reshape(-1).tolist(), "num_keypoints": int((v > 0).sum()),
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def _gt() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    images = [{"id": 10 + i, "file_name": f"im{i}.jpg", "width": 640, "height": 480} for i in range(2)]
    boxes = [(20, 30, 120, 300), (300, 40, 140, 320), (100, 60, 110, 280)]
    anns = []
    for k, (image_id, box) in enumerate(zip([10, 10, 11], boxes, strict=True)):
        v = rng.choice([1, 2, 2], 17)
        v[k] = 0  # one unlabeled keypoint each
        anns.append({"id": k + 1, "image_id": image_id, **_person(*box, v)})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(17)]}]}


def _with_visibility(output: Any, visibility: np.ndarray) -> Any:
    table = output.instances
    i = table.column_names.index("keypoint_visibility")
    column = pa.FixedSizeListArray.from_arrays(pa.array(visibility.reshape(-1).astype(np.float32)), 17)
    table = table.set_column(i, INSTANCES_SCHEMA.field("keypoint_visibility"), column)
    return type(output)(output.uri, output.images, table, None, None)


def test_visibility_ap_on_oks_matched_people_equals_brute_force() -> None:
    gt = _gt()
    rng = np.random.default_rng(2)

    def jittered(ann: dict[str, Any]) -> np.ndarray:
        kpts = np.asarray(ann["keypoints"], np.float64).reshape(17, 3).copy()
        x, y, w, h = ann["bbox"]
        kpts[:, :2] = np.where(kpts[:, 2:] > 0, kpts[:, :2], [x + w / 2, y + h / 2]) + rng.normal(0, 2, (17, 2))
        kpts[:, 2] = 0.9
        return kpts

    base = gt_as_output(gt, keypoints_of=jittered)
    v_gt = np.array([np.asarray(a["keypoints"]).reshape(17, 3)[:, 2] for a in gt["annotations"]])
    # predicted visibility: informative but imperfect, with ties
    vis = np.clip(np.where(v_gt == 2, 0.7, 0.4) + rng.choice([-0.35, 0.0, 0.2], v_gt.shape), 0, 1)
    result = evaluate_output(_with_visibility(base, vis), gt, iou_types=("keypoints",))
    labeled = v_gt > 0
    want = brute_force_ap(vis[labeled].tolist(), (v_gt[labeled] == 2).tolist())
    got = result.visibility
    assert got.ap == pytest.approx(want)
    assert got.num_people == 3 and got.num_keypoints == int(labeled.sum())
    assert got.num_occluded == int((v_gt == 1).sum())
    assert "keypoint visibility: AP" in format_table(result)
    assert EvaluationResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result  # eval.json keeps it
    from bmp_core.analysis.report import evaluation_section

    assert f"keypoint visibility: AP {want:.3f}" in evaluation_section(result.to_dict())  # the report shows it too

    # a person predicted far from everyone is matched to nobody: its visibility does not count
    moved = copy.deepcopy(gt)
    moved["annotations"][2]["keypoints"] = (np.asarray(moved["annotations"][2]["keypoints"]).reshape(17, 3)
                                            + [400, 150, 0]).reshape(-1).tolist()
    moved["annotations"][2]["bbox"][0] += 400
    result = evaluate_output(_with_visibility(base, vis), moved, iou_types=("keypoints",))
    two = labeled[:2]
    assert result.visibility.num_people == 2
    assert result.visibility.ap == pytest.approx(brute_force_ap(vis[:2][two].tolist(),
                                                                      (v_gt[:2][two] == 2).tolist()))
    # no predicted visibility (MaskPose, v1 outputs): not computed, no line
    plain = evaluate_output(base, gt, iou_types=("keypoints",))
    assert plain.visibility is None and "visibility" not in format_table(plain)


def test_ochuman_pose_in_coco_format_evaluates_like_ochuman(tmp_path: Path) -> None:
    pytest.importorskip("xtcocotools")
    gt = _gt()
    rng = np.random.default_rng(3)

    def jittered(ann: dict[str, Any]) -> np.ndarray:
        kpts = np.asarray(ann["keypoints"], np.float64).reshape(17, 3).copy()
        kpts[:, :2] += rng.normal(0, 9, (17, 2))
        kpts[:, 2] = 1.0
        return kpts

    output = gt_as_output(gt, keypoints_of=jittered)
    ochuman_style = copy.deepcopy(gt)  # OCHuman's own files: no area -> xtcocotools, 0.53 x box area
    for ann in ochuman_style["annotations"]:
        del ann["area"]
    as_ochuman = evaluate_output(output, ochuman_style, iou_types=("keypoints",))
    assert as_ochuman.oks_scale == "box" and as_ochuman.backend["keypoints"] == "xtcocotools"
    # OCHuman-Pose, COCO format with areas: recognised by name (file or info), scored the same way
    assert is_ochuman_pose(gt, "/data/OCHuman-Pose/ochuman_pose_val.json")
    assert is_ochuman_pose({**gt, "info": {"description": "OCHuman-Pose val"}})
    assert not is_ochuman_pose(gt, "/data/ochuman/test_ochuman.json")  # OCHuman itself: by its missing areas
    by_name = evaluate_output(output, gt, iou_types=("keypoints",), gt_path="ochuman_pose_val.json")
    by_flag = evaluate_output(output, gt, iou_types=("keypoints",), oks_scale="box")
    assert (by_name.overall.stats["keypoints"] == by_flag.overall.stats["keypoints"]
            == as_ochuman.overall.stats["keypoints"])
    # ... which differs from COCO's area scale on the same file under another name
    coco_way = evaluate_output(output, gt, iou_types=("keypoints",))
    assert coco_way.oks_scale == "area" and coco_way.backend["keypoints"] == "pycocotools"
    assert coco_way.overall.stats["keypoints"]["AP"] != pytest.approx(by_name.overall.stats["keypoints"]["AP"])
    assert not box_oks_scale(gt) and box_oks_scale(ochuman_style)

    # the CLI: --oks-scale, and the name of the --gt file
    import pyarrow.parquet as pq

    from jobs.cli_inspect import build_parser

    for kind, table in (("images", output.images), ("instances", output.instances)):
        (tmp_path / "out" / kind).mkdir(parents=True)
        pq.write_table(table, tmp_path / "out" / kind / "shard-000000-a1.parquet")
    gt_file = tmp_path / "OCHuman-Pose_val.json"
    gt_file.write_text(json.dumps(gt))
    args = build_parser().parse_args(["eval", str(tmp_path / "out"), "--gt", str(gt_file), "--iou-types",
                                      "keypoints", "--overall-only"])
    with contextlib.redirect_stdout(io.StringIO()):
        assert args.func(args) == 0
    written = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert written["oks_scale"] == "box"
    assert written["overall"]["keypoints"]["AP"] == pytest.approx(as_ochuman.overall.stats["keypoints"]["AP"])
