"""viz / report / export under one policy: what is drawn and counted is what the export keeps.

A scripted output (real PNG photos of flat colour, people given column by column) holds per image a
person that passes the policy, one that fails it with a mask (an ignore region) and one that fails it
with an empty mask (dropped). The export (read back with pycocotools) says who is kept; the viz
pixels and the report's counts must say the same.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pycocotools.coco import COCO

from bmp_core.analysis import viz
from bmp_core.analysis.report import build_report, policy_counts
from bmp_core.output.export.policy import (
    DEFAULT_POLICIES,
    Decision,
    ExportPolicy,
    decide,
)
from bmp_core.output.reader import load_output
from jobs.cli import main
from tests.export_fixtures import Image, Person, box_mask, write_output

H, W = 120, 160
BACKGROUND = (90, 140, 200)  # flat: JPEG keeps it within a few levels away from edges


def _keypoints(x0: int, y0: int, x1: int, y1: int, score: float) -> np.ndarray:
    """17 points on a vertical line in the middle of the box (a skeleton that stays inside it)."""
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = (x0 + x1) / 2
    kp[:, 1] = np.linspace(y0 + 4, y1 - 4, 17)
    kp[:, 2] = score
    return kp


KEPT_BOX = (8, 10, 48, 110)
IGNORED_BOX = (60, 10, 100, 110)
DROPPED_BOX = (112, 10, 152, 110)
PEOPLE = [
    Person(box_mask(H, W, *KEPT_BOX), pose_score=0.9, keypoints=_keypoints(*KEPT_BOX, 0.9)),
    Person(box_mask(H, W, *IGNORED_BOX), pose_score=0.2, keypoints=_keypoints(*IGNORED_BOX, 0.9)),
    Person(np.zeros((H, W), bool), pose_score=0.2, keypoints=_keypoints(*DROPPED_BOX, 0.9),
           box_xyxy=tuple(float(v) for v in DROPPED_BOX)),
]
POLICY_ARGS = ["--min-pose-score", "0.5", "--min-mask-area", "10"]


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("vizpolicy")
    images = []
    for i in range(3):
        path = root / f"photo_{i}.png"
        PILImage.new("RGB", (W, H), BACKGROUND).save(path)
        images.append(Image(str(path), W, H, people=PEOPLE[: 3 - (i == 2)]))  # image 2: no dropped person
    return write_output(str(root / "out"), images, shard_size=2)


def _cli(*argv: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(list(argv)) == 0
    return buf.getvalue()


def _region(box: tuple[int, int, int, int], pad: int = 3) -> tuple[slice, slice]:
    """Inside the box, below the title and its tab (rows < 36) and off its edges."""
    x0, y0, x1, y1 = box
    return slice(max(y0 + pad, 36), y1 - pad), slice(x0 + pad, x1 - pad)


def _changed(picture: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Share of the box's inner pixels that differ from the background by more than JPEG noise."""
    region = picture[_region(box)].astype(np.int16)
    return float((np.abs(region - np.array(BACKGROUND)).max(axis=2) > 12).mean())


