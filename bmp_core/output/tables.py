"""The ``images`` and ``instances`` tables: pyarrow schemas, rows from BMP results, readers.

``images``: one row per input image, labeled or failed. ``instances``: one row per person, keyed by
``(image_id, instance_id)``; ``instance_id`` is the 0-based index in the image's merge order. Masks
are stored as compressed COCO RLE (``mask_rle_counts`` + ``mask_rle_size`` = [height, width]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from bmp_core.ops.masks import mask_windows, windows_from_boxes
from bmp_core.ops.rle import encode_rle, rle_area
from bmp_core.records import NUM_KEYPOINTS, BmpResult

STATUS_OK = "ok"
STATUS_ERROR = "error"

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),  # index in the frozen sorted listing
        pa.field("uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # "ok" | "error"
        pa.field("error", pa.string()),  # the reason, null when ok
        pa.field("width", pa.int32()),  # pixels of the upright image, null on error
        pa.field("height", pa.int32()),
        pa.field("num_instances", pa.int32(), nullable=False),
        pa.field("read_s", pa.float32()),  # seconds reading bytes
        pa.field("decode_s", pa.float32()),  # seconds decoding
        pa.field("label_s", pa.float32()),  # seconds in the BMP loop (batched calls split evenly)
        pa.field("shard_id", pa.int32(), nullable=False),
        # Images inside a container (a WebDataset tar, a Parquet table); both null for loose files.
        pa.field("container_uri", pa.string()),  # the tar or Parquet file holding the image
        pa.field("key", pa.string()),  # tar: WebDataset __key__ of the member; Parquet: the --id-column value
    ]
)

INSTANCES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("instance_id", pa.int32(), nullable=False),  # 0-based, merge order (older passes first)
        pa.field("bbox_xyxy", pa.list_(pa.float32(), 4), nullable=False),  # detector box, pixels
        pa.field("det_score", pa.float32(), nullable=False),
        pa.field("pose_score", pa.float32(), nullable=False),  # mean of the 17 keypoint scores
        pa.field("sam_score", pa.float32()),  # null when SAM was not prompted
        # (17, 3) x, y, score
        pa.field("keypoints", pa.list_(pa.list_(pa.float32(), 3), NUM_KEYPOINTS), nullable=False),
        pa.field("mask_rle_counts", pa.string(), nullable=False),  # compressed COCO RLE counts
        pa.field("mask_rle_size", pa.list_(pa.int32(), 2), nullable=False),  # [height, width]
        pa.field("mask_area", pa.int64(), nullable=False),  # pixels
        pa.field("mask_bbox_xyxy", pa.list_(pa.float32(), 4)),  # tight box of the mask, null if empty
        pa.field("det_mask_iou", pa.float32(), nullable=False),
        pa.field("iteration", pa.int32(), nullable=False),  # 0-based BMP pass that found it
        pa.field("prompted", pa.bool_(), nullable=False),  # False: kept its detector mask
        # The pose model's per-keypoint P(inside the crop) and P(visible), PMPose / lite; null when the model
        # predicts none (MaskPose) and in outputs written before these columns existed (docs/output.md).
        pa.field("keypoint_presence", pa.list_(pa.float32(), NUM_KEYPOINTS)),
        pa.field("keypoint_visibility", pa.list_(pa.float32(), NUM_KEYPOINTS)),
    ]
)


# ``instances`` columns of per-keypoint model outputs (N, 17), nullable (docs/output.md).
PER_KEYPOINT_COLUMNS = ("keypoint_presence", "keypoint_visibility")

# A table's kind (also the folder of its parts, ``layout.TABLE_KINDS``) -> its schema.
TABLE_SCHEMAS = {"images": IMAGES_SCHEMA, "instances": INSTANCES_SCHEMA}


@dataclass(frozen=True)
class ImageRow:
    """What the worker knows about one image before it becomes an ``images`` row."""

    image_id: int
    uri: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    num_instances: int = 0
    read_s: float | None = None
    decode_s: float | None = None
    label_s: float | None = None
    container_uri: str | None = None
    key: str | None = None


def images_table(rows: list[ImageRow], shard_id: int) -> pa.Table:
    """``images`` rows, in the given order."""
    return pa.Table.from_pydict(
        {
            "image_id": [r.image_id for r in rows],
            "uri": [r.uri for r in rows],
            "status": [STATUS_OK if r.error is None else STATUS_ERROR for r in rows],
            "error": [r.error for r in rows],
            "width": [r.width for r in rows],
            "height": [r.height for r in rows],
            "num_instances": [r.num_instances for r in rows],
            "read_s": [r.read_s for r in rows],
            "decode_s": [r.decode_s for r in rows],
            "label_s": [r.label_s for r in rows],
            "shard_id": [shard_id] * len(rows),
            "container_uri": [r.container_uri for r in rows],
            "key": [r.key for r in rows],
        },
        schema=IMAGES_SCHEMA,
    )


def _fixed(values: np.ndarray, width: int, valid: np.ndarray | None = None) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values, np.float32).reshape(-1))
    mask = None if valid is None else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(flat, width, mask=mask)


def _rle_windows(masks: np.ndarray, mask_boxes_xyxy: np.ndarray) -> np.ndarray:
    """Windows to encode inside: the masks' tight boxes (the loop's contract), so only the people's
    pixels are read; a NaN box (an empty mask, by that contract) is searched whole rather than trusted,
    so Instances made elsewhere with unknown boxes cannot lose their pixels."""
    windows = windows_from_boxes(mask_boxes_xyxy)
    unknown = np.isnan(np.asarray(mask_boxes_xyxy, np.float64).reshape(-1, 4)).any(axis=1)
    if unknown.any():
        windows[unknown] = mask_windows(masks[unknown])
    return windows


def instances_table(image_ids: list[int], results: list[BmpResult]) -> pa.Table:
    """``instances`` rows of several images; masks are RLE-encoded here, never stored dense.

    Args:
        image_ids: one id per result.
        results: ``BmpResult`` of each image.
    """
    cols: dict[str, list[np.ndarray]] = {k: [] for k in INSTANCES_SCHEMA.names}
    counts: list[str] = []
    sizes: list[np.ndarray] = []
    for image_id, result in zip(image_ids, results, strict=True):
        inst = result.instances
        n = len(inst)
        if n == 0:
            continue
        rles = encode_rle(inst.masks, _rle_windows(inst.masks, inst.mask_boxes_xyxy))
        counts.extend(r["counts"] for r in rles)
        sizes.append(np.array([r["size"] for r in rles], np.int32))
        cols["image_id"].append(np.full(n, image_id, np.int64))
        cols["instance_id"].append(np.arange(n, dtype=np.int32))
        cols["bbox_xyxy"].append(inst.boxes_xyxy)
        cols["det_score"].append(inst.det_scores)
        cols["pose_score"].append(inst.pose_scores)
        cols["sam_score"].append(inst.sam_scores)
        cols["keypoints"].append(inst.keypoints)
        cols["mask_area"].append(rle_area(rles))
        cols["mask_bbox_xyxy"].append(inst.mask_boxes_xyxy)
        cols["det_mask_iou"].append(inst.det_mask_iou)
        cols["iteration"].append(inst.iteration)
        cols["prompted"].append(inst.prompted)
        cols["keypoint_presence"].append(inst.keypoint_presence)
        cols["keypoint_visibility"].append(inst.keypoint_visibility)
    if not counts:
        return INSTANCES_SCHEMA.empty_table()

    def cat(name: str, dtype: type) -> np.ndarray:
        return np.concatenate(cols[name]).astype(dtype)

    sam = cat("sam_score", np.float32)
    mask_boxes = cat("mask_bbox_xyxy", np.float32).reshape(-1, 4)
    keypoints = cat("keypoints", np.float32).reshape(-1, NUM_KEYPOINTS * 3)
    arrays = {
        "image_id": pa.array(cat("image_id", np.int64)),
        "instance_id": pa.array(cat("instance_id", np.int32)),
        "bbox_xyxy": _fixed(cat("bbox_xyxy", np.float32), 4),
        "det_score": pa.array(cat("det_score", np.float32)),
        "pose_score": pa.array(cat("pose_score", np.float32)),
        "sam_score": pa.array(sam, mask=np.isnan(sam)),
        "keypoints": pa.FixedSizeListArray.from_arrays(_fixed(keypoints, 3), NUM_KEYPOINTS),
        "mask_rle_counts": pa.array(counts, pa.string()),
        "mask_rle_size": pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(sizes).reshape(-1)), 2),
        "mask_area": pa.array(cat("mask_area", np.int64)),
        "mask_bbox_xyxy": _fixed(mask_boxes, 4, valid=~np.isnan(mask_boxes).any(axis=1)),
        "det_mask_iou": pa.array(cat("det_mask_iou", np.float32)),
        "iteration": pa.array(cat("iteration", np.int32)),
        "prompted": pa.array(cat("prompted", bool)),
        **{name: _per_keypoint(cat(name, np.float32)) for name in PER_KEYPOINT_COLUMNS},
    }
    return pa.Table.from_arrays([arrays[n] for n in INSTANCES_SCHEMA.names], schema=INSTANCES_SCHEMA)


def _per_keypoint(values: np.ndarray) -> pa.Array:
    """(N, 17) values -> a 17-list column, null for a row the model gave no values for (all NaN)."""
    values = values.reshape(-1, NUM_KEYPOINTS)
    return _fixed(values, NUM_KEYPOINTS, valid=~np.isnan(values).all(axis=1))


def per_keypoint_array(table: pa.Table, column: str) -> np.ndarray:
    """(N, 17) float32 of a per-keypoint column (``PER_KEYPOINT_COLUMNS``); NaN rows where it is null (a
    model without it, an output from before it existed) or the table lacks the column."""
    out = np.full((table.num_rows, NUM_KEYPOINTS), np.nan, np.float32)
    if column not in table.column_names or not table.num_rows:
        return out
    col = table.column(column).combine_chunks()
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if valid.any():
        out[valid] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, NUM_KEYPOINTS)
    return out


def keypoints_array(table: pa.Table) -> np.ndarray:
    """(N, 17, 3) float32 ``(x, y, score)`` from an ``instances`` table."""
    col = table.column("keypoints").combine_chunks()
    return col.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, NUM_KEYPOINTS, 3)


def boxes_array(table: pa.Table, column: str = "bbox_xyxy") -> np.ndarray:
    """(N, 4) float32 boxes; rows that are null (an empty mask's box) come back as NaN."""
    col = table.column(column).combine_chunks()
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    out = np.full((len(col), 4), np.nan, np.float32)
    if len(col):
        # flatten() skips null lists, so fill only the valid rows.
        out[valid] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, 4)
    return out


def rles_of(table: pa.Table) -> list[dict]:
    """The COCO RLEs (``{"size": [h, w], "counts": str}``) of an ``instances`` table's rows."""
    counts = table.column("mask_rle_counts").to_pylist()
    sizes = table.column("mask_rle_size").to_pylist()
    return [{"size": list(s), "counts": c} for c, s in zip(counts, sizes, strict=True)]
