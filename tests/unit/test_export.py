"""``bmp-label export``: the policy on hand-built outputs, the split, and each format checked by its
reader (pycocotools for COCO, the documented Ultralytics rules for YOLO, the labeling config for
Label Studio). The trainers' own loaders and a training step are in tests/models/test_export_trainers.py."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bmp_core.coco_meta import FLIP_INDICES, KEYPOINT_NAMES
from bmp_core.output.coco import coco_dataset
from bmp_core.output.export.manifest import ExportManifest
from bmp_core.output.export.policy import ExportPolicy, PolicyError, split_of, split_score
from bmp_core.output.export.run import ExportOptions, export_output
from bmp_core.output.reader import load_output
from jobs.cli import main
from tests.export_fixtures import Image, Person, box_mask, default_keypoints, write_output

H, W = 48, 64


def _kp(score: float, n_visible: int = 17) -> np.ndarray:
    kp = default_keypoints(box_mask(H, W, 4, 4, 30, 40), score)
    kp[n_visible:, 2] = 0.05
    return kp


# One person per threshold, each failing exactly that one (and one passing everything).
PEOPLE = {
    "good": Person(box_mask(H, W, 2, 2, 20, 40), det_score=0.9, pose_score=0.8, sam_score=0.9, keypoints=_kp(0.8)),
    "det_score": Person(box_mask(H, W, 22, 2, 40, 40), det_score=0.4, keypoints=_kp(0.8)),
    "pose_score": Person(box_mask(H, W, 42, 2, 60, 40), pose_score=0.35, keypoints=_kp(0.8)),
    "sam_score": Person(box_mask(H, W, 2, 41, 20, 47), sam_score=None, keypoints=_kp(0.8)),
    "visible_keypoints": Person(box_mask(H, W, 22, 41, 40, 47), keypoints=_kp(0.8, n_visible=4)),
    "mask_area": Person(box_mask(H, W, 42, 44, 45, 46), keypoints=_kp(0.8)),  # 6 pixels
}
STRICT = {"det_score": {"min_det_score": 0.5}, "pose_score": {"min_pose_score": 0.5},
          "sam_score": {"min_sam_score": 0.5}, "visible_keypoints": {"min_visible_keypoints": 6},
          "mask_area": {"min_mask_area_px": 20}}


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("export")
    src = root / "src"
    src.mkdir()
    images = []
    for i in range(7):
        uri = str(src / f"photo_{i}.jpg")
        Path(uri).write_bytes(b"not decoded by the export")
        if i == 3:
            images.append(Image(uri, error="unreadable image", people=list(PEOPLE.values())))
        else:
            images.append(Image(uri, W, H, people=list(PEOPLE.values())[: 6 - (i % 3)]))
    return write_output(str(root / "out"), images, shard_size=3)


def _export(output: str, dest: Path, fmt: str = "coco", **policy) -> dict:
    manifest = export_output(output, str(dest), fmt, ExportPolicy(**policy), ExportOptions(review=3))
    written = json.loads((dest / "export.json").read_text())
    # export.json is the returned manifest, and reads back into it (counts typed: an ExportTally)
    assert written == manifest.to_dict() and ExportManifest.from_dict(written) == manifest
    return written


def _crowd_names(coco: COCO) -> dict[tuple[int, str], int]:
    names = list(PEOPLE)
    out = {}
    for ann in coco.loadAnns(coco.getAnnIds()):
        # Each hand-built person has its own mask: find which one by area and position.
        m = coco.annToMask(ann).astype(bool)
        name = next(n for n in names if np.array_equal(PEOPLE[n].mask, m))
        out[(ann["image_id"], name)] = ann["iscrowd"]
    return out


@pytest.mark.parametrize("threshold", list(STRICT))
def test_each_threshold_moves_exactly_its_people_into_ignore(output: str, tmp_path: Path, threshold: str) -> None:
    manifest = _export(output, tmp_path / threshold, **STRICT[threshold])
    coco = COCO(str(tmp_path / threshold / "train.json"))
    crowd = _crowd_names(coco)
    expected = {key: int(key[1] == threshold) for key in crowd}
    assert crowd == expected
    assert manifest["counts"]["ignored_by_reason"][threshold] == sum(expected.values()) > 0
    assert sum(manifest["counts"]["ignored_by_reason"].values()) == sum(expected.values())
    assert manifest["policy"] == ExportPolicy(**STRICT[threshold]).to_dict()
    for ann in coco.loadAnns(coco.getAnnIds(iscrowd=True)):  # an ignore region: its mask, no keypoints
        assert ann["num_keypoints"] == 0 and not any(ann["keypoints"]) and ann["area"] > 0


def test_default_policy_keeps_everyone_and_failed_images_are_never_exported(output: str, tmp_path: Path) -> None:
    manifest = _export(output, tmp_path / "all")
    coco = COCO(str(tmp_path / "all" / "train.json"))
    job = load_output(output)
    ok_ids = job.ok_image_ids()
    assert sorted(coco.getImgIds()) == ok_ids and 3 not in ok_ids
    assert len(coco.getAnnIds()) == job.instances.num_rows - 6  # the failed image's rows never count
    assert not coco.getAnnIds(iscrowd=True)
    assert manifest["counts"]["images_failed"] == 1 and manifest["counts"]["people"]["ignored"] == 0


def test_every_threshold_at_once_reports_the_first_failed_and_sums_add_up(output: str, tmp_path: Path) -> None:
    policy = {k: v for d in STRICT.values() for k, v in d.items()}
    manifest = _export(output, tmp_path / "strict", **policy)
    c = manifest["counts"]
    coco = COCO(str(tmp_path / "strict" / "train.json"))
    assert len(coco.getAnnIds(iscrowd=True)) == c["people"]["ignored"]
    assert len(coco.getAnnIds(iscrowd=False)) == c["people"]["kept"] == len(coco.getImgIds())  # "good" only
    assert c["people"]["kept"] + c["people"]["ignored"] + c["people"]["dropped"] == 6 * 2 + 5 * 2 + 4 * 2


def test_an_unsure_person_with_an_empty_mask_is_dropped(tmp_path: Path) -> None:
    empty = Person(np.zeros((H, W), bool), det_score=0.1, box_xyxy=(1, 1, 9, 9))
    out = write_output(str(tmp_path / "out"), [Image("/x/a.jpg", W, H, people=[PEOPLE["good"], empty])])
    manifest = _export(out, tmp_path / "e", min_det_score=0.5)
    assert manifest["counts"]["dropped_by_reason"]["det_score"] == 1
    assert len(COCO(str(tmp_path / "e" / "train.json")).getAnnIds()) == 1


def test_keypoints_below_the_threshold_are_unlabeled(output: str, tmp_path: Path) -> None:
    _export(output, tmp_path / "k", keypoint_thr=0.5)
    coco = COCO(str(tmp_path / "k" / "train.json"))
    job = load_output(output)
    for ann in coco.loadAnns(coco.getAnnIds()):
        rows = job.instances_of(ann["image_id"])
        kp_in = next(np.array(r, np.float32) for r, c in zip(rows.column("keypoints").to_pylist(),
                                                             rows.column("mask_rle_counts").to_pylist(), strict=True)
                     if c == ann["segmentation"]["counts"])
        kp = np.array(ann["keypoints"]).reshape(17, 3)
        vis = kp_in[:, 2] >= 0.5
        assert (kp[:, 2] == np.where(vis, 2, 0)).all() and (kp[~vis] == 0).all()
        np.testing.assert_allclose(kp[vis, :2], kp_in[vis, :2], atol=0.01)


def test_the_split_is_a_stable_uri_hash(tmp_path: Path) -> None:
    uris = [f"s3://bucket/photos/{i:05d}.jpg" for i in range(2000)]
    val = [u for u in uris if split_of(u, 0.2) == "val"]
    assert 0.17 < len(val) / len(uris) < 0.23
    assert set(val) <= {u for u in uris if split_of(u, 0.3) == "val"}  # a larger fraction only adds
    assert split_score("a") == split_score("a") != split_score("b")
    with pytest.raises(PolicyError):
        ExportPolicy(val_fraction=1.0)


def test_the_same_split_in_every_format_rerun_and_sharding(tmp_path: Path) -> None:
    def coco_val(d: Path) -> set[str]:
        return {im["file_name"] for im in json.loads((d / "val.json").read_text())["images"]}

    # 40 images: the URIs carry the random tmp path, and with 0.4 of them in val the chance that none
    # is (which would leave no val.json to compare) is 0.6 ** 39, not 0.6 ** 6 as with the shared output.
    src = tmp_path / "src"
    src.mkdir()
    images = []
    for i in range(40):
        uri = str(src / f"photo_{i:02d}.jpg")
        Path(uri).write_bytes(b"not decoded by the export")
        images.append(Image(uri, error="unreadable image") if i == 3 else Image(uri, W, H, people=[PEOPLE["good"]]))
    output = write_output(str(tmp_path / "out"), images, shard_size=7)
    _export(output, tmp_path / "c1", val_fraction=0.4)
    _export(output, tmp_path / "c2", val_fraction=0.4)
    _export(output, tmp_path / "y", "yolo-pose", val_fraction=0.4)
    # The same images listed in another order with one more (other image ids) and cut into other
    # shards give the same split: it depends on the URI alone.
    job = load_output(output)
    relisted = [Image(u, W, H, people=[PEOPLE["good"]]) if s == "ok" else Image(u, error="x")
                for u, s in zip(job.images.column("uri").to_pylist(), job.images.column("status").to_pylist(),
                                strict=True)]
    extra = Image("/elsewhere/new.jpg", W, H, people=[PEOPLE["good"]])
    resharded = write_output(str(tmp_path / "re"), [extra, *relisted[::-1]], shard_size=5)
    _export(resharded, tmp_path / "c3", val_fraction=0.4)
    val = coco_val(tmp_path / "c1")
    assert val and val == coco_val(tmp_path / "c2") == coco_val(tmp_path / "c3") - {extra.uri}
    csv = [line.split(",") for line in (tmp_path / "y" / "images.csv").read_text().splitlines()[1:]]
    assert {uri for _, split, uri in csv if split == "val"} == val
    assert (tmp_path / "c1" / "val.json").read_bytes() == (tmp_path / "c2" / "val.json").read_bytes()


def test_coco_files_of_at_most_n_images_with_ids_unique_across_files(output: str, tmp_path: Path) -> None:
    export_output(output, str(tmp_path / "one"), "coco", ExportPolicy(min_pose_score=0.5))
    export_output(output, str(tmp_path / "many"), "coco", ExportPolicy(min_pose_score=0.5),
                  ExportOptions(images_per_file=2))
    index = json.loads((tmp_path / "many" / "index.json").read_text())
    manifest = json.loads((tmp_path / "many" / "export.json").read_text())
    names = [f["file"] for f in index["files"]]
    assert names == ["train-00000.json", "train-00001.json", "train-00002.json"]
    images, anns, crowd = [], [], 0
    for entry in index["files"]:
        coco = COCO(str(tmp_path / "many" / entry["file"]))  # each file loads on its own
        assert len(coco.getImgIds()) == entry["images"] <= 2 and len(coco.getAnnIds()) == entry["annotations"]
        crowd += len(coco.getAnnIds(iscrowd=True))
        assert crowd and entry["ignore_regions"] <= entry["annotations"]
        images += coco.dataset["images"]
        anns += coco.dataset["annotations"]
    whole = json.loads((tmp_path / "one" / "train.json").read_text())
    assert len({a["id"] for a in anns}) == len(anns)
    assert sorted(images, key=lambda d: d["id"]) == whole["images"]
    assert sorted(anns, key=lambda d: d["id"]) == whole["annotations"]
    assert manifest["counts"]["people"]["ignored"] == crowd
    assert manifest["counts"]["images"]["train"] == len(images)


def test_job_coco_json_is_the_export_encoder_with_the_pass_all_policy(output: str, tmp_path: Path) -> None:
    job = load_output(output)
    _export(output, tmp_path / "p")
    exported = json.loads((tmp_path / "p" / "train.json").read_text())
    in_memory = coco_dataset(job.images, job.instances)
    assert exported["annotations"] == in_memory["annotations"]
    assert exported["images"] == in_memory["images"]


# ---- YOLO: the documented Ultralytics dataset format, checked strictly -----------------------------

def _expected_flip_idx() -> list[int]:
    swap = {"left": "right", "right": "left"}
    names = list(KEYPOINT_NAMES)
    return [names.index("_".join([swap.get(p, p) for p in n.split("_")])) for n in names]


def _check_yolo(dest: Path, kind: str) -> dict[str, list[np.ndarray]]:
    """Ultralytics' rules: data.yaml keys, list files, labels found by /images/ -> /labels/,
    one row per object: class + normalised values in [0, 1], 5 + 17 * 3 columns for pose."""
    data = yaml.safe_load((dest / "data.yaml").read_text())
    assert data["names"] == {0: "person"} and Path(data["path"]) == dest
    if kind == "pose":
        assert data["kpt_shape"] == [17, 3] and data["flip_idx"] == _expected_flip_idx() == list(FLIP_INDICES)
    else:
        assert "kpt_shape" not in data
    labels = {}
    for split in ("train", "val"):
        for line in (dest / data[split]).read_text().splitlines():
            assert line.startswith("./images/")
            image = dest / line[2:]
            assert image.is_symlink() and image.resolve().exists()
            label = Path(str(image).replace("/images/", "/labels/")).with_suffix(".txt")
            rows = [np.array(r.split(), float) for r in label.read_text().splitlines()]
            for row in rows:
                assert row[0] == 0 and (row >= 0).all()
                if kind == "pose":
                    assert len(row) == 5 + 17 * 3 and set(row[7::3]) <= {0, 2}
                    assert (row[1:5] <= 1).all() and (row[5:].reshape(17, 3)[:, :2] <= 1).all()
                    assert (row[5:][np.repeat(row[7::3] == 0, 3)] == 0).all()
                else:
                    assert len(row) % 2 == 1 and len(row) >= 7 and (row[1:] <= 1).all()
            labels[str(image.resolve())] = rows
    return labels


def test_yolo_pose_matches_the_coco_export(output: str, tmp_path: Path) -> None:
    policy = {"min_sam_score": 0.5, "min_visible_keypoints": 6}
    m = _export(output, tmp_path / "y", "yolo-pose", max_ignore_fraction=0.05, **policy)
    labels = _check_yolo(tmp_path / "y", "pose")
    _export(output, tmp_path / "c", **policy)
    coco = COCO(str(tmp_path / "c" / "train.json"))
    n_kept = 0
    for img in coco.dataset["images"]:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]], iscrowd=False))
        crowd = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]], iscrowd=True))
        if sum(a["area"] for a in crowd) > 0.05 * W * H:
            assert img["file_name"] not in labels  # left out for its ignore area
            continue
        rows = labels[img["file_name"]]
        assert len(rows) == len(anns)
        n_kept += len(rows)
        for row, ann in zip(rows, anns, strict=True):
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose(row[1:5], [(x + w / 2) / W, (y + h / 2) / H, w / W, h / H], atol=1e-5)
            kp = np.array(ann["keypoints"], float).reshape(17, 3)
            np.testing.assert_allclose(row[5:].reshape(17, 3)[:, :2], kp[:, :2] / [W, H], atol=1e-5)
    c = m["counts"]
    assert c["people"]["kept"] == n_kept and c["format_dropped"]["images_ignore_area"] == 4
    assert c["images"]["train"] == len(labels) == 2
    assert c["format_dropped"]["ignored_people_omitted"] == c["people"]["ignored"]


def test_yolo_seg_polygons_fill_back_to_the_masks(output: str, tmp_path: Path) -> None:
    export_output(output, str(tmp_path / "s"), "yolo-seg", ExportPolicy(), ExportOptions(polygon_tolerance_px=0))
    labels = _check_yolo(tmp_path / "s", "seg")
    job = load_output(output)
    for uri, rows in labels.items():
        image_id = job.images.column("uri").to_pylist().index(uri)
        masks = [mask_utils.decode(r) for r in [{"size": s, "counts": c.encode()} for c, s in zip(
            job.instances_of(image_id).column("mask_rle_counts").to_pylist(),
            job.instances_of(image_id).column("mask_rle_size").to_pylist(), strict=True)]]
        assert len(rows) == len(masks)
        for row, mask in zip(rows, masks, strict=True):
            poly = (row[1:].reshape(-1, 2) * [W, H]).reshape(-1).tolist()
            filled = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], H, W)))
            np.testing.assert_array_equal(filled, mask)


def test_yolo_ignore_rule_is_configurable(output: str, tmp_path: Path) -> None:
    keep_all = _export(output, tmp_path / "a", "yolo-pose", min_pose_score=0.5, max_ignore_fraction=1.0)
    drop_any = _export(output, tmp_path / "b", "yolo-pose", min_pose_score=0.5, max_ignore_fraction=0.0)
    assert "images_ignore_area" not in keep_all["counts"]["format_dropped"]
    assert keep_all["counts"]["images"]["train"] == 6
    assert drop_any["counts"]["format_dropped"]["images_ignore_area"] == 6  # every image has a pose_score person
    assert drop_any["counts"]["images"]["train"] == 0


# ---- Label Studio: tasks against the labeling config ------------------------------------------------

def _validate_tasks(tasks: list[dict], config_xml: str) -> None:
    """Every result's from_name is a control of the right type naming to_name, every label exists,
    every value is inside the image (percent)."""
    root = ET.fromstring(config_xml)
    objects = {el.get("name") for el in root.iter() if el.tag == "Image"}
    controls = {el.get("name"): el for el in root.iter() if el.get("toName")}
    tag_of = {"rectanglelabels": "RectangleLabels", "polygonlabels": "PolygonLabels",
              "keypointlabels": "KeyPointLabels"}
    for task in tasks:
        assert task["data"]["image"]  # $image of the config
        assert 0 <= task["predictions"][0]["score"] <= 1
        ids = set()
        for result in task["predictions"][0]["result"]:
            control = controls[result["from_name"]]
            assert control.tag == tag_of[result["type"]] and control.get("toName") == result["to_name"] in objects
            labels = {lbl.get("value") for lbl in control.iter("Label")}
            assert set(result["value"][result["type"]]) <= labels
            assert result["id"] not in ids and 0 <= result["score"] <= 1
            ids.add(result["id"])
            v = result["value"]
            points = v["points"] if "points" in v else [[v["x"], v["y"]]]
            assert all(0 <= p <= 100 for xy in points for p in xy)
            if result.get("parentID"):
                assert result["parentID"] in ids


@pytest.mark.parametrize("review_by", ["low-confidence", "crowded", "random"])
def test_review_tasks_validate_against_the_labeling_config(output: str, tmp_path: Path, review_by: str) -> None:
    dest = tmp_path / review_by
    export_output(output, str(dest), "label-studio", ExportPolicy(min_pose_score=0.5),
                  ExportOptions(review=3, review_by=review_by))
    tasks = json.loads((dest / "tasks.json").read_text())
    _validate_tasks(tasks, (dest / "labeling_config.xml").read_text())
    job = load_output(output)
    ok = job.ok_image_ids()
    pose = {i: job.instances_of(i).column("pose_score").to_pylist() for i in ok}
    if review_by == "low-confidence":
        expected = sorted(ok, key=lambda i: (min(pose[i]), i))[:3]
    elif review_by == "crowded":
        expected = sorted(ok, key=lambda i: (-len(pose[i]), i))[:3]
    else:
        expected = [t["id"] for t in tasks]  # stable: the same on a rerun
        export_output(output, str(tmp_path / "again"), "label-studio", ExportPolicy(),
                      ExportOptions(review=3, review_by=review_by))
        assert [t["id"] for t in json.loads((tmp_path / "again" / "tasks.json").read_text())] == expected
    assert [t["id"] for t in tasks] == expected
    coco = COCO(str(dest / "review_coco.json"))  # CVAT's COCO import reads the same file format
    assert sorted(coco.getImgIds()) == sorted(expected)
    n_regions = sum(1 for t in tasks for r in t["predictions"][0]["result"] if r["type"] == "rectanglelabels")
    assert len(coco.getAnnIds()) == n_regions
    assert all("/" not in im["file_name"] for im in coco.dataset["images"])


# ---- CLI ---------------------------------------------------------------------------------------------

def test_cli_export_and_its_one_line_errors(output: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "--help"])
    assert exc.value.code == 0 and "ignore region" in capsys.readouterr().out
    dest = tmp_path / "cli"
    assert main(["export", output, "--format", "coco", "--to", str(dest), "--min-pose-score", "0.5",
                 "--val-fraction", "0.3", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["people"]["ignored"] == json.loads((dest / "export.json").read_text())["counts"]["people"]["ignored"]
    for bad, message in [
        (["--format", "voc"], "--format must be one of"),
        (["--format", "coco", "--min-det-score", "2"], "min_det_score must be in [0, 1]"),
        (["--format", "coco", "--images-per-file", "0"], "--images-per-file must be >= 1"),
        (["--format", "label-studio", "--review-by", "best"], "--review-by must be one of"),
    ]:
        assert main(["export", output, "--to", str(tmp_path / "bad"), "--no-progress", *bad]) == 2
        err = capsys.readouterr().err
        # one line naming the mistake, then one hint line (docs/running-jobs.md), no traceback
        first, *rest = err.strip().splitlines()
        assert first.startswith("bmp-label export: ") and message in first
        assert len(rest) == 1 and rest[0].startswith("  hint: ") and "export" in rest[0]
        assert "Traceback" not in err
    assert main(["export", str(tmp_path / "nothing"), "--format", "coco", "--to", str(tmp_path / "x")]) == 2
    assert "no plan.json" in capsys.readouterr().err
    assert main(["export", output, "--format", "coco", "--to", output, "--no-progress"]) == 2
    assert "must not be the output itself" in capsys.readouterr().err


def test_report_draws_the_policy_and_counts_who_falls_below(output: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    dest = tmp_path / "p"
    manifest = _export(output, dest, min_det_score=0.5)
    assert main(["report", output, "--samples", "0", "--policy", str(dest / "export.json"),
                 "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    section = page[page.index("<section id='policy'>"):]
    section = section[:section.index("</section>")]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", section)
    row = cells[cells.index("min_det_score"):][:3]
    assert row == ["min_det_score", "0.5", str(manifest["counts"]["ignored_by_reason"]["det_score"])]
    assert main(["report", output, "--samples", "0", "--policy", str(tmp_path / "none.json"),
                 "--out", str(tmp_path / "r2.html")]) == 2
    assert "is not an export.json" in capsys.readouterr().err


def test_a_previous_export_is_replaced_whole_and_other_folders_are_refused(output: str, tmp_path: Path) -> None:
    dest = tmp_path / "d"
    export_output(output, str(dest), "coco", ExportPolicy(), ExportOptions(images_per_file=1))
    assert (dest / "train-00005.json").exists()
    export_output(output, str(dest), "coco", ExportPolicy())
    assert sorted(p.name for p in dest.iterdir()) == ["export.json", "index.json", "train.json"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match="is not empty and holds no export.json"):
        export_output(output, str(busy), "coco", ExportPolicy())
    assert (busy / "thesis.tex").read_text() == "keep me"


def test_yolo_pose_clips_boxes_and_unlabels_keypoints_outside_the_image(tmp_path: Path) -> None:
    src = tmp_path / "a.jpg"
    src.write_bytes(b"x")
    kp = default_keypoints(box_mask(H, W, 40, 10, 64, 40), 0.9)
    kp[0, :2] = (W + 5.0, 10.0)  # a confident keypoint outside the image
    kp[1, :2] = (-1.0, 10.0)
    person = Person(box_mask(H, W, 40, 10, 64, 40), keypoints=kp, box_xyxy=(40, 10, 70, 40))
    out = write_output(str(tmp_path / "out"), [Image(str(src), W, H, people=[person])])
    m = _export(out, tmp_path / "y", "yolo-pose")
    row = np.array((tmp_path / "y" / "labels" / "train" / "000000000_a.txt").read_text().split(), float)
    assert (row[5:8] == 0).all() and (row[8:11] == 0).all() and (row[11:][2::3] == 2).all()
    np.testing.assert_allclose(row[1:5], [52 / W, 25 / H, 24 / W, 30 / H], atol=1e-6)  # the mask's box
    assert m["counts"]["format_dropped"] == {"keypoints_outside_image": 2}


def test_coco_polygon_masks_fill_back_exactly_and_ignore_regions_stay_rle(output: str, tmp_path: Path) -> None:
    export_output(output, str(tmp_path / "rle"), "coco", ExportPolicy(min_pose_score=0.5))
    export_output(output, str(tmp_path / "poly"), "coco", ExportPolicy(min_pose_score=0.5),
                  ExportOptions(coco_segmentation="polygon", polygon_tolerance_px=0))
    rle, poly = COCO(str(tmp_path / "rle" / "train.json")), COCO(str(tmp_path / "poly" / "train.json"))
    assert rle.getAnnIds() == poly.getAnnIds()
    for a, b in zip(rle.loadAnns(rle.getAnnIds()), poly.loadAnns(poly.getAnnIds()), strict=True):
        assert isinstance(b["segmentation"], dict if b["iscrowd"] else list)
        np.testing.assert_array_equal(rle.annToMask(a), poly.annToMask(b))
        assert {**a, "segmentation": None} == {**b, "segmentation": None}
    recorded = json.loads((tmp_path / "poly" / "export.json").read_text())["options"]
    assert recorded == {"images_per_file": 50_000, "segmentation": "polygon", "polygon_tolerance_px": 0}


def test_decide_reports_the_first_failed_threshold_and_thresholds_are_inclusive() -> None:
    from bmp_core.output.export.policy import REASONS, Decision, decide
    from tests.export_fixtures import instances_from_people

    mask = box_mask(H, W, 2, 2, 20, 40)
    people = [
        Person(mask, det_score=0.5, pose_score=0.5, sam_score=0.5),  # exactly at every minimum: kept
        Person(mask, det_score=0.1, pose_score=0.1, sam_score=0.9),  # fails det and pose: det first
        Person(mask, det_score=0.9, pose_score=0.9, sam_score=None),  # never prompted
        Person(np.zeros((H, W), bool), det_score=0.9, pose_score=0.1, box_xyxy=(1, 1, 5, 5)),  # empty mask
    ]
    table = instances_from_people([0], [people])
    d = decide(table, ExportPolicy(min_det_score=0.5, min_pose_score=0.5, min_sam_score=0.5))
    assert d.decision.tolist() == [Decision.KEEP, Decision.IGNORE, Decision.IGNORE, Decision.DROP]
    assert [REASONS[r] if r >= 0 else None for r in d.reason.tolist()] == [
        None, "det_score", "sam_score", "pose_score"]
    lenient = decide(table, ExportPolicy(min_det_score=0.5, min_pose_score=0.05))
    assert lenient.decision.tolist()[2] == Decision.KEEP  # no SAM score passes a zero minimum
