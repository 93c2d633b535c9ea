"""The Label Studio review export read back by Label Studio's documented task format
(labelstud.io/guide/predictions and /guide/export: a task's ``data`` holds the ``$image`` value, a
prediction holds ``model_version``, ``score`` and ``result`` regions; a region's ``from_name`` /
``to_name`` name a control and the image of the labeling config, ``original_width`` /
``original_height`` are pixels, and ``x``, ``y``, ``width``, ``height`` and polygon points are
percentages of the image size), its labeling config parsed as XML, ``review_coco.json`` read with
pycocotools and ``export.json``'s file summary.

Written for mutation testing of ``bmp_core/output/export/label_studio.py`` (scripts/mutation.sh,
docs/mutation-scores.md). The outputs are hand-built (tests/export_fixtures.py) and exported through
``export_output``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bmp_core.coco_meta import KEYPOINT_NAMES
from bmp_core.output.export.policy import ExportPolicy
from bmp_core.output.export.run import ExportOptions, export_output
from tests.export_fixtures import Image, Person, box_mask, default_keypoints, write_output

H, W = 40, 80


def _export(tmp_path: Path, images: list[Image], policy: ExportPolicy, **options: object) -> tuple[list, dict]:
    src = write_output(str(tmp_path / "out"), images, shard_size=2)
    dest = tmp_path / "ls"
    export_output(src, str(dest), "label-studio", policy, ExportOptions(**options))  # type: ignore[arg-type]
    return json.loads((dest / "tasks.json").read_text()), json.loads((dest / "export.json").read_text())


def _regions(task: dict, type_: str) -> list[dict]:
    return [r for r in task["predictions"][0]["result"] if r["type"] == type_]


def test_one_task_region_by_region(tmp_path: Path) -> None:
    kept_mask = box_mask(H, W, 9, 5, 27, 35)  # edges at fractional percents (11.25 %, 12.5 %, ...)
    kp = default_keypoints(kept_mask, 0.9)
    kp[0, 2] = 0.2  # below keypoint_thr: not shown
    kp[1, :2] = (W + 3.0, 10.0)  # outside the image: not shown
    kp[2, :2] = (W, H)  # on the corner: shown
    kp[3, :2] = (0.0, 10.0)  # on the left edge: shown
    kp[4, :2] = (10.0, 0.0)  # on the top edge: shown
    kept = Person(kept_mask, det_score=0.75, pose_score=0.625, keypoints=kp, box_xyxy=(-4.0, 2.0, 30.0, H + 6.0))
    ignored = Person(box_mask(H, W, 40, 10, 60, 30), det_score=0.5, pose_score=0.25)  # below min_pose_score
    dropped = Person(np.zeros((H, W), bool), pose_score=0.125, box_xyxy=(70.0, 1.0, 75.0, 5.0))  # no mask: dropped
    uri = "/data/in/some dir/photo.jpg"
    tasks, manifest = _export(tmp_path, [Image(uri, W, H, people=[kept, ignored, dropped])],
                              ExportPolicy(min_pose_score=0.5, keypoint_thr=0.5), review=5,
                              image_url_prefix="/data/local-files/?d=")
    (task,) = tasks
    assert task["id"] == 0
    assert task["data"] == {"image": "/data/local-files/?d=" + uri, "uri": uri, "image_id": 0, "split": "train",
                            "review_key": 0.25}  # low-confidence: the lowest pose score of the shown people
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == "bmp-label"
    assert prediction["score"] == pytest.approx((0.625 + 0.25) / 2, abs=1e-4)
    for r in prediction["result"]:
        assert (r["to_name"], r["original_width"], r["original_height"], r["image_rotation"]) == ("image", W, H, 0)

    boxes = _regions(task, "rectanglelabels")
    assert [(b["id"], b["from_name"], b["value"]["rectanglelabels"]) for b in boxes] == [
        ("0_0", "box", ["person"]), ("0_1", "box", ["ignore"])]
    assert [b["score"] for b in boxes] == pytest.approx([0.75, 0.5])
    # the box clipped to the image, in percent of its size
    assert {k: boxes[0]["value"][k] for k in ("x", "y", "width", "height", "rotation")} == pytest.approx(
        {"x": 0.0, "y": 5.0, "width": 30 * 100 / W, "height": 95.0, "rotation": 0})
    assert {k: boxes[1]["value"][k] for k in ("x", "y", "width", "height")} == pytest.approx(
        {"x": 50.0, "y": 25.0, "width": 25.0, "height": 50.0})

    polygons = _regions(task, "polygonlabels")
    assert [(p["id"], p["parentID"], p["from_name"], p["value"]["polygonlabels"]) for p in polygons] == [
        ("0_0_mask", "0_0", "mask", ["person"]), ("0_1_mask", "0_1", "mask", ["ignore"])]
    assert [p["score"] for p in polygons] == pytest.approx([0.625, 0.25])
    # a box mask's outline: its four pixel corners, in percent of the image size
    np.testing.assert_allclose(sorted(map(tuple, polygons[0]["value"]["points"])),
                               [(11.25, 12.5), (11.25, 87.5), (33.75, 12.5), (33.75, 87.5)], atol=1e-4)
    for p, mask in zip(polygons, [kept_mask, ignored.mask], strict=True):
        pixels = (np.asarray(p["value"]["points"]) / 100 * [W, H]).reshape(-1).tolist()
        filled = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([pixels], H, W)))
        np.testing.assert_array_equal(filled.astype(bool), mask)

    points = _regions(task, "keypointlabels")  # the kept person's labeled keypoints inside the image only
    assert [p["value"]["keypointlabels"] for p in points] == [[n] for n in KEYPOINT_NAMES[2:]]
    assert [p["id"] for p in points] == [f"0_0_kp{j}" for j in range(2, 17)]
    assert all(p["parentID"] == "0_0" and p["from_name"] == "keypoints" and p["value"]["width"] == 0.5
               for p in points)
    np.testing.assert_allclose([(p["value"]["x"], p["value"]["y"]) for p in points],
                               kp[2:, :2] * [100 / W, 100 / H], atol=1e-4)
    assert [p["score"] for p in points] == pytest.approx(kp[2:, 2].tolist())

    assert manifest["files"][:2] == [{"file": "tasks.json", "tasks": 1, "review_by": "low-confidence"},
                                     {"file": "labeling_config.xml"}]
    coco = COCO(str(tmp_path / "ls" / "review_coco.json"))
    assert coco.dataset["images"] == [{"id": 0, "file_name": "photo.jpg", "width": W, "height": H}]
    assert manifest["files"][2] == {"file": "review_coco.json", "split": "review", "images": 1, "annotations": 2,
                                    "ignore_regions": 1}
    assert coco.dataset["info"]["source"] == manifest["source"] and coco.dataset["info"]["plan_id"] == manifest[
        "plan_id"]
    person, crowd = sorted(coco.loadAnns(coco.getAnnIds()), key=lambda a: a["iscrowd"])
    assert (person["iscrowd"], crowd["iscrowd"]) == (0, 1)  # the ignore region: a crowd, the dropped one absent
    assert person["bbox"] == pytest.approx([9, 5, 18, 30]) and crowd["area"] == 400  # the masks' boxes / areas
    v = np.asarray(person["keypoints"]).reshape(17, 3)[:, 2]
    assert v[0] == 0 and (v[3:] == 2).all()  # below keypoint_thr: unlabeled, as in the tasks


def test_the_labeling_config_names_what_the_regions_use(tmp_path: Path) -> None:
    export_output(write_output(str(tmp_path / "out"), [Image("/in/a.jpg", W, H, people=[Person(box_mask(H, W, 1, 1,
                                                                                                       9, 9))])]),
                  str(tmp_path / "ls"), "label-studio", ExportPolicy())
    root = ET.fromstring((tmp_path / "ls" / "labeling_config.xml").read_text())
    assert root.tag == "View"
    (image,) = root.iter("Image")
    assert (image.get("name"), image.get("value")) == ("image", "$image")
    by_tag = {el.tag: el for el in root if el.tag != "Image"}
    assert set(by_tag) == {"RectangleLabels", "PolygonLabels", "KeyPointLabels"}
    assert {t: (el.get("name"), el.get("toName")) for t, el in by_tag.items()} == {
        "RectangleLabels": ("box", "image"), "PolygonLabels": ("mask", "image"),
        "KeyPointLabels": ("keypoints", "image")}
    assert all(not (el.tail or "").strip() and not (el.text or "").strip() for el in root.iter())  # no stray text
    for tag in ("RectangleLabels", "PolygonLabels"):
        assert [lbl.get("value") for lbl in by_tag[tag].iter("Label")] == ["person", "ignore"]
    assert [lbl.get("value") for lbl in by_tag["KeyPointLabels"].iter("Label")] == list(KEYPOINT_NAMES)


def _pose_people(scores: list[float]) -> list[Person]:
    return [Person(box_mask(H, W, 2 + 10 * k, 2, 10 + 10 * k, 30), pose_score=s) for k, s in enumerate(scores)]


# shards of 3: an image without people first in shard 0 (it must not end the shard's scan), and in shard 1
# one that does not beat the full heap before one that does
SELECTION_IMAGES = [Image("/in/0.jpg", W, H, people=[]),                              # never a candidate
                    Image("/in/1.jpg", W, H, people=_pose_people([0.3, 0.9])),        # min 0.3, 2 people
                    Image("/in/2.jpg", W, H, people=_pose_people([0.8, 0.9])),        # min 0.8, 2
                    Image("/in/3.jpg", W, H, people=_pose_people([0.2])),             # min 0.2, 1
                    Image("/in/4.jpg", W, H, people=_pose_people([0.9, 0.95])),       # min 0.9, 2
                    Image("/in/5.jpg", W, H, people=_pose_people([0.3, 0.5, 0.6])),   # min 0.3 (tie: 1 first), 3
                    Image("/in/6.jpg", error="unreadable", people=_pose_people([0.1]))]  # failed: never


@pytest.mark.parametrize(("review_by", "review", "expected", "keys"), [
    ("low-confidence", 3, [3, 1, 5], [0.2, 0.3, 0.3]), ("crowded", 3, [5, 1, 2], [-3.0, -2.0, -2.0]),
    ("low-confidence", 1, [3], [0.2]), ("crowded", 10, [5, 1, 2, 4, 3], [-3.0, -2.0, -2.0, -2.0, -1.0])])
def test_the_review_selection_and_its_order(tmp_path: Path, review_by: str, review: int, expected: list[int],
                                            keys: list[float]) -> None:
    src = write_output(str(tmp_path / "out"), SELECTION_IMAGES, shard_size=3)
    export_output(src, str(tmp_path / "ls"), "label-studio", ExportPolicy(), ExportOptions(review=review,
                                                                                           review_by=review_by))
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert [t["id"] for t in tasks] == expected
    assert [t["data"]["review_key"] for t in tasks] == pytest.approx(keys)
    manifest = json.loads((tmp_path / "ls" / "export.json").read_text())
    assert manifest["files"][0] == {"file": "tasks.json", "tasks": len(expected), "review_by": review_by}
    coco = COCO(str(tmp_path / "ls" / "review_coco.json"))
    assert sorted(coco.getImgIds()) == sorted(expected)


def test_occluded_keypoints_are_shown_and_absent_ones_are_not(tmp_path: Path) -> None:
    mask = box_mask(H, W, 8, 4, 28, 36)
    presence, visibility = np.ones(17, np.float32), np.ones(17, np.float32)
    presence[5] = 0.1  # confident, but predicted outside the crop: unlabeled (v = 0)
    visibility[6] = 0.1  # present but occluded: shown (v = 1 in the COCO file)
    person = Person(mask, keypoints=default_keypoints(mask, 0.9), visibility=visibility, presence=presence)
    policy = ExportPolicy(keypoint_thr=0.5, keypoint_presence_thr=0.5, keypoint_visibility_thr=0.5)
    (task,), _ = _export(tmp_path, [Image("/in/a.jpg", W, H, people=[person])], policy)
    shown = [p["value"]["keypointlabels"][0] for p in _regions(task, "keypointlabels")]
    assert shown == [n for j, n in enumerate(KEYPOINT_NAMES) if j != 5]
    (ann,) = COCO(str(tmp_path / "ls" / "review_coco.json")).dataset["annotations"]
    v = np.asarray(ann["keypoints"]).reshape(17, 3)[:, 2]
    assert v[5] == 0 and v[6] == 1 and ann["num_keypoints"] == 16


def test_random_review_is_stable_and_in_the_unit_interval(tmp_path: Path) -> None:
    images = [Image(f"/in/{i}.jpg", W, H, people=_pose_people([0.5])) for i in range(6)]
    tasks, _ = _export(tmp_path, images, ExportPolicy(), review=4, review_by="random")
    keys = [t["data"]["review_key"] for t in tasks]
    assert len(tasks) == 4 and keys == sorted(keys) and all(0 <= k < 1 for k in keys)
    assert len(set(keys)) == 4
    again, _ = _export(tmp_path / "again", images, ExportPolicy(), review=6, review_by="random")
    # the same hash: the 4 picked are the 4 smallest of all 6
    assert [t["id"] for t in again][:4] == [t["id"] for t in tasks]
    assert [t["data"]["review_key"] for t in again][:4] == keys


def test_random_review_keys_spread_over_the_unit_interval(tmp_path: Path) -> None:
    # A uniform hash of the URI: 40 images' keys fill [0, 1), not a corner of it (a key's scale is data.review_key).
    images = [Image(f"/in/{i:02d}.jpg", W, H, people=_pose_people([0.5])) for i in range(40)]
    tasks, _ = _export(tmp_path, images, ExportPolicy(), review=40, review_by="random")
    keys = [t["data"]["review_key"] for t in tasks]
    assert len(keys) == 40 and all(0 <= k < 1 for k in keys) and min(keys) < 0.25 and max(keys) > 0.75


def test_a_mask_on_the_image_edges_keeps_its_polygon_on_them(tmp_path: Path) -> None:
    mask = box_mask(H, W, 0, 0, 24, H)  # touches the left, top and bottom edges
    (task,), _ = _export(tmp_path, [Image("/in/a.jpg", W, H, people=[Person(mask)])], ExportPolicy())
    (polygon,) = _regions(task, "polygonlabels")
    points = np.asarray(polygon["value"]["points"])
    assert points.min(axis=0).tolist() == [0, 0] and points.max(axis=0).tolist() == [30.0, 100.0]
    pixels = (points / 100 * [W, H]).reshape(-1).tolist()
    filled = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([pixels], H, W)))
    np.testing.assert_array_equal(filled.astype(bool), mask)


def test_boxes_outside_the_image_are_clipped_onto_its_edges(tmp_path: Path) -> None:
    nothing = np.zeros((H, W), bool)
    people = [Person(nothing, box_xyxy=(-9.0, 4.0, -1.0, 20.0)),
              Person(nothing, box_xyxy=(W + 1.0, 4.0, W + 9.0, 20.0))]
    (task,), _ = _export(tmp_path, [Image("/in/a.jpg", W, H, people=people)], ExportPolicy())
    values = [{k: b["value"][k] for k in ("x", "y", "width", "height")} for b in _regions(task, "rectanglelabels")]
    assert values == [{"x": 0.0, "y": 10.0, "width": 0.0, "height": 40.0},
                      {"x": 100.0, "y": 10.0, "width": 0.0, "height": 40.0}]


def test_prediction_score_is_clipped_to_one(tmp_path: Path) -> None:
    tasks, _ = _export(tmp_path, [Image("/in/a.jpg", W, H, people=_pose_people([1.5, 1.25]))], ExportPolicy())
    assert tasks[0]["predictions"][0]["score"] == 1.0


def test_the_polygon_tolerance_option_reaches_the_review_polygons(tmp_path: Path) -> None:
    yy, xx = np.mgrid[:H, :W]
    disk = (xx - 40) ** 2 + (yy - 20) ** 2 <= 15**2  # curved: any simplification changes its fill

    def filled(tolerance: float) -> tuple[np.ndarray, dict]:
        (task,), manifest = _export(tmp_path / str(tolerance), [Image("/in/a.jpg", W, H, people=[Person(disk)])],
                                    ExportPolicy(), polygon_tolerance_px=tolerance)
        (polygon,) = _regions(task, "polygonlabels")
        pixels = (np.asarray(polygon["value"]["points"]) / 100 * [W, H]).reshape(-1).tolist()
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([pixels], H, W))).astype(bool), manifest

    exact, manifest = filled(0.0)
    np.testing.assert_array_equal(exact, disk)  # tolerance 0: the outline as traced
    assert manifest["options"]["polygon_tolerance_px"] == 0.0
    coarse, _ = filled(4.0)
    assert not np.array_equal(coarse, disk)  # a coarser tolerance simplifies it