def test_viz_draws_the_policys_kept_people_in_colour_and_ignore_regions_grey(output: str, tmp_path: Path) -> None:
    _cli("export", output, "--format", "coco", "--to", str(tmp_path / "coco"), "--no-progress", *POLICY_ARGS)
    coco = COCO(str(tmp_path / "coco" / "train.json"))
    manifest = json.loads((tmp_path / "coco" / "export.json").read_text())
    for ann in coco.loadAnns(coco.getAnnIds()):  # the export keeps the first person, ignores the second
        x, y = ann["bbox"][:2]
        assert (x, y, ann["iscrowd"]) in {(KEPT_BOX[0], KEPT_BOX[1], 0), (IGNORED_BOX[0], IGNORED_BOX[1], 1)}
    assert manifest["counts"]["people"] == {"kept": 3, "ignored": 3, "dropped": 2}

    _cli("viz", output, "--out", str(tmp_path / "viz"), *POLICY_ARGS)
    pictures = sorted((tmp_path / "viz").glob("*.jpg"))
    assert len(pictures) == 3
    for path in pictures:
        picture = np.asarray(PILImage.open(path).convert("RGB"))
        assert _changed(picture, KEPT_BOX) > 0.9  # kept: coloured mask
        inside = picture[_region(IGNORED_BOX)].astype(np.int16)
        assert _changed(picture, IGNORED_BOX) > 0.9  # ignored: hatched ...
        grey = viz.hatch_masks(np.full((H, W, 3), BACKGROUND, np.uint8), box_mask(H, W, *IGNORED_BOX)[None])
        # ... grey (averaged: JPEG blurs the stripes' colour edges) with no skeleton, which would run down
        # the middle column.
        hatched = grey[_region(IGNORED_BOX)].astype(np.float64)
        assert np.abs(inside.mean(axis=(0, 1)) - hatched.mean(axis=(0, 1))).max() < 10
        middle = (IGNORED_BOX[2] - IGNORED_BOX[0]) // 2 - 3
        assert np.abs(inside[:, middle].mean(axis=0) - hatched[:, middle].mean(axis=0)).max() < 12
        assert _changed(picture, DROPPED_BOX) < 0.01  # dropped: nothing (its skeleton would be inside)
        kept = picture[_region(KEPT_BOX)].astype(np.int16)
        assert np.abs(kept - grey[_region(KEPT_BOX)]).mean() > 30  # the kept one is not grey


def test_viz_all_draws_every_person(output: str, tmp_path: Path) -> None:
    _cli("viz", output, "--out", str(tmp_path / "viz"), "--all", "--images", "0", *POLICY_ARGS)
    picture = np.asarray(PILImage.open(next((tmp_path / "viz").glob("*.jpg"))).convert("RGB"))
    colors = viz.person_colors_rgb(3).astype(np.int16)
    for box, color in zip((KEPT_BOX, IGNORED_BOX), colors, strict=False):
        expected = np.rint(0.4 * np.array(BACKGROUND) + 0.6 * color)  # its mask in its own colour
        assert np.abs(np.median(picture[_region(box, 6)].reshape(-1, 3), axis=0) - expected).max() < 8
    x = (DROPPED_BOX[0] + DROPPED_BOX[2]) // 2  # the dropped person's skeleton, in its colour
    column = picture[DROPPED_BOX[1] + 10:DROPPED_BOX[3] - 10, x].astype(np.int16)
    assert (np.abs(column - np.array(BACKGROUND)).max(axis=1) > 40).mean() > 0.9  # drawn over, all along
    assert np.abs(np.median(column, axis=0) - colors[2]).max() < 30  # mostly its colour (dots have dark rims)


def test_draw_decided_is_draw_overlay_of_the_kept_over_hatched_ignore_regions() -> None:
    image = np.full((H, W, 3), BACKGROUND, np.uint8)
    from bmp_core.output.reader import ImageLabels

    masks = np.stack([p.mask for p in PEOPLE])
    labels = ImageLabels(boxes_xyxy=np.array([KEPT_BOX, IGNORED_BOX, DROPPED_BOX], np.float32),
                         keypoints=np.stack([p.keypoints for p in PEOPLE]), masks=masks,
                         det_scores=np.full(3, 0.9, np.float32), pose_scores=np.array([0.9, 0.2, 0.2], np.float32),
                         iteration=np.zeros(3, np.int32))
    keep, ignore = np.array([True, False, False]), np.array([False, True, False])
    out = viz.draw_decided(image, labels, keep, ignore)
    expected = viz.draw_overlay(viz.hatch_masks(image, masks[1:2]), labels.boxes_xyxy[:1], labels.keypoints[:1],
                                masks[:1], labels.det_scores[:1], labels.pose_scores[:1])
    assert np.array_equal(out, expected)
    x0, y0, x1, y1 = DROPPED_BOX
    assert np.array_equal(out[:, x0 - 2:], image[:, x0 - 2:])  # the dropped person: not a pixel


