"""COCO export geometry and fields as pycocotools reads them: where each box is, which keypoints are
labeled, what an ignore region holds, and the scores a labeling tool shows.

Written for mutation testing of ``bmp_core/output/export/coco.py`` (docs/development.md "Mutation
testing"); the outputs are hand-built (tests/export_fixtures.py) and exported through ``export_output``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from bmp_core.coco_meta import KEYPOINT_NAMES
from bmp_core.output.export.policy import ExportPolicy
from bmp_core.output.export.run import ExportOptions, export_output
from tests.export_fixtures import Image, Person, box_mask, default_keypoints, write_output

H, W = 48, 64


def _export(tmp_path: Path, people: list[Person], policy: ExportPolicy, **options: object) -> COCO:
    src = write_output(str(tmp_path / "out"), [Image("/in/a.jpg", W, H, people=people)], shard_size=4)
    export_output(src, str(tmp_path / "export"), "coco", policy, ExportOptions(**options))  # type: ignore[arg-type]
    return COCO(str(tmp_path / "export" / "train.json"))


def _by_area(coco: COCO) -> list[dict]:
    return sorted(coco.loadAnns(coco.getAnnIds()), key=lambda a: a["area"])


def test_an_empty_mask_keeps_its_detector_box_and_the_others_their_mask_box(tmp_path: Path) -> None:
    mask = box_mask(H, W, 10, 5, 30, 25)
    det = (10.126, 5.333, 40.777, 30.5)  # the detector box differs from the mask's on purpose
    empty = Person(np.zeros((H, W), bool), box_xyxy=det, keypoints=default_keypoints(mask))
    solid = Person(mask, box_xyxy=(0.0, 0.0, 50.0, 40.0))
    coco = _export(tmp_path, [solid, empty], ExportPolicy())
    first, second = _by_area(coco)
    assert first["area"] == 0 and coco.annToMask(first).sum() == 0
    np.testing.assert_allclose(first["bbox"], [det[0], det[1], det[2] - det[0], det[3] - det[1]], atol=0.005)
    assert second["bbox"] == [10, 5, 20, 20]  # the mask's tight box, not the detector's
    assert coco.annToMask(second).astype(bool).tolist() == mask.tolist()


def test_keypoints_at_the_threshold_are_labeled_and_below_it_are_not(tmp_path: Path) -> None:
    mask = box_mask(H, W, 4, 4, 40, 40)
    kp = default_keypoints(mask, 0.5)
    kp[:5, 2] = 0.25  # five below the threshold
    kp[5:8, 2] = 0.75
    coco = _export(tmp_path, [Person(mask, keypoints=kp)], ExportPolicy(keypoint_thr=0.5))
    (ann,) = coco.loadAnns(coco.getAnnIds())
    triples = np.asarray(ann["keypoints"], np.float64).reshape(17, 3)
    assert triples[:5].tolist() == [[0, 0, 0]] * 5
    assert triples[5:, 2].tolist() == [2] * 12 and ann["num_keypoints"] == 12
    np.testing.assert_allclose(triples[5:, :2], kp[5:, :2], atol=0.005)


def test_an_ignore_region_is_a_crowd_without_keypoints(tmp_path: Path) -> None:
    unsure = Person(box_mask(H, W, 2, 2, 20, 20), det_score=0.4, pose_score=0.7, sam_score=0.6)
    sure = Person(box_mask(H, W, 30, 2, 60, 40), det_score=0.9, pose_score=0.8, sam_score=0.95)
    coco = _export(tmp_path, [unsure, sure], ExportPolicy(min_det_score=0.5))
    crowd, kept = _by_area(coco)
    assert (crowd["iscrowd"], crowd["num_keypoints"], crowd["keypoints"]) == (1, 0, [0] * 51)
    assert coco.annToMask(crowd).astype(bool).tolist() == unsure.mask.tolist()
    assert (kept["iscrowd"], kept["num_keypoints"]) == (0, 17)
    for ann, person in ((crowd, unsure), (kept, sure)):
        assert ann["score"] == pytest.approx(person.pose_score, abs=1e-6)
        assert ann["det_score"] == pytest.approx(person.det_score, abs=1e-6)
        assert ann["sam_score"] == pytest.approx(person.sam_score, abs=1e-6)


def test_a_dropped_person_does_not_hide_the_next_one(tmp_path: Path) -> None:
    dropped = Person(np.zeros((H, W), bool), det_score=0.1, box_xyxy=(1.0, 1.0, 5.0, 5.0))  # unsure and empty
    kept = Person(box_mask(H, W, 30, 2, 60, 40))
    coco = _export(tmp_path, [dropped, kept], ExportPolicy(min_det_score=0.5))
    (ann,) = coco.loadAnns(coco.getAnnIds())
    assert coco.annToMask(ann).astype(bool).tolist() == kept.mask.tolist()


def test_the_person_category_and_the_files_head(tmp_path: Path) -> None:
    coco = _export(tmp_path, [Person(box_mask(H, W, 4, 4, 40, 40))], ExportPolicy())
    assert coco.getCatIds() == [1]
    (cat,) = coco.loadCats([1])
    assert cat["name"] == "person" and cat["keypoints"] == list(KEYPOINT_NAMES)
    head = json.loads((tmp_path / "export" / "train.json").read_text())
    assert head["info"]["description"] == "BMP pseudo-labels (bmp-label)" and head["licenses"] == []


def test_polygon_segmentation_fills_back_to_the_mask(tmp_path: Path) -> None:
    ell = box_mask(H, W, 5, 5, 15, 40) | box_mask(H, W, 5, 30, 40, 40)  # not convex
    tiny = box_mask(H, W, 50, 2, 51, 3)  # one pixel
    yy, xx = np.mgrid[:H, :W]
    disk = (yy - 24) ** 2 + (xx - 50) ** 2 <= 8**2  # curved: any simplification loses pixels
    empty = np.zeros((H, W), bool)  # no polygon: its (empty) RLE stays
    coco = _export(tmp_path, [Person(ell), Person(tiny), Person(disk), Person(empty, box_xyxy=(1.0, 1.0, 4.0, 4.0))],
                   ExportPolicy(), coco_segmentation="polygon", polygon_tolerance_px=0.0)
    nothing, small, round_, large = _by_area(coco)
    assert isinstance(large["segmentation"], list) and len(large["segmentation"]) == 1
    assert coco.annToMask(large).astype(bool).tolist() == ell.tolist()
    assert coco.annToMask(small).astype(bool).tolist() == tiny.tolist()
    assert coco.annToMask(round_).astype(bool).tolist() == disk.tolist()  # tolerance 0: exact
    assert isinstance(nothing["segmentation"], dict) and coco.annToMask(nothing).sum() == 0


def test_a_triangle_person_is_a_triangle_polygon(tmp_path: Path) -> None:
    """Three vertices are a polygon (pycocotools fills it): a kept person is never left as RLE in polygon
    mode, which trainers reading polygons (mmdet's ``poly2mask=False``) cannot use."""
    yy, xx = np.mgrid[:H, :W]
    triangle = (xx >= 10) & (yy >= 5) & (yy < 40) & (xx - 10 <= yy - 5)
    coco = _export(tmp_path, [Person(triangle)], ExportPolicy(), coco_segmentation="polygon")
    (ann,) = coco.loadAnns(coco.getAnnIds())
    assert isinstance(ann["segmentation"], list) and [len(ring) for ring in ann["segmentation"]] == [6]
    filled = coco.annToMask(ann).astype(bool)
    assert (filled & triangle).sum() / (filled | triangle).sum() > 0.9


def _three_shards(tmp_path: Path) -> str:
    people = [Person(box_mask(H, W, 2, 2, 20, 20), det_score=0.4), Person(box_mask(H, W, 30, 2, 60, 40))]
    images = [Image(f"/in/{i}.jpg", W, H, people=people) for i in range(6)]
    return write_output(str(tmp_path / "out"), images, shard_size=2)


def test_annotation_ids_count_from_one_and_the_index_counts_ignore_regions(tmp_path: Path) -> None:
    src = _three_shards(tmp_path)
    export_output(src, str(tmp_path / "export"), "coco", ExportPolicy(min_det_score=0.5),
                  ExportOptions(images_per_file=4))
    index = json.loads((tmp_path / "export" / "index.json").read_text())
    ids, crowds = [], []
    for entry in index["files"]:
        coco = COCO(str(tmp_path / "export" / entry["file"]))
        ids += sorted(coco.getAnnIds())
        crowds.append(len(coco.getAnnIds(iscrowd=True)))
        assert entry["split"] == "train"
        # Every file names its source and the policy it was made with.
        info = coco.dataset["info"]
        assert info["description"] == "BMP pseudo-labels (bmp-label)" and info["source"] == src
        assert info["policy"]["min_det_score"] == 0.5
    assert ids == list(range(1, 13))
    assert [e["ignore_regions"] for e in index["files"]] == crowds == [4, 2]


def test_a_failed_export_leaves_no_half_written_coco_file(tmp_path: Path) -> None:
    src = _three_shards(tmp_path)
    (part,) = (Path(src) / "instances").glob("shard-000002-*.parquet")
    part.unlink()  # the last shard cannot be read: the export fails after writing two shards
    with pytest.raises(FileNotFoundError):
        export_output(src, str(tmp_path / "export"), "coco", ExportPolicy(), ExportOptions())
    assert sorted(p.name for p in (tmp_path / "export").rglob("*.json*")) == []


# --------------------------------------------------------------------------------------------
# YOLO: the label lines read back by the format's documented rules (class, then x/y normalised by the
# image width/height: pose ``cx cy w h`` + 17 ``x y v``; seg one polygon ``x1 y1 x2 y2 ...``)


def _yolo(tmp_path: Path, people: list[Person], kind: str, policy: ExportPolicy | None = None
          ) -> tuple[list[list[float]], dict]:
    src = write_output(str(tmp_path / "out"), [Image("/in/a.jpg", W, H, people=people)], shard_size=4)
    dest = tmp_path / "yolo"
    export_output(src, str(dest), f"yolo-{kind}", policy or ExportPolicy(), ExportOptions(link="list"))
    (label_file,) = (dest / "labels" / "train").glob("*.txt")
    rows = [[float(v) for v in line.split()] for line in label_file.read_text().splitlines()]
    assert all(row[0] == 0 for row in rows)  # class 0: person
    return [row[1:] for row in rows], json.loads((dest / "export.json").read_text())


def _pixels(row: list[float]) -> np.ndarray:
    return np.asarray(row[:4]) * [W, H, W, H]


def test_yolo_pose_boxes_are_clipped_to_the_image_and_empty_ones_left_out(tmp_path: Path) -> None:
    nothing = np.zeros((H, W), bool)
    over_every_edge = Person(nothing, box_xyxy=(-5.0, -3.0, W + 7.0, H + 2.0))
    right_of_image = Person(nothing, box_xyxy=(W + 1.0, 5.0, W + 9.0, 20.0))  # width 0 once clipped
    below_image = Person(nothing, box_xyxy=(5.0, H + 1.0, 20.0, H + 9.0))  # height 0 once clipped
    inside = Person(box_mask(H, W, 10, 5, 30, 25))
    rows, _ = _yolo(tmp_path, [over_every_edge, right_of_image, below_image, inside], "pose")
    assert len(rows) == 2
    boxes = sorted(_pixels(r).round(3).tolist() for r in rows)
    assert boxes == [[20.0, 15.0, 20.0, 20.0], [W / 2, H / 2, W, H]]  # (cx, cy, w, h) in pixels


def test_yolo_pose_keypoints_on_the_border_count_and_outside_do_not(tmp_path: Path) -> None:
    mask = box_mask(H, W, 4, 4, 40, 40)
    kp = default_keypoints(mask, 0.8)
    kp[0, :2] = (0, 10)
    kp[1, :2] = (W, 10)
    kp[2, :2] = (10, 0)
    kp[3, :2] = (10, H)
    kp[4, :2] = (-0.5, 10)
    kp[5, :2] = (W + 0.5, 10)
    kp[6, :2] = (10, -0.5)
    kp[7, :2] = (10, H + 0.5)
    kp[8, 2] = 0.5  # at the threshold: labeled
    kp[9, 2] = 0.49
    (row,), _ = _yolo(tmp_path, [Person(mask, keypoints=kp)], "pose", ExportPolicy(keypoint_thr=0.5))
    triples = np.asarray(row[4:]).reshape(17, 3)
    assert triples[:, 2].tolist() == [2, 2, 2, 2, 0, 0, 0, 0, 2, 0] + [2] * 7
    np.testing.assert_allclose(triples[:4, :2] * [W, H], kp[:4, :2], atol=1e-3)
    assert triples[4:8, :2].tolist() == [[0, 0]] * 4 and triples[9, :2].tolist() == [0, 0]


def test_yolo_of_an_image_without_people_is_an_empty_label_file(tmp_path: Path) -> None:
    for kind in ("pose", "seg"):
        rows, manifest = _yolo(tmp_path / kind, [], kind)
        assert rows == [] and manifest["counts"]["images"]["train"] == 1


def test_yolo_seg_skips_an_empty_mask_and_keeps_the_next_person(tmp_path: Path) -> None:
    solid = box_mask(H, W, 30, 10, W, H)  # touches the right and bottom edges
    rows, manifest = _yolo(tmp_path, [Person(np.zeros((H, W), bool), box_xyxy=(1.0, 1.0, 5.0, 5.0)), Person(solid)],
                           "seg")
    (poly,) = rows
    xy = np.asarray(poly).reshape(-1, 2) * [W, H]
    assert xy.min(axis=0).round(3).tolist() == [30, 10] and xy.max(axis=0).round(3).tolist() == [W, H]
    assert manifest["counts"]["format_dropped"]["empty_masks"] == 1
