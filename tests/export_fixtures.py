"""Hand-built bmp-label outputs for the export tests and ``benchmarks/bench_export.py``.

An output made here is what a job leaves (``plan.json``, ``config.yaml``, committed shard parts and
markers), written through the library's own ``commit_shard``, so the exports read it through the
one reader. People are given column by column, so each test sets exactly the scores it checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from bmp_core.config import BmpConfig, dump_config
from bmp_core.ops.rle import encode_rle
from bmp_core.output import layout
from bmp_core.output.commits import commit_shard
from bmp_core.output.plan import Plan
from bmp_core.output.store import OutputStore
from bmp_core.output.tables import INSTANCES_SCHEMA, ImageRow, images_table


@dataclass(frozen=True)
class Person:
    """One person of a hand-built image; ``mask`` (H, W) bool, the box is the mask's unless given."""

    mask: np.ndarray
    det_score: float = 0.9
    pose_score: float = 0.8
    sam_score: float | None = 0.9
    keypoints: np.ndarray | None = None  # (17, 3) x, y, score; default: 17 points inside the mask, score 0.8
    box_xyxy: tuple[float, float, float, float] | None = None
    visibility: np.ndarray | None = None  # (17,) the pose model's P(visible); None: a model without it (null)
    presence: np.ndarray | None = None  # (17,) P(inside the crop); None: null


@dataclass(frozen=True)
class Image:
    uri: str
    width: int = 64
    height: int = 48
    error: str | None = None
    people: list[Person] = field(default_factory=list)


def box_mask(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def default_keypoints(mask: np.ndarray, score: float = 0.8) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    kp = np.zeros((17, 3), np.float32)
    if len(xs):
        idx = np.linspace(0, len(xs) - 1, 17).astype(int)
        kp[:, 0], kp[:, 1] = xs[idx] + 0.5, ys[idx] + 0.5
    kp[:, 2] = score
    return kp


def instances_from_people(image_ids: list[int], people: list[list[Person]]) -> pa.Table:
    """An ``instances`` table (``INSTANCES_SCHEMA``) of the given people."""
    rows: dict[str, list] = {name: [] for name in INSTANCES_SCHEMA.names}
    for image_id, persons in zip(image_ids, people, strict=True):
        for k, p in enumerate(persons):
            rle = encode_rle(p.mask[None])[0]
            ys, xs = np.nonzero(p.mask)
            mask_box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)] if len(xs) else None
            kp = p.keypoints if p.keypoints is not None else default_keypoints(p.mask)
            rows["image_id"].append(image_id)
            rows["instance_id"].append(k)
            rows["bbox_xyxy"].append(list(p.box_xyxy) if p.box_xyxy else (mask_box or [0.0, 0.0, 1.0, 1.0]))
            rows["det_score"].append(p.det_score)
            rows["pose_score"].append(p.pose_score)
            rows["sam_score"].append(p.sam_score)
            rows["keypoints"].append(np.asarray(kp, np.float32).tolist())
            rows["mask_rle_counts"].append(rle["counts"])
            rows["mask_rle_size"].append(rle["size"])
            rows["mask_area"].append(int(p.mask.sum()))
            rows["mask_bbox_xyxy"].append(mask_box)
            rows["det_mask_iou"].append(1.0)
            rows["iteration"].append(0)
            rows["prompted"].append(p.sam_score is not None)
            for name, value in (("keypoint_visibility", p.visibility), ("keypoint_presence", p.presence)):
                rows[name].append(None if value is None else np.asarray(value, np.float32).tolist())
    return pa.Table.from_pydict(rows, schema=INSTANCES_SCHEMA)


def write_output(uri: str, images: list[Image], shard_size: int = 2, keypoint_thr: float = 0.3) -> str:
    """Write ``images`` as a finished output at ``uri`` (local or s3://); image ids = list order."""
    store = OutputStore(uri)
    plan = Plan(num_images=len(images), shard_size=shard_size, listing_digest="hand-made", config_digest="hand-made")
    import dataclasses

    cfg = BmpConfig()
    cfg = dataclasses.replace(cfg, job=dataclasses.replace(cfg.job, coco_keypoint_thr=keypoint_thr))
    store.write_bytes(layout.CONFIG_YAML, dump_config(cfg).encode())
    store.write_json(layout.PLAN_JSON, plan.to_dict())
    for shard_id in range(plan.num_shards):
        start, stop = plan.shard_range(shard_id)
        ids = list(range(start, stop))
        rows = [ImageRow(i, images[i].uri, error=images[i].error,
                         width=None if images[i].error else images[i].width,
                         height=None if images[i].error else images[i].height,
                         num_instances=0 if images[i].error else len(images[i].people)) for i in ids]
        # An error image's people (none in a real job) are written too: the exports must skip them.
        people = [images[i].people for i in ids]
        commit_shard(store, plan.plan_id, shard_id, f"a1-{shard_id}", images_table(rows, shard_id),
                     instances_from_people(ids, people))
    return store.uri


