"""``bmp-label export`` from an s3:// output to s3:// destinations (moto): the same files as locally."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
import yaml
from pycocotools.coco import COCO

from bmp_core.output.export.policy import ExportPolicy
from bmp_core.output.export.run import ExportOptions, export_output
from tests.export_fixtures import Image, Person, box_mask, write_output

from .conftest import BUCKET


def _images() -> list[Image]:
    return [Image(f"s3://{BUCKET}/photos/p{i}.jpg", 64, 48, people=[
        Person(box_mask(48, 64, 2, 2, 30, 40), pose_score=0.8),
        Person(box_mask(48, 64, 34, 2, 60, 40), pose_score=0.3 if i % 2 else 0.9),
    ]) for i in range(5)] + [Image(f"s3://{BUCKET}/photos/bad.jpg", error="unreadable")]


def test_export_s3_to_s3_matches_the_local_export(s3_endpoint: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    src = write_output(f"s3://{BUCKET}/labels/job1", _images(), shard_size=2)
    local_src = write_output(str(tmp_path / "job1"), _images(), shard_size=2)
    policy = ExportPolicy(min_pose_score=0.5, val_fraction=0.3)
    options = ExportOptions(images_per_file=2)
    remote = export_output(src, f"s3://{BUCKET}/exports/coco", "coco", policy, options)
    local = export_output(local_src, str(tmp_path / "coco"), "coco", policy, options)
    assert remote.counts == local.counts and remote.files == local.files
    for entry in remote.files:
        body = s3.get_object(Bucket=BUCKET, Key=f"exports/coco/{entry['file']}")["Body"].read()
        remote_coco, local_coco = json.loads(body), json.loads((tmp_path / "coco" / entry["file"]).read_text())
        assert remote_coco["info"]["source"] == src  # the only difference: where the labels came from
        assert {**remote_coco, "info": None} == {**local_coco, "info": None}
        (tmp_path / "r.json").write_bytes(body)
        coco = COCO(str(tmp_path / "r.json"))
        assert len(coco.getImgIds()) == entry["images"] and len(coco.getAnnIds(iscrowd=True)) == entry["ignore_regions"]
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="exports/coco/export.json")["Body"].read())
    assert manifest["source"] == src and manifest["counts"]["images_failed"] == 1

    # A rerun into the same prefix replaces the previous export whole (no stale train-0000N.json).
    assert len(remote.files) > 1
    again = export_output(src, f"s3://{BUCKET}/exports/coco", "coco", policy, ExportOptions())
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="exports/coco/")["Contents"]}
    names = [f["file"] for f in again.files]
    assert set(names) <= {"train.json", "val.json"}
    assert keys == {f"exports/coco/{n}" for n in [*names, "index.json", "export.json"]}

    # YOLO on S3: no symlinks; the list files name the source URIs, data.yaml the S3 prefix.
    yolo = export_output(src, f"s3://{BUCKET}/exports/yolo", "yolo-pose", policy, ExportOptions(link="auto"))
    data = yaml.safe_load(s3.get_object(Bucket=BUCKET, Key="exports/yolo/data.yaml")["Body"].read())
    assert data["path"] == f"s3://{BUCKET}/exports/yolo" and data["kpt_shape"] == [17, 3]
    listed = s3.get_object(Bucket=BUCKET, Key="exports/yolo/train.txt")["Body"].read().decode().split()
    assert listed and all(u.startswith(f"s3://{BUCKET}/photos/") for u in listed)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="exports/yolo/labels/")["Contents"]}
    assert len(keys) == sum(yolo.counts.images.values())

    review = export_output(src, f"s3://{BUCKET}/exports/review", "label-studio", policy, ExportOptions(review=2))
    tasks = json.loads(s3.get_object(Bucket=BUCKET, Key="exports/review/tasks.json")["Body"].read())
    assert len(tasks) == 2 == review.files[0]["tasks"]


def test_a_failed_export_to_s3_leaves_no_half_file(s3_endpoint: str, tmp_path: Path) -> None:
    """A source part unreadable half-way through (here: deleted) fails the export; on S3 the files it had
    finished stay whole, the one it was writing does not appear (not even as an open multipart upload), and
    the export does not look finished (no export.json)."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    images = [Image(f"s3://{BUCKET}/photos/q{i}.jpg", 64, 48, people=[
        Person(box_mask(48, 64, 2, 2, 30, 40), pose_score=0.9)]) for i in range(6)]
    src = write_output(f"s3://{BUCKET}/labels/broken", images, shard_size=2)
    part = next(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="labels/broken/instances/")["Contents"]
                if "shard-000002" in o["Key"])
    s3.delete_object(Bucket=BUCKET, Key=part)
    # 3 images a file, all train: train-00000.json fills up (2 + 1 images), train-00001.json is being
    # written (1 image) when the third shard cannot be read.
    with pytest.raises(FileNotFoundError, match="shard-000002"):
        export_output(src, f"s3://{BUCKET}/exports/broken", "coco", ExportPolicy(val_fraction=0.0),
                      ExportOptions(images_per_file=3))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="exports/broken/").get("Contents", [])]
    assert keys == ["exports/broken/train-00000.json"]
    assert s3.list_multipart_uploads(Bucket=BUCKET, Prefix="exports/broken/").get("Uploads", []) == []
    (tmp_path / "t.json").write_bytes(s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read())
    assert len(COCO(str(tmp_path / "t.json")).getImgIds()) == 3
