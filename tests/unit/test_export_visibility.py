"""Per-keypoint visibility in the exports (BMP v2): v = 2 visible, 1 present but occluded, 0 absent or
unconfident, read back by pycocotools (COCO, Label Studio's review COCO), the documented YOLO pose line
format and the Label Studio tasks; a run without visibility keeps v in {0, 2}."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bmp_core.output.export.policy import ExportPolicy, PolicyError
from bmp_core.output.export.run import ExportOptions, export_output
from bmp_core.output.reader import load_output
from jobs.cli import main
from tests.export_fixtures import Image, Person, box_mask, default_keypoints, write_output

H, W = 48, 64
SCORE = np.array([0.9] * 12 + [0.2, 0.2, 0.9, 0.9, 0.9], np.float32)  # 12, 13: below keypoint_thr 0.3
VIS = np.array([0.95, 0.5, 0.49, 0.1] + [0.8] * 13, np.float32)
PRES = np.array([0.9] * 14 + [0.49, 0.5, 0.9], np.float32)  # 14: absent (presence < 0.5)
# By hand, with keypoint_thr 0.3, visibility_thr 0.5, presence_thr 0.5 (all "at or above" pass):
WANT_V = np.array([2, 2, 1, 1] + [2] * 8 + [0, 0, 0, 2, 2])


def _keypoints(mask: np.ndarray) -> np.ndarray:
    kp = default_keypoints(mask)
    kp[:, 2] = SCORE
    return kp


@pytest.fixture()
def output(tmp_path: Path) -> str:
    m1, m2 = box_mask(H, W, 2, 2, 30, 46), box_mask(H, W, 34, 2, 62, 46)
    v2_person = Person(m1, keypoints=_keypoints(m1), visibility=VIS, presence=PRES)
    v1_person = Person(m2, keypoints=_keypoints(m2))  # a model without visibility: null columns
    return write_output(str(tmp_path / "out"), [Image(str(tmp_path / "a.png"), W, H, people=[v2_person, v1_person])],
                        shard_size=1)


def test_the_instances_table_reads_back_visibility_and_nulls(output: str) -> None:
    job = load_output(output)
    rows = job.instances_of(0)
    assert rows.column("keypoint_visibility").null_count == 1  # the v1 person
    np.testing.assert_allclose(rows.column("keypoint_visibility")[0].as_py(), VIS)
    np.testing.assert_allclose(rows.column("keypoint_presence")[0].as_py(), PRES)


def test_coco_export_writes_visible_occluded_and_absent(output: str, tmp_path: Path) -> None:
    manifest = export_output(output, str(tmp_path / "c"), "coco", ExportPolicy())
    coco = COCO(str(tmp_path / "c" / "train.json"))
    anns = sorted(coco.loadAnns(coco.getAnnIds()), key=lambda a: a["bbox"][0])
    v2, v1 = (np.array(a["keypoints"], float).reshape(17, 3) for a in anns)
    np.testing.assert_array_equal(v2[:, 2], WANT_V)
    assert anns[0]["num_keypoints"] == int((WANT_V > 0).sum()) == 14
    assert (v2[WANT_V == 0] == 0).all() and (v2[WANT_V > 0, :2] > 0).all()
    # without visibility: v = 2 at or above keypoint_thr, else 0, exactly as before
    np.testing.assert_array_equal(v1[:, 2], np.where(SCORE >= 0.3, 2, 0))
    assert anns[1]["num_keypoints"] == 15
    recorded = json.loads((tmp_path / "c" / "export.json").read_text())["policy"]
    assert recorded["keypoint_visibility_thr"] == 0.5 and recorded["keypoint_presence_thr"] == 0.5
    assert manifest is not None
    # pycocotools' OKS evaluation counts v = 1 and v = 2 alike as labeled: the export evaluated against
    # itself is perfect, and dropping the occluded keypoints (v = 1 -> 0) changes num_keypoints only
    dets = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0} for a in anns]
    ev = COCOeval(coco, coco.loadRes(dets), "keypoints")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_thresholds_move_keypoints_between_flags(output: str, tmp_path: Path) -> None:
    export_output(output, str(tmp_path / "t"), "coco",
                  ExportPolicy(keypoint_visibility_thr=0.96, keypoint_presence_thr=0.0))
    coco = COCO(str(tmp_path / "t" / "train.json"))
    ann = min(coco.loadAnns(coco.getAnnIds()), key=lambda a: a["bbox"][0])
    v = np.array(ann["keypoints"]).reshape(17, 3)[:, 2]
    np.testing.assert_array_equal(v, np.where(SCORE >= 0.3, 1, 0))  # nothing visible enough; none absent
    with pytest.raises(PolicyError, match="keypoint_visibility_thr"):
        ExportPolicy(keypoint_visibility_thr=1.5)


def test_yolo_pose_and_label_studio_carry_the_flags(output: str, tmp_path: Path) -> None:
    export_output(output, str(tmp_path / "y"), "yolo-pose", ExportPolicy(), ExportOptions(link="list"))
    (label_file,) = (tmp_path / "y" / "labels" / "train").glob("*.txt")
    rows = sorted((np.array(line.split(), float) for line in label_file.read_text().splitlines()),
                  key=lambda r: r[1])
    np.testing.assert_array_equal(rows[0][5:].reshape(17, 3)[:, 2], WANT_V)
    np.testing.assert_array_equal(rows[1][5:].reshape(17, 3)[:, 2], np.where(SCORE >= 0.3, 2, 0))

    export_output(output, str(tmp_path / "ls"), "label-studio", ExportPolicy(), ExportOptions(review=1))
    (task,) = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    shown = [r["id"] for r in task["predictions"][0]["result"] if r["type"] == "keypointlabels"]
    first = sorted({r.split("_kp")[0] for r in shown})[0]
    assert sorted(int(r.split("_kp")[1]) for r in shown if r.startswith(first + "_kp")) == \
        np.flatnonzero(WANT_V > 0).tolist()  # v = 1 shown, v = 0 not
    review = COCO(str(tmp_path / "ls" / "review_coco.json"))
    ann = min(review.loadAnns(review.getAnnIds()), key=lambda a: a["bbox"][0])
    np.testing.assert_array_equal(np.array(ann["keypoints"]).reshape(17, 3)[:, 2], WANT_V)


def test_cli_export_options_are_recorded(output: str, tmp_path: Path) -> None:
    assert main(["export", output, "--format", "coco", "--to", str(tmp_path / "x"), "--keypoint-visibility-thr",
                 "0.9", "--keypoint-presence-thr", "0.2", "--no-progress"]) == 0
    policy = json.loads((tmp_path / "x" / "export.json").read_text())["policy"]
    assert policy["keypoint_visibility_thr"] == 0.9 and policy["keypoint_presence_thr"] == 0.2
    coco = COCO(str(tmp_path / "x" / "train.json"))
    ann = min(coco.loadAnns(coco.getAnnIds()), key=lambda a: a["bbox"][0])
    want = np.where(SCORE >= 0.3, np.where(VIS >= 0.9, 2, 1), 0)
    np.testing.assert_array_equal(np.array(ann["keypoints"]).reshape(17, 3)[:, 2], want)


def test_coco_keypoints_without_flags_are_the_policys_flags_for_a_model_without_visibility() -> None:
    """``bmp_core.output.coco.coco_keypoints`` called without flags (its public form) labels exactly what
    the export policy labels for a model that predicts neither presence nor visibility (v = 2 at or above
    ``keypoint_thr``, the threshold itself included, else 0, 0, 0)."""
    from bmp_core.output.coco import coco_keypoints
    from bmp_core.output.export.policy import keypoint_flags

    rng = np.random.default_rng(3)
    keypoints = np.concatenate([rng.uniform(1, 60, (4, 17, 2)), rng.choice([0.1, 0.5, 0.75], (4, 17, 1))],
                               axis=2).astype(np.float32)
    keypoints[0, :, 2] = 0.5  # all exactly at the threshold
    unknown = np.full((4, 17), np.nan, np.float32)
    flags = keypoint_flags(keypoints, unknown, unknown, ExportPolicy(keypoint_thr=0.5))
    assert set(np.unique(flags)) == {0, 2} and (flags[0] == 2).all()
    want51, want_count = coco_keypoints(keypoints, 0.5, flags)
    got51, got_count = coco_keypoints(keypoints, 0.5)
    np.testing.assert_array_equal(got51, want51)
    np.testing.assert_array_equal(got_count, want_count)
    np.testing.assert_array_equal(got51.reshape(4, 17, 3)[:, :, 2], flags)
    np.testing.assert_array_equal(got51.reshape(4, 17, 3)[flags == 0], 0.0)