def synthetic_shard(shard_id: int, image_ids: np.ndarray, rles: list[dict], width: int, height: int,
                    people_per_image: int, rng: np.random.Generator) -> tuple[pa.Table, pa.Table]:
    """A large synthetic shard, fast: ``people_per_image`` people per image, masks drawn from ``rles``
    (pre-encoded), random scores and keypoints (for the export benchmark)."""
    n_img = len(image_ids)
    rows = [ImageRow(int(i), f"/data/images/img_{int(i):09d}.jpg", width=width, height=height,
                     num_instances=people_per_image) for i in image_ids]
    images = images_table(rows, shard_id)
    n = n_img * people_per_image
    pick = rng.integers(0, len(rles), n)
    boxes = np.array([r["box"] for r in rles], np.float32)[pick]
    kp = np.empty((n, 17, 3), np.float32)
    kp[:, :, 0] = rng.uniform(boxes[:, None, 0], boxes[:, None, 2])
    kp[:, :, 1] = rng.uniform(boxes[:, None, 1], boxes[:, None, 3])
    kp[:, :, 2] = rng.uniform(0, 1, (n, 17))

    def fixed(values: np.ndarray, width_: int) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width_)

    areas = np.array([r["area"] for r in rles], np.int64)[pick]
    arrays = {
        "image_id": pa.array(np.repeat(image_ids, people_per_image).astype(np.int64)),
        "instance_id": pa.array(np.tile(np.arange(people_per_image, dtype=np.int32), n_img)),
        "bbox_xyxy": fixed(boxes, 4),
        "det_score": pa.array(rng.uniform(0.3, 1, n).astype(np.float32)),
        "pose_score": pa.array(kp[:, :, 2].mean(1)),
        "sam_score": pa.array(rng.uniform(0.5, 1, n).astype(np.float32)),
        "keypoints": pa.FixedSizeListArray.from_arrays(fixed(kp, 3), 17),
        "mask_rle_counts": pa.array([rles[k]["counts"] for k in pick.tolist()], pa.string()),
        "mask_rle_size": fixed(np.tile(np.array([height, width], np.int32), n), 2),
        "mask_area": pa.array(areas),
        "mask_bbox_xyxy": fixed(boxes, 4),
        "det_mask_iou": pa.array(np.ones(n, np.float32)),
        "iteration": pa.array(np.zeros(n, np.int32)),
        "prompted": pa.array(np.ones(n, bool)),
        "keypoint_presence": pa.nulls(n, INSTANCES_SCHEMA.field("keypoint_presence").type),
        "keypoint_visibility": pa.nulls(n, INSTANCES_SCHEMA.field("keypoint_visibility").type),
    }
    instances = pa.Table.from_arrays([arrays[k] for k in INSTANCES_SCHEMA.names], schema=INSTANCES_SCHEMA)
    return images, instances


def write_synthetic_output(uri: str, num_images: int, shard_size: int = 256, people_per_image: int = 5,
                           width: int = 640, height: int = 480, seed: int = 0) -> str:
    """A large synthetic output (benchmark): ``num_images`` images of ``people_per_image`` people."""
    store = OutputStore(uri)
    plan = Plan(num_images=num_images, shard_size=shard_size, listing_digest="synthetic", config_digest="synthetic")
    store.write_bytes(layout.CONFIG_YAML, dump_config(BmpConfig()).encode())
    store.write_json(layout.PLAN_JSON, plan.to_dict())
    rng = np.random.default_rng(seed)
    rles = []
    for _ in range(32):
        x0, y0 = int(rng.integers(0, width - 120)), int(rng.integers(0, height - 200))
        w, h = int(rng.integers(30, 120)), int(rng.integers(60, 200))
        rle = encode_rle(box_mask(height, width, x0, y0, x0 + w, y0 + h)[None])[0]
        rles.append({**rle, "box": [x0, y0, x0 + w, y0 + h], "area": w * h})
    for shard_id in range(plan.num_shards):
        start, stop = plan.shard_range(shard_id)
        images, instances = synthetic_shard(shard_id, np.arange(start, stop), rles, width, height,
                                            people_per_image, rng)
        commit_shard(store, plan.plan_id, shard_id, f"a1-{shard_id}", images, instances)
    return store.uri
