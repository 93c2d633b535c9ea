"""The YOLO export's files read back by the Ultralytics rules (docs.ultralytics.com, datasets/pose and
datasets/segment): ``data.yaml`` read with ``yaml.safe_load``, the list files, each image's label file found
by replacing ``/images/`` with ``/labels/`` and the extension with ``.txt``, label lines split into numbers;
beside them ``images.csv`` read with the csv module and ``export.json``'s file summary.

Written for mutation testing of ``bmp_core/output/export/yolo.py`` (scripts/mutation.sh,
docs/mutation-scores.md): the layout, names, links and counts that the geometry tests leave unchecked.
The outputs are hand-built (tests/export_fixtures.py) and exported through ``export_output``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils

from bmp_core.coco_meta import FLIP_INDICES
from bmp_core.output.export.policy import ExportPolicy, split_score
from bmp_core.output.export.run import ExportOptions, ExportUsageError, export_output
from tests.export_fixtures import Image, Person, box_mask, default_keypoints, write_output

H, W = 48, 64


def _people(n: int) -> list[Person]:
    return [Person(box_mask(H, W, 4 + 12 * k, 4, 14 + 12 * k, 40)) for k in range(n)]


def _label_path(image_path: str) -> str:
    """Ultralytics' ``img2label_paths``: the last ``/images/`` -> ``/labels/``, the extension -> ``.txt``."""
    head, _, tail = image_path.rpartition("/images/")
    return f"{head}/labels/{tail.rsplit('.', 1)[0] if '.' in tail else tail}.txt"


def _csv_rows(data: bytes) -> list[dict[str, str]]:
    assert b"\r" not in data  # plain \n lines, like the list and label files
    reader = csv.DictReader(io.StringIO(data.decode()))
    assert reader.fieldnames == ["name", "split", "uri"]
    return list(reader)


def test_pose_export_with_symlinks_reads_back_by_the_ultralytics_rules(tmp_path: Path) -> None:
    photos, other = tmp_path / "photos", tmp_path / "other"
    photos.mkdir()
    other.mkdir()
    files = [photos / "My Photo.v2.JPG", photos / "scan_B", photos / "a.jpg", other / "a.jpg",
             photos / "Grüße.png", photos / "e.jpg"]
    for f in files:
        f.write_bytes(b"not decoded by the export")
    uris = [str(f) for f in files]
    uris[5] = "file://" + uris[5]  # a file:// URI links to the same local file
    counts = [2, 1, 3, 1, 2, 1]
    src = write_output(str(tmp_path / "out"), [Image(u, W, H, people=_people(n)) for u, n in zip(uris, counts,
                                                                                                strict=True)],
                       shard_size=4)
    dest = tmp_path / "yolo"
    scores = sorted(split_score(u) for u in uris)  # the tmp path changes the hashes: 3 in val, 3 in train
    manifest = export_output(src, str(dest), "yolo-pose", ExportPolicy(val_fraction=(scores[2] + scores[3]) / 2),
                             ExportOptions(link="symlink"))

    data = yaml.safe_load((dest / "data.yaml").read_text())
    assert data == {"path": str(dest), "train": "train.txt", "val": "val.txt", "names": {0: "person"},
                    "kpt_shape": [17, 3], "flip_idx": list(FLIP_INDICES)}
    # NAME = <image id, 9 digits>_<stem, runs of other characters than A-Z a-z 0-9 . _ - as one _>
    names = ["000000000_My_Photo.v2.JPG", "000000001_scan_B", "000000002_a.jpg", "000000003_a.jpg",
             "000000004_Gr_e.png", "000000005_e.jpg"]
    csv_rows = _csv_rows((dest / "images.csv").read_bytes())
    assert [r["name"] for r in csv_rows] == names and [r["uri"] for r in csv_rows] == uris

    seen, labels_per_split = [], {}
    for split in ("train", "val"):
        lines = (dest / data[split]).read_text().splitlines()
        labels_per_split[split] = 0
        for line in lines:
            assert line.startswith(f"./images/{split}/")
            image = dest / line[2:]
            i = names.index(image.name)
            assert image.is_symlink() and os.path.realpath(image) == os.path.realpath(files[i])
            assert csv_rows[i]["split"] == split
            rows = [np.array(r.split(), float) for r in Path(_label_path(str(image))).read_text().splitlines()]
            assert len(rows) == counts[i] and all(len(r) == 5 + 17 * 3 and r[0] == 0 for r in rows)
            labels_per_split[split] += len(rows)
            seen.append(i)
    assert sorted(seen) == list(range(6))
    n_images = {s: sum(r["split"] == s for r in csv_rows) for s in ("train", "val")}
    assert n_images == {"train": 3, "val": 3}  # several images (and label lines) in each split
    written = json.loads((dest / "export.json").read_text())
    assert written["files"] == manifest.files == [
        {"file": "data.yaml", "kind": "pose"},
        {"file": "train.txt", "split": "train", "images": n_images["train"], "labels": labels_per_split["train"]},
        {"file": "val.txt", "split": "val", "images": n_images["val"], "labels": labels_per_split["val"]},
    ]


