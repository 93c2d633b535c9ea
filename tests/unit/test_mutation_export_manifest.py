"""``DEST/export.json`` (docs/exports.md) read back with the json module and checked against the
export's own files read by their readers: the COCO files with pycocotools (kept people are
``iscrowd = 0``, ignore regions ``iscrowd = 1``), the YOLO lists and label files by the Ultralytics
rules. The people the files cannot show (dropped: no mask; which threshold an ignored person failed)
are known from how the hand-built output was made.

Written for mutation testing of ``bmp_core/output/export/manifest.py`` (scripts/mutation.sh,
docs/mutation-scores.md). The outputs are hand-built (tests/export_fixtures.py) and exported through
``export_output``.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from bmp_core.output.export.manifest import ExportManifest, package_version
from bmp_core.output.export.policy import ExportPolicy
from bmp_core.output.export.run import ExportOptions, export_output
from tests.export_fixtures import Image, Person, box_mask, write_output

H, W = 48, 64
# The thresholds docs/exports.md lists, in its table's order: a person is counted under the first failed.
REASONS = ["det_score", "pose_score", "sam_score", "visible_keypoints", "mask_area"]
POLICY = ExportPolicy(min_det_score=0.5, min_pose_score=0.5, min_mask_area_px=20, val_fraction=0.5)
EMPTY = np.zeros((H, W), bool)

# name -> (person, what POLICY does with it, the reason); masks differ so pycocotools' masks name them
PEOPLE = {
    "kept": (Person(box_mask(H, W, 2, 2, 20, 40)), "kept", None),
    "low_det": (Person(box_mask(H, W, 22, 2, 40, 40), det_score=0.25), "ignored", "det_score"),
    "low_det_and_pose": (Person(box_mask(H, W, 42, 2, 60, 40), det_score=0.25, pose_score=0.25),
                         "ignored", "det_score"),
    "low_pose": (Person(box_mask(H, W, 2, 41, 20, 47), pose_score=0.25), "ignored", "pose_score"),
    "small": (Person(box_mask(H, W, 42, 44, 45, 46)), "ignored", "mask_area"),  # 6 pixels
    "no_mask_low_pose": (Person(EMPTY, pose_score=0.25, box_xyxy=(1, 1, 9, 9)), "dropped", "pose_score"),
    "no_mask": (Person(EMPTY, box_xyxy=(1, 1, 9, 9)), "dropped", "mask_area"),
}
# image -> its people (None: the image failed in the job); shards of 3 images
LAYOUT = [
    ["kept", "low_det", "no_mask_low_pose"],
    ["kept", "low_pose", "small", "no_mask"],
    None,
    ["low_det_and_pose"],
    [],
    ["kept", "kept", "no_mask", "low_det"],
    None,
    ["small", "no_mask_low_pose"],
    ["kept"],
    ["low_pose", "kept"],
]


def _output(root: Path) -> str:
    images = [Image(f"/data/photos/img_{i:02d}.jpg", error="unreadable image", people=[PEOPLE["kept"][0]])
              if names is None else Image(f"/data/photos/img_{i:02d}.jpg", W, H, people=[PEOPLE[n][0] for n in names])
              for i, names in enumerate(LAYOUT)]
    return write_output(str(root / "out"), images, shard_size=3)


def _name_of(coco: COCO, ann: dict) -> str:
    mask = coco.annToMask(ann).astype(bool)
    return next(n for n, (p, _, _) in PEOPLE.items() if p.mask.any() and np.array_equal(p.mask, mask))


def test_export_json_counts_what_pycocotools_reads_per_split_and_reason(tmp_path: Path) -> None:
    export_output(_output(tmp_path), str(tmp_path / "coco"), "coco", POLICY)
    written = json.loads((tmp_path / "coco" / "export.json").read_text())
    counts = written["counts"]

    split_of_image = {}
    per_split = {s: {"kept": 0, "ignored": 0, "dropped": 0} for s in ("train", "val")}
    reasons = {"ignored": dict.fromkeys(REASONS, 0), "dropped": dict.fromkeys(REASONS, 0)}
    for split in ("train", "val"):
        path = tmp_path / "coco" / f"{split}.json"
        if not path.exists():
            continue
        coco = COCO(str(path))
        for image_id in coco.getImgIds():
            split_of_image[image_id] = split
        for ann in coco.loadAnns(coco.getAnnIds()):
            name = _name_of(coco, ann)
            assert PEOPLE[name][1] == ("ignored" if ann["iscrowd"] else "kept")
            per_split[split][PEOPLE[name][1]] += 1
            if ann["iscrowd"]:
                reasons["ignored"][PEOPLE[name][2]] += 1
    # the dropped people are in no file: their image's split is the one its file says
    for image_id, names in enumerate(LAYOUT):
        for name in names or []:
            if PEOPLE[name][1] == "dropped":
                per_split[split_of_image[image_id]]["dropped"] += 1
                reasons["dropped"][PEOPLE[name][2]] += 1
    assert set(split_of_image.values()) == {"train", "val"}  # both splits hold images (fixed URIs)
    assert sorted(split_of_image) == [i for i, names in enumerate(LAYOUT) if names is not None]

    assert counts["images_seen"] == len(LAYOUT) and counts["images_failed"] == LAYOUT.count(None)
    assert counts["images"] == {s: list(split_of_image.values()).count(s) for s in ("train", "val")}
    assert counts["people_by_split"] == per_split
    assert counts["people"] == {k: per_split["train"][k] + per_split["val"][k] for k in ("kept", "ignored", "dropped")}
    # every reason is listed, 0 when nobody failed it (sam_score, visible_keypoints here)
    assert counts["ignored_by_reason"] == reasons["ignored"] and counts["dropped_by_reason"] == reasons["dropped"]
    assert counts["format_dropped"] == {}  # COCO leaves nobody out beyond the policy


def test_a_split_without_images_counts_zero_and_has_no_people_entry(tmp_path: Path) -> None:
    out = _output(tmp_path)
    export_output(out, str(tmp_path / "c"), "coco", ExportPolicy())
    counts = json.loads((tmp_path / "c" / "export.json").read_text())["counts"]
    coco = COCO(str(tmp_path / "c" / "train.json"))
    assert counts["images"] == {"train": len(coco.getImgIds()), "val": 0}
    # the pass-all policy (ExportPolicy()) keeps everybody, with a mask or not
    everybody = sum(len(names) for names in LAYOUT if names is not None)
    assert len(coco.getAnnIds()) == everybody and not coco.getAnnIds(iscrowd=True)
    assert counts["people_by_split"] == {"train": {"kept": everybody, "ignored": 0, "dropped": 0}}
    assert counts["people"] == {"kept": everybody, "ignored": 0, "dropped": 0}
    assert counts["ignored_by_reason"] == counts["dropped_by_reason"] == dict.fromkeys(REASONS, 0)


def test_yolo_counts_only_the_images_and_people_it_wrote(tmp_path: Path) -> None:
    """YOLO leaves out an image whose ignore regions cover too much: its people are counted nowhere
    but in ``format_dropped``; what is counted is what the list and label files hold."""
    out = _output(tmp_path)
    # 1 % of 64 x 48 = 30.7 pixels of ignore area: the 6-pixel person alone stays under it
    export_output(out, str(tmp_path / "y"), "yolo-pose", ExportPolicy(
        min_det_score=0.5, min_pose_score=0.5, min_mask_area_px=20, max_ignore_fraction=0.01), ExportOptions(
        link="list"))
    counts = json.loads((tmp_path / "y" / "export.json").read_text())["counts"]
    listed = (tmp_path / "y" / "train.txt").read_text().splitlines()
    label_lines = sum(len((tmp_path / "y" / "labels" / "train" / f"{i:09d}_img_{i:02d}.txt").read_text().splitlines())
                      for i in range(len(LAYOUT)) if f"/data/photos/img_{i:02d}.jpg" in listed)
    written = [i for i, names in enumerate(LAYOUT) if f"/data/photos/img_{i:02d}.jpg" in listed]
    assert written == [4, 7, 8]  # no ignored person, or only the 6-pixel one
    assert counts["images"] == {"train": 3, "val": 0} and counts["images_seen"] == len(LAYOUT)
    kept = sum(PEOPLE[n][1] == "kept" for i in written for n in LAYOUT[i])
    ignored = sum(PEOPLE[n][1] == "ignored" for i in written for n in LAYOUT[i])
    dropped = sum(PEOPLE[n][1] == "dropped" for i in written for n in LAYOUT[i])
    assert label_lines == kept == counts["people"]["kept"]
    assert counts["people"] == {"kept": kept, "ignored": ignored, "dropped": dropped}
    assert counts["people_by_split"] == {"train": counts["people"]}
    assert counts["ignored_by_reason"] == {**dict.fromkeys(REASONS, 0), "mask_area": 1}
    assert counts["dropped_by_reason"] == {**dict.fromkeys(REASONS, 0), "pose_score": 1}
    assert counts["format_dropped"] == {"images_ignore_area": 5, "ignored_people_omitted": 1}


def test_export_json_reads_back_old_and_new_versions(tmp_path: Path) -> None:
    export_output(_output(tmp_path), str(tmp_path / "c"), "coco", POLICY, policy_source="default:bmp+options")
    raw = (tmp_path / "c" / "export.json").read_bytes()
    written = json.loads(raw)
    assert written["bmp_label_version"] == version("bmp-label")  # the installed package's metadata
    assert written["policy_source"] == "default:bmp+options"
    # what docs/exports.md says export.json records, and nothing else
    assert set(written) == {"format", "source", "plan_id", "policy", "policy_source", "counts", "files", "options",
                            "bmp_label_version", "format_version"}
    manifest = ExportManifest.from_dict(written)
    assert manifest.to_json() == raw and manifest.to_dict() == written
    # the format version an export.json states is the one read back (a reader may refuse a newer one)
    assert ExportManifest.from_dict({**written, "format_version": 2}).format_version == 2
    # an export.json of an older version: no format_version, no policy_source (the options gave the policy)
    old = {k: v for k, v in written.items() if k not in ("format_version", "policy_source")}
    read = ExportManifest.from_dict(old)
    assert read.policy_source == "options" and read.format_version == written["format_version"]
    assert read.policy == POLICY and read.counts == manifest.counts
    # a newer version's extra counts are left out, the known ones kept
    newer = ExportManifest.from_dict({**written, "counts": {**written["counts"], "images_resized": 3}})
    assert newer.to_dict()["counts"] == written["counts"]
    with pytest.raises(TypeError):
        ExportManifest.from_dict({**written, "policy": {**written["policy"], "min_tan": 0.5}})


def test_without_installed_metadata_the_version_is_a_placeholder_below_any_release(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout run from its source folder (PYTHONPATH, not installed) has no metadata to name its version."""
    import importlib.metadata

    from packaging.version import Version

    release = version("bmp-label")
    assert package_version() == release

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    # What importlib.metadata does when no distribution of that name is on the path (hiding the path itself
    # is not enough: an editable install's bmp_label.egg-info in the checkout is found through the cwd).
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    placeholder = package_version()
    assert placeholder != release and Version(placeholder) < Version("0.0.1")