def test_tags_of_identical_boxes_never_overlap_and_are_left_out_when_no_place_is_free() -> None:
    image = np.zeros((200, 300, 3), np.uint8)
    box = np.array([[50.0, 60.0, 150.0, 150.0]], np.float32)
    style = viz.DrawStyle(draw_masks=False, draw_pose=False)
    colors = viz.person_colors_rgb(8)
    outs = [viz.draw_overlay(image, np.repeat(box, n, 0), det_scores=np.full(n, 0.5), style=style,
                             colors_rgb=colors[:n]) for n in (1, 2, 3, 4, 8)]
    # Each tag's own fill: 1st above the box, 2nd inside its top, 3rd below it, 4th inside its bottom.
    bands = [slice(50, 58), slice(63, 70), slice(152, 160), slice(140, 147)]
    for n, out in enumerate(outs[:4], start=1):
        for k in range(n):
            assert (out[bands[k], 53:140] == colors[k]).all(axis=2).sum() > 40, (n, k)
            for other in range(n):
                if other != k:
                    assert not (out[bands[k], 53:140] == colors[other]).all(axis=2).any(), (n, k, other)
    # The 5th..8th have no free place: no tag, and nothing drawn outside the four places and the box.
    changed = np.any(outs[4] != outs[3], axis=2)
    changed[60:150, 50:150] = False  # outlines drawn over each other
    assert not changed.any()


def test_report_counts_equal_export_json_for_the_same_policy(output: str, tmp_path: Path) -> None:
    for name, args in (("default", []), ("given", POLICY_ARGS)):
        _cli("export", output, "--format", "coco", "--to", str(tmp_path / name), "--no-progress", *args)
        counts = json.loads((tmp_path / name / "export.json").read_text())["counts"]
        report = tmp_path / f"{name}.html"
        _cli("report", output, "--samples", "2", "--out", str(report), *args)
        page = report.read_text()
        for key in ("kept", "ignored", "dropped"):
            cell = re.search(rf"<tr><td>{key}</td><td class='num'>(\d+)</td></tr>", page)
            assert cell is not None and int(cell.group(1)) == counts["people"][key], (name, key)
        for reason, ignored in counts["ignored_by_reason"].items():
            dropped = counts["dropped_by_reason"][reason]
            assert f"<tr><td>{reason}</td><td class='num'>{ignored}</td><td class='num'>{dropped}</td></tr>" in page
        assert "kept, " in page and "ignored, " in page  # the samples' captions count by the policy too


def test_export_json_records_the_backend_default_and_what_changed_it(output: str, tmp_path: Path) -> None:
    _cli("export", output, "--format", "coco", "--to", str(tmp_path / "d"), "--no-progress")
    default = json.loads((tmp_path / "d" / "export.json").read_text())
    assert default["policy_source"] == "default:bmp"  # write_output's config: models.kind bmp
    assert default["policy"] == DEFAULT_POLICIES["bmp"].to_dict()
    _cli("export", output, "--format", "coco", "--to", str(tmp_path / "o"), "--no-progress", "--min-pose-score", "0.6")
    changed = json.loads((tmp_path / "o" / "export.json").read_text())
    assert changed["policy_source"] == "default:bmp+options"
    assert changed["policy"] == {**DEFAULT_POLICIES["bmp"].to_dict(), "min_pose_score": 0.6}
    _cli("export", output, "--format", "coco", "--to", str(tmp_path / "p"), "--no-progress",
         "--policy", str(tmp_path / "o" / "export.json"))
    again = json.loads((tmp_path / "p" / "export.json").read_text())
    assert again["policy"] == changed["policy"] and again["policy_source"].startswith("export.json:")


def test_policy_counts_per_image_follow_decide(output: str) -> None:
    policy = ExportPolicy(min_pose_score=0.5, min_mask_area_px=10)
    job = load_output(output)
    counts = policy_counts(job, policy)
    for image_id, _uri, kept, ignored, dropped in counts.per_image:
        d = decide(job.instances_of(image_id), policy).decision
        assert (kept, ignored, dropped) == tuple(int((d == k).sum()) for k in Decision)
    assert "id='policy'" in build_report(job, num_samples=0, policy=policy)


def test_default_policies_are_valid_and_differ_where_scores_differ() -> None:
    assert DEFAULT_POLICIES["bmp-v2"].keypoint_thr == 0.5  # PMPose: predicted OKS, the v2 method's 0.5
    assert DEFAULT_POLICIES["lite"] != DEFAULT_POLICIES["bmp"]
    assert all(p.min_pose_score > 0 for p in DEFAULT_POLICIES.values())  # never "keep everybody"
