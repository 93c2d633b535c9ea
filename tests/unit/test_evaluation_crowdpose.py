"""``bmp-label eval`` on CrowdPose-format ground truth, built here from the COCO test images' GT.

Checked against xtcocotools' own CrowdPose evaluation (``keypoints_crowd`` with its summary, which
re-reads the annotation file for the crowd-index split) and pycocotools with CrowdPose's sigmas,
both run directly on files and predictions this test maps itself.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from bmp_core.analysis.evaluation import (
    CROWDPOSE_KEYPOINTS,
    EvaluationError,
    crowdpose_from_coco17,
    evaluate_output,
    format_table,
    keypoint_layout,
)
from tests.unit.test_evaluation import gt_as_output, gt_keypoints_as_predictions

COCO_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
# mmpose configs/_base_/datasets/crowdpose.py, in its keypoint order (head top and neck last).
CROWDPOSE_SIGMAS = [
    0.079,
    0.079,
    0.072,
    0.072,
    0.062,
    0.062,
    0.107,
    0.107,
    0.087,
    0.087,
    0.089,
    0.089,
    0.079,
    0.079,
]
# One image per split, two in "medium" (CrowdPose: easy < 0.2 <= medium < 0.8 <= hard).
CROWD_INDEX = {785: 0.05, 40083: 0.5, 196141: 0.93, 197388: 0.2}
HEAD, NECK = 12, 13


def to_crowdpose_gt(coco: dict[str, Any]) -> dict[str, Any]:
    """A CrowdPose-format file from COCO GT: 14 keypoints, crowdIndex, no area, no masks.

    Body joints by name; neck = shoulders' midpoint (labeled when both are); head top = the nose moved
    away from the neck by half their distance (labeled when both are): a stand-in a COCO model
    cannot predict, so eval must skip it.
    """
    keep = ("id", "file_name", "width", "height")
    images = [{**{k: im[k] for k in keep}, "crowdIndex": CROWD_INDEX[im["id"]]} for im in coco["images"]]
    category = {
        "supercategory": "person",
        "id": 1,
        "name": "person",
        "keypoints": list(CROWDPOSE_KEYPOINTS),
        "skeleton": [[13, 14], [1, 14], [2, 14]],
    }
    out: dict[str, Any] = {"images": images, "categories": [category], "annotations": []}
    for a in coco["annotations"]:
        k = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
        by_name = dict(zip(COCO_NAMES, k, strict=True))
        kp = np.zeros((14, 3))
        for j, name in enumerate(CROWDPOSE_KEYPOINTS[:12]):
            kp[j] = by_name[name]
        ls, rs, nose = by_name["left_shoulder"], by_name["right_shoulder"], by_name["nose"]
        if ls[2] > 0 and rs[2] > 0:
            kp[NECK] = [*(ls[:2] + rs[:2]) / 2, 2]
            if nose[2] > 0:
                kp[HEAD] = [*(nose[:2] + (nose[:2] - kp[NECK, :2]) / 2), 2]
        out["annotations"].append(
            {
                "id": a["id"],
                "image_id": a["image_id"],
                "category_id": 1,
                "iscrowd": a.get("iscrowd", 0),
                "bbox": a["bbox"],
                "keypoints": kp.reshape(-1).tolist(),
                "num_keypoints": int(np.count_nonzero(kp[:, 2] > 0)),
            }
        )
    return out


def without_head(gt: dict[str, Any]) -> dict[str, Any]:
    """The 13-keypoint file the COCO-17 predictions can be scored on (for the direct evaluations)."""
    gt = copy.deepcopy(gt)
    gt["categories"][0]["keypoints"] = [n for n in CROWDPOSE_KEYPOINTS if n != "head"]
    del gt["categories"][0]["skeleton"]
    for a in gt["annotations"]:
        kp = np.delete(np.asarray(a["keypoints"]).reshape(14, 3), HEAD, axis=0)
        a["keypoints"] = kp.reshape(-1).tolist()
        a["num_keypoints"] = a["num_keypoints"] if np.any(kp[:, 2] > 0) else 0
    return gt


@pytest.fixture(scope="module")
def coco_gt(testdata: Path) -> dict[str, Any]:
    return json.loads((testdata / "coco" / "test_coco.json").read_text())


def test_the_mapping_is_by_joint_name_with_the_neck_between_the_shoulders() -> None:
    rng = np.random.default_rng(0)
    coco = rng.uniform(0, 100, size=(3, 17, 3))
    mapped = crowdpose_from_coco17(coco)
    assert mapped.shape == (3, 13, 3)
    for j, name in enumerate(CROWDPOSE_KEYPOINTS[:12]):
        np.testing.assert_array_equal(mapped[:, j], coco[:, COCO_NAMES.index(name)])
    ls, rs = coco[:, COCO_NAMES.index("left_shoulder")], coco[:, COCO_NAMES.index("right_shoulder")]
    np.testing.assert_allclose(mapped[:, 12, :2], (ls[:, :2] + rs[:, :2]) / 2)
    np.testing.assert_array_equal(mapped[:, 12, 2], np.minimum(ls[:, 2], rs[:, 2]))


def test_perfect_predictions_score_one_in_every_crowd_split(coco_gt: dict[str, Any]) -> None:
    pytest.importorskip("xtcocotools")
    gt = to_crowdpose_gt(coco_gt)
    result = evaluate_output(gt_as_output(coco_gt), gt, iou_types=("keypoints", "bbox"))
    assert result.backend["keypoints"] == "xtcocotools"  # CrowdPose files have no area
    layout = result.keypoint_layout
    assert layout["name"] == "crowdpose" and layout["skipped"] == ["head"] and "neck" in layout["derived"]
    assert layout["split_images"] == {"easy": 1, "medium": 2, "hard": 1}
    stats = result.overall.stats["keypoints"]
    for name in ("AP", "AP50", "AP75", "AR", "AP_easy", "AP_medium", "AP_hard"):
        assert stats[name] == pytest.approx(1.0), name
    assert result.overall.stats["bbox"]["AP"] == pytest.approx(1.0)
    table = format_table(result)
    assert "APeasy" in table and "skipped: head" in table and "easy 1, medium 2, hard 1" in table


def _direct_predictions(output: Any) -> list[dict[str, Any]]:
    """The output's keypoints mapped to the 13 scored CrowdPose joints by this test, as COCO results."""
    kpts = np.stack(output.instances.column("keypoints").to_pylist()).reshape(-1, 17, 3)
    gt_id = {k: im_id for k, im_id in enumerate(sorted(CROWD_INDEX, key=lambda i: i))}
    results = []
    for k, image_id in enumerate(output.instances.column("image_id").to_pylist()):
        by_name = dict(zip(COCO_NAMES, kpts[k], strict=True))
        body = [by_name[n] for n in CROWDPOSE_KEYPOINTS[:12]]
        ls, rs = by_name["left_shoulder"], by_name["right_shoulder"]
        neck = [(ls[0] + rs[0]) / 2, (ls[1] + rs[1]) / 2, min(ls[2], rs[2])]
        results.append(
            {
                "image_id": gt_id[image_id],
                "category_id": 1,
                "score": 1.0,
                "keypoints": np.asarray([*body, neck]).reshape(-1).tolist(),
            }
        )
    return results