@pytest.fixture
def memory_dest():
    """A DEST that is not local (fsspec's in-memory filesystem), removed afterwards."""
    root = f"/yolo-{uuid.uuid4().hex[:8]}"
    yield f"memory://{root}", root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_seg_export_to_a_remote_dest_lists_the_source_uris(tmp_path: Path, memory_dest) -> None:
    uri, root = memory_dest
    uris = ["/in/a.jpg", "s3://bucket/b.png", "/in/c.jpg"]
    src = write_output(str(tmp_path / "out"), [Image(u, W, H, people=_people(k + 1)) for k, u in enumerate(uris)])
    with pytest.raises(ExportUsageError, match="^--link symlink needs a local --to folder$"):
        export_output(src, uri, "yolo-seg", ExportPolicy(), ExportOptions(link="symlink"))
    manifest = export_output(src, uri, "yolo-seg", ExportPolicy(), ExportOptions(link="auto"))
    fs = fsspec.filesystem("memory")
    data = yaml.safe_load(fs.cat(f"{root}/data.yaml"))
    # no val split: Ultralytics needs one, so the train list doubles as val
    assert data == {"path": uri, "train": "train.txt", "val": "train.txt", "names": {0: "person"}}
    assert fs.cat(f"{root}/train.txt").decode() == "".join(u + "\n" for u in uris)
    assert fs.cat(f"{root}/val.txt") == b""
    rows = _csv_rows(fs.cat(f"{root}/images.csv"))
    assert [(r["name"], r["split"], r["uri"]) for r in rows] == [
        ("000000000_a.jpg", "train", uris[0]), ("000000001_b.png", "train", uris[1]),
        ("000000002_c.jpg", "train", uris[2])]
    for k, r in enumerate(rows):
        lines = fs.cat(f"{root}/labels/train/{r['name'].rsplit('.', 1)[0]}.txt").decode().splitlines()
        assert len(lines) == k + 1 and all(line.split()[0] == "0" for line in lines)
    assert manifest.files == [{"file": "data.yaml", "kind": "seg"},
                              {"file": "train.txt", "split": "train", "images": 3, "labels": 6},
                              {"file": "val.txt", "split": "val", "images": 0, "labels": 0}]


def test_auto_links_local_images_and_lists_remote_ones(tmp_path: Path) -> None:
    local = tmp_path / "a.jpg"
    local.write_bytes(b"x")
    uris = [str(local), "s3://bucket/b.jpg"]
    src = write_output(str(tmp_path / "out"), [Image(u, W, H, people=_people(1)) for u in uris])
    dest = tmp_path / "yolo"
    export_output(src, str(dest), "yolo-pose", ExportPolicy(), ExportOptions(link="auto"))
    assert (dest / "train.txt").read_text().splitlines() == ["./images/train/000000000_a.jpg", uris[1]]
    assert os.path.realpath(dest / "images" / "train" / "000000000_a.jpg") == os.path.realpath(local)
    with pytest.raises(ExportUsageError, match="^--link symlink needs local images; s3://bucket/b.jpg is not$"):
        export_output(src, str(tmp_path / "y2"), "yolo-pose", ExportPolicy(), ExportOptions(link="symlink"))


def test_ignore_area_at_the_fraction_is_kept_and_drops_are_counted(tmp_path: Path) -> None:
    unsure = {"pose_score": 0.3}  # below min_pose_score: an ignore region
    # two ignored people of 48 pixels each: 96 / (64 * 48) = 1/32 of the image, exactly the bound
    ignored = [Person(box_mask(H, W, 0, 0, 8, 6), **unsure), Person(box_mask(H, W, 10, 0, 18, 6), **unsure)]
    nothing = np.zeros((H, W), bool)
    outside = [Person(nothing, box_xyxy=(W + 1.0, 5.0, W + 9.0, 20.0)),
               Person(nothing, box_xyxy=(5.0, H + 1.0, 20.0, H + 9.0))]
    src = write_output(str(tmp_path / "out"), [Image("/in/a.jpg", W, H, people=ignored + outside + _people(2))])
    policy = ExportPolicy(min_pose_score=0.5, max_ignore_fraction=1 / 32)
    manifest = export_output(src, str(tmp_path / "y"), "yolo-pose", policy, ExportOptions(link="list"))
    assert manifest.to_dict()["counts"]["format_dropped"] == {"ignored_people_omitted": 2, "boxes_outside_image": 2}
    lines = (tmp_path / "y" / "labels" / "train" / "000000000_a.txt").read_text().splitlines()
    assert len(lines) == 2 and manifest.files[1]["labels"] == 2


