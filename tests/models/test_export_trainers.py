"""The COCO export read by the trainers' own code: mmpose's and mmdet's ``CocoDataset`` see the
images, instances and ignore regions ``export.json`` counts, and one training iteration of
ViTPose-s (mmpose) and RTMDet-Ins-tiny (mmdet), random init on CPU, runs on it through their own
data pipelines and ``train_step`` with a finite loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mmdet")
pytest.importorskip("mmpose")

from bmp_core.models import _compat
from bmp_core.output.export.policy import ExportPolicy
from bmp_core.output.export.run import ExportOptions, export_output
from tests.export_fixtures import Image, Person, box_mask, default_keypoints, write_output

H, W = 96, 128


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """4 real PNGs with 3 people each (one below the pose threshold: an ignore region), exported."""
    from PIL import Image as PILImage

    root = tmp_path_factory.mktemp("trainers")
    rng = np.random.default_rng(0)
    images = []
    for i in range(4):
        pixels = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        people = []
        for k, (x0, x1) in enumerate(((4, 40), (44, 80), (84, 124))):
            mask = box_mask(H, W, x0, 8 + i, x1, 88)
            pixels[mask] = (200, 60 + 40 * k, 30)
            people.append(Person(mask, pose_score=0.2 if k == 2 else 0.8, keypoints=default_keypoints(mask, 0.9)))
        uri = str(root / f"img_{i}.png")
        PILImage.fromarray(pixels).save(uri)
        images.append(Image(uri, W, H, people=people))
    images.append(Image(str(root / "broken.png"), error="unreadable"))
    out = write_output(str(root / "out"), images, shard_size=2)
    dest = root / "coco"
    export_output(out, str(dest), "coco", ExportPolicy(min_pose_score=0.5))
    export_output(out, str(root / "coco_polygons"), "coco", ExportPolicy(min_pose_score=0.5),
                  ExportOptions(coco_segmentation="polygon"))
    return dest / "train.json", json.loads((dest / "export.json").read_text())


def test_mmdet_coco_dataset_sees_the_exported_counts(exported: tuple[Path, dict]) -> None:
    _compat.apply()
    from mmdet.datasets import CocoDataset

    ann_file, manifest = exported
    ds = CocoDataset(ann_file=str(ann_file), data_prefix={"img": ""}, metainfo={"classes": ("person",)},
                     filter_cfg=None, pipeline=[], test_mode=False)
    flags = [inst["ignore_flag"] for info in _infos(ds) for inst in info["instances"]]
    assert len(ds) == manifest["counts"]["images"]["train"] == 4
    assert flags.count(0) == manifest["counts"]["people"]["kept"] == 8
    assert flags.count(1) == manifest["counts"]["people"]["ignored"] == 4


def test_mmpose_coco_dataset_sees_the_exported_counts(exported: tuple[Path, dict]) -> None:
    _compat.apply()
    from mmpose.datasets import CocoDataset

    ann_file, manifest = exported
    topdown = CocoDataset(ann_file=str(ann_file), data_prefix={"img": ""}, data_mode="topdown", pipeline=[],
                          test_mode=False)
    assert len(topdown) == manifest["counts"]["people"]["kept"]  # crowd regions are not pose targets
    bottomup = CocoDataset(ann_file=str(ann_file), data_prefix={"img": ""}, data_mode="bottomup", pipeline=[],
                           test_mode=False)
    assert len(bottomup) == manifest["counts"]["images"]["train"]
    # ... and the ignore regions become bottom-up's "invalid_segs" (the ignore mask of its pipeline).
    assert sum(len(d["invalid_segs"]) for d in _infos(bottomup)) == manifest["counts"]["people"]["ignored"]


def _infos(dataset) -> list[dict]:
    """Every data info (mmengine serialises ``data_list`` away after loading)."""
    return [dataset.get_data_info(i) for i in range(len(dataset))]


def _collate(dataset, n: int) -> dict:
    from mmengine.dataset import pseudo_collate

    return pseudo_collate([dataset[i] for i in range(n)])


def test_one_vitpose_s_training_step(exported: tuple[Path, dict]) -> None:
    _compat.apply()
    from mmengine.optim import OptimWrapper
    from mmpose.datasets import CocoDataset
    from mmpose.registry import MODELS
    from mmpose.utils import register_all_modules

    from bmp_core.models.pose_maskpose import vitpose_model_config

    register_all_modules()
    torch.manual_seed(0)
    codec = {"type": "UDPHeatmap", "input_size": (192, 256), "heatmap_size": (48, 64), "sigma": 2}
    pipeline = [  # mmpose's ViTPose COCO train pipeline (configs/body_2d_keypoint/topdown_heatmap/coco)
        {"type": "LoadImage"},
        {"type": "GetBBoxCenterScale"},
        {"type": "RandomFlip", "direction": "horizontal"},
        {"type": "RandomHalfBody"},
        {"type": "RandomBBoxTransform"},
        {"type": "TopdownAffine", "input_size": codec["input_size"], "use_udp": True},
        {"type": "GenerateTarget", "encoder": codec},
        {"type": "PackPoseInputs"},
    ]
    ds = CocoDataset(ann_file=str(exported[0]), data_prefix={"img": ""}, data_mode="topdown", pipeline=pipeline)
    model = MODELS.build(vitpose_model_config("vitpose-s", 17, (192, 256)))
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3))
    losses = model.train_step(_collate(ds, 2), optim)
    assert "loss_kpt" in losses and all(torch.isfinite(v).all() for v in losses.values())


@pytest.mark.parametrize("segmentation", ["rle", "polygon"])
def test_one_rtmdet_ins_tiny_training_step(exported: tuple[Path, dict], segmentation: str) -> None:
    _compat.apply()
    from mmdet.datasets import CocoDataset
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.optim import OptimWrapper

    from bmp_core.config import DetectorModelConfig
    from bmp_core.models.detector_rtmdet import build_rtmdet_config

    register_all_modules()
    torch.manual_seed(0)
    mm_cfg = build_rtmdet_config(DetectorModelConfig(config="rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py",
                                                     num_classes=1))
    # RTMDet-Ins's own stage-2 train pipeline, at 320 px for CPU speed. RLE masks need poly2mask=True:
    # the shipped poly2mask=False turns every RLE mask into an ignored instance (docs/exports.md: Training on
    # the labels); the polygon export trains with the shipped setting unchanged.
    pipeline = [dict(step) for step in mm_cfg.train_pipeline_stage2]
    ann_file = exported[0] if segmentation == "rle" else exported[0].parent.parent / "coco_polygons" / "train.json"
    for step in pipeline:
        if step["type"] == "LoadAnnotations":
            assert step["poly2mask"] is False  # the shipped setting
            step["poly2mask"] = segmentation == "rle"
        if step["type"] == "RandomResize":
            step["scale"] = (320, 320)
        if step["type"] in ("RandomCrop",):
            step["crop_size"] = (320, 320)
        if step["type"] == "Pad":
            step["size"] = (320, 320)
    ds = CocoDataset(ann_file=str(ann_file), data_prefix={"img": ""}, metainfo={"classes": ("person",)},
                     pipeline=pipeline)
    # The crowd region travels as an ignored instance, the kept people as targets.
    sample = ds.pipeline(dict(ds.get_data_info(0)))
    assert len(sample["data_samples"].ignored_instances) <= 1 <= len(sample["data_samples"].gt_instances)
    model = MODELS.build(mm_cfg.model)
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3))
    losses = model.train_step(_collate(ds, 2), optim)
    assert {"loss_cls", "loss_bbox", "loss_mask"} <= set(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())


def test_rle_masks_are_ignored_by_mmdet_with_poly2mask_false(exported: tuple[Path, dict]) -> None:
    """Why docs/exports.md says poly2mask=True: with the shipped setting no exported person is a target."""
    _compat.apply()
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.transforms import LoadAnnotations

    ds = CocoDataset(ann_file=str(exported[0]), data_prefix={"img": ""}, metainfo={"classes": ("person",)},
                     filter_cfg=None, pipeline=[])
    info = ds.get_data_info(0)
    shipped = LoadAnnotations(with_bbox=True, with_mask=True, poly2mask=False)(dict(info, ori_shape=(H, W)))
    fixed = LoadAnnotations(with_bbox=True, with_mask=True, poly2mask=True)(dict(info, ori_shape=(H, W)))
    assert shipped["gt_ignore_flags"].all()
    assert fixed["gt_ignore_flags"].tolist() == [inst["ignore_flag"] == 1 for inst in info["instances"]]
    assert fixed["gt_masks"].masks.sum(axis=(1, 2)).tolist() == [int(a["area"]) for a in _anns(exported[0], 0)]
    # The polygon export under the shipped setting: the kept people are targets, the crowd region ignored.
    polys = CocoDataset(ann_file=str(exported[0].parent.parent / "coco_polygons" / "train.json"),
                        data_prefix={"img": ""}, metainfo={"classes": ("person",)}, filter_cfg=None, pipeline=[])
    poly_info = polys.get_data_info(0)
    loaded = LoadAnnotations(with_bbox=True, with_mask=True, poly2mask=False)(dict(poly_info, ori_shape=(H, W)))
    crowd = [inst["ignore_flag"] == 1 for inst in poly_info["instances"]]
    assert loaded["gt_ignore_flags"].tolist() == crowd and not all(crowd)
    masks = loaded["gt_masks"].to_ndarray()
    np.testing.assert_array_equal(masks[~np.array(crowd)], fixed["gt_masks"].masks[~np.array(crowd)])


def _anns(ann_file: Path, index: int) -> list[dict]:
    data = json.loads(ann_file.read_text())
    image_id = sorted(im["id"] for im in data["images"])[index]
    return [a for a in data["annotations"] if a["image_id"] == image_id]


def test_mmpose_reads_occluded_keypoints_as_labeled_and_absent_ones_as_not(tmp_path: Path) -> None:
    """v = 1 (occluded) and v = 2 (visible) are both ``keypoints_visible`` 1 for mmpose's CocoDataset (it
    trains on both), v = 0 (absent / unconfident) is 0; the raw flags stay in ``raw_ann_info``."""
    _compat.apply()
    from mmpose.datasets import CocoDataset

    mask = box_mask(H, W, 10, 8, 60, 88)
    kp = default_keypoints(mask, 0.9)
    kp[3, 2] = 0.1  # unconfident
    vis = np.where(np.arange(17) % 2 == 0, 0.9, 0.2).astype(np.float32)  # odd keypoints occluded
    pres = np.full(17, 0.9, np.float32)
    pres[5] = 0.1  # absent
    out = write_output(str(tmp_path / "out"), [Image(str(tmp_path / "a.png"), W, H,
                                                     people=[Person(mask, keypoints=kp, visibility=vis,
                                                                    presence=pres)])])
    export_output(out, str(tmp_path / "coco"), "coco", ExportPolicy())
    ds = CocoDataset(ann_file=str(tmp_path / "coco" / "train.json"), data_prefix={"img": ""}, data_mode="topdown",
                     pipeline=[], test_mode=False)
    (info,) = _infos(ds)
    want_v = np.where(np.arange(17) % 2 == 0, 2, 1)
    want_v[[3, 5]] = 0
    np.testing.assert_array_equal(np.array(info["raw_ann_info"]["keypoints"]).reshape(17, 3)[:, 2], want_v)
    np.testing.assert_array_equal(info["keypoints_visible"][0], np.minimum(want_v, 1))
    assert info["num_keypoints"] == 15