def test_jittered_predictions_match_xtcocotools_crowdpose_eval_and_pycocotools(
    coco_gt: dict[str, Any], tmp_path: Path
) -> None:
    pytest.importorskip("xtcocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from xtcocotools.coco import COCO as XtCOCO
    from xtcocotools.cocoeval import COCOeval as XtCOCOeval

    rng = np.random.default_rng(5)

    def jittered(ann: dict[str, Any]) -> np.ndarray:
        kpts = gt_keypoints_as_predictions(ann)
        kpts[:, :2] += rng.normal(0.0, 9.0, size=(17, 2))
        return kpts

    assert [im["id"] for im in coco_gt["images"]] == sorted(CROWD_INDEX)  # gt_as_output's id order
    output = gt_as_output(coco_gt, keypoints_of=jittered)
    gt = to_crowdpose_gt(coco_gt)
    ours = evaluate_output(output, gt, iou_types=("keypoints",), per_iteration=False).overall.stats["keypoints"]
    assert 0.05 < ours["AP"] < 0.95  # the jitter matters: a comparison of real numbers, not of 1s
    direct = _direct_predictions(output)
    sigmas = np.delete(np.asarray(CROWDPOSE_SIGMAS), HEAD)

    # xtcocotools, as mmpose scores CrowdPose: keypoints_crowd, no area, its summary and its split.
    gt13 = without_head(gt)
    (tmp_path / "gt13.json").write_text(json.dumps(gt13))
    with contextlib.redirect_stdout(io.StringIO()):
        xt_gt = XtCOCO(str(tmp_path / "gt13.json"))
        ev = XtCOCOeval(
            xt_gt, xt_gt.loadRes(copy.deepcopy(direct)), "keypoints_crowd", sigmas=sigmas, use_area=False
        )
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard")
    for name, value in zip(names, ev.stats, strict=True):
        assert ours[name] == pytest.approx(value, abs=1e-4), name  # its split APs are rounded to 4 places

    # pycocotools with CrowdPose's sigmas and the area that use_area=False stands for (0.53 x box).
    for a in gt13["annotations"]:
        a["area"] = a["bbox"][2] * a["bbox"][3] * 0.53
    (tmp_path / "gt13_area.json").write_text(json.dumps(gt13))
    splits = {"AP": sorted(CROWD_INDEX), "AP_easy": [785], "AP_medium": [40083, 197388], "AP_hard": [196141]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt13_area.json"))
        dt = coco.loadRes(copy.deepcopy(direct))
        for name, image_ids in splits.items():
            ev = COCOeval(coco, dt, "keypoints")
            ev.params.kpt_oks_sigmas = sigmas
            ev.params.imgIds = image_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            assert ours[name] == pytest.approx(ev.stats[0], abs=1e-12), name


@pytest.mark.parametrize(
    "names",
    [
        [
            "r_ankle",
            "r_knee",
            "r_hip",
            "l_hip",
            "l_knee",
            "l_ankle",
            "pelvis",
            "thorax",
            "upper_neck",
            "head_top",
            "r_wrist",
            "r_elbow",
            "r_shoulder",
            "l_shoulder",
            "l_elbow",
            "l_wrist",
        ],  # MPII's 16
        list(reversed(CROWDPOSE_KEYPOINTS)),  # 14, but not CrowdPose's order
    ],
)
def test_any_other_keypoint_layout_is_a_one_line_error_naming_both(
    coco_gt: dict[str, Any], names: list[str]
) -> None:
    gt = to_crowdpose_gt(coco_gt)
    gt["categories"][0]["keypoints"] = names
    for a in gt["annotations"]:
        a["keypoints"] = [0.0] * (3 * len(names))
    with pytest.raises(EvaluationError) as info:
        evaluate_output(gt_as_output(coco_gt), gt)
    message = str(info.value)
    assert "\n" not in message and f"{len(names)} keypoints" in message
    assert "COCO's 17" in message and "CrowdPose's 14" in message
    assert keypoint_layout(coco_gt).name == "coco"


def test_cli_eval_on_crowdpose_and_on_an_unknown_layout(coco_gt: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("xtcocotools")
    from jobs.cli_inspect import build_parser

    output = gt_as_output(coco_gt)
    for kind, table in (("images", output.images), ("instances", output.instances)):
        (tmp_path / kind).mkdir()
        pq.write_table(table, tmp_path / kind / "shard-000000-a1.parquet")
    gt = to_crowdpose_gt(coco_gt)
    (tmp_path / "crowdpose.json").write_text(json.dumps(gt))
    gt["categories"][0]["keypoints"] = gt["categories"][0]["keypoints"][:10]
    (tmp_path / "other.json").write_text(json.dumps(gt))

    args = build_parser().parse_args(
        ["eval", str(tmp_path), "--gt", str(tmp_path / "crowdpose.json"), "--overall-only"]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        assert args.func(args) == 0
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["overall"]["keypoints"]["AP_hard"] == pytest.approx(1.0)

    args = build_parser().parse_args(["eval", str(tmp_path), "--gt", str(tmp_path / "other.json")])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert args.func(args) == 2
    assert err.getvalue().startswith("error: ground truth has 10 keypoints")
    assert err.getvalue().count("\n") == 1  # one line, no traceback