def test_boxes_left_of_and_above_the_image_are_left_out(tmp_path: Path) -> None:
    nothing = np.zeros((H, W), bool)
    left = Person(nothing, box_xyxy=(-9.0, 5.0, -1.0, 20.0))  # both edges clip to 0: width 0
    above = Person(nothing, box_xyxy=(5.0, -9.0, 20.0, -1.0))
    src = write_output(str(tmp_path / "out"), [Image("/in/a.jpg", W, H, people=[left, above, *_people(1)])])
    manifest = export_output(src, str(tmp_path / "y"), "yolo-pose", ExportPolicy(), ExportOptions(link="list"))
    (line,) = (tmp_path / "y" / "labels" / "train" / "000000000_a.txt").read_text().splitlines()
    np.testing.assert_allclose(np.array(line.split(), float)[1:5] * [W, H, W, H], [9, 22, 10, 36], atol=1e-3)
    assert manifest.to_dict()["counts"]["format_dropped"] == {"boxes_outside_image": 2}


def test_seg_polygon_at_tolerance_zero_fills_back_to_a_round_mask(tmp_path: Path) -> None:
    yy, xx = np.mgrid[:H, :W]
    disk = (xx - 30) ** 2 + (yy - 22) ** 2 <= 15**2  # curved: any simplification changes its fill
    src = write_output(str(tmp_path / "out"), [Image("/in/a.jpg", W, H, people=[Person(disk)])])
    export_output(src, str(tmp_path / "s"), "yolo-seg", ExportPolicy(), ExportOptions(link="list",
                                                                                       polygon_tolerance_px=0))
    (line,) = (tmp_path / "s" / "labels" / "train" / "000000000_a.txt").read_text().splitlines()
    poly = (np.array(line.split(), float)[1:].reshape(-1, 2) * [W, H]).reshape(-1).tolist()
    filled = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], H, W)))
    np.testing.assert_array_equal(filled.astype(bool), disk)


def test_one_val_image_is_a_val_split(tmp_path: Path) -> None:
    uris = ["/in/a.jpg", "/in/b.jpg", "/in/c.jpg"]
    first = min(uris, key=split_score)
    src = write_output(str(tmp_path / "out"), [Image(u, W, H, people=_people(1)) for u in uris])
    policy = ExportPolicy(val_fraction=(split_score(first) + sorted(map(split_score, uris))[1]) / 2)
    export_output(src, str(tmp_path / "y"), "yolo-pose", policy, ExportOptions(link="list"))
    assert yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())["val"] == "val.txt"
    assert (tmp_path / "y" / "val.txt").read_text() == first + "\n"


def test_pose_flags_occluded_keypoints_1_and_absent_ones_0(tmp_path: Path) -> None:
    mask = box_mask(H, W, 8, 4, 28, 36)
    presence, visibility = np.ones(17, np.float32), np.ones(17, np.float32)
    presence[5] = 0.1  # confident, but predicted outside the crop: unlabeled
    visibility[6] = 0.1  # present but occluded
    person = Person(mask, keypoints=default_keypoints(mask, 0.9), visibility=visibility, presence=presence)
    src = write_output(str(tmp_path / "out"), [Image("/in/a.jpg", W, H, people=[person])])
    policy = ExportPolicy(keypoint_thr=0.5, keypoint_presence_thr=0.5, keypoint_visibility_thr=0.5)
    export_output(src, str(tmp_path / "y"), "yolo-pose", policy, ExportOptions(link="list"))
    (line,) = (tmp_path / "y" / "labels" / "train" / "000000000_a.txt").read_text().splitlines()
    triples = np.array(line.split(), float)[5:].reshape(17, 3)
    assert triples[:, 2].tolist() == [2] * 5 + [0, 1] + [2] * 10
    assert triples[5].tolist() == [0, 0, 0] and (triples[6, :2] > 0).all()
