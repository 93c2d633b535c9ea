"""``instances`` + ``images`` tables -> a COCO person-keypoints dataset (the format mmpose/mmdet train from).

Only images with status ``ok`` become COCO images (failed ones have no size). Each instance becomes
an annotation with: ``keypoints`` as 51 numbers ``[x, y, v]*17`` (v = 2 where the keypoint score is
>= ``keypoint_score_thr``, else the keypoint is marked unlabeled 0, 0, 0 so training ignores it),
``num_keypoints``, ``bbox`` xywh (tight box of the refined mask, the detector box when the mask is
empty), ``segmentation`` as compressed RLE, ``area`` (mask pixels), ``score`` (pose score, the
reference's instance score), ``iscrowd`` 0, plus ``det_score`` / ``sam_score`` extras.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from collections.abc import Callable, Iterable
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bmp_core.coco_meta import PERSON_CATEGORY_ID, person_category
from bmp_core.output.tables import STATUS_OK, boxes_array, keypoints_array, rles_of



def coco_keypoints(keypoints: np.ndarray, score_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, 17, 3) ``(x, y, score)`` -> ((N, 51) COCO ``[x, y, v]`` with v in {0, 2}, (N,) num_keypoints)."""
    visible = keypoints[:, :, 2] >= score_thr
    out = np.zeros_like(keypoints, dtype=np.float64)
    out[:, :, :2] = np.where(visible[:, :, None], keypoints[:, :, :2], 0.0)
    out[:, :, 2] = np.where(visible, 2, 0)
    return out.reshape(len(keypoints), -1), visible.sum(axis=1)


@dataclass(frozen=True)
class CocoCounts:
    """What a COCO file holds."""

    images: int
    annotations: int


def write_coco_json(
    fp: IO[str],
    parts: Callable[[], Iterable[tuple[pa.Table, pa.Table]]],
    keypoint_score_thr: float = 0.3,
    info: dict[str, Any] | None = None,
) -> CocoCounts:
    """Stream the same dataset as ``coco_dataset`` to ``fp``, one part at a time.

    Memory stays at what ``parts`` holds at once (the job reads a window of 16 shards' parts
    ahead), however large the output is: the parts are read twice, once for ``images`` and once for
    ``annotations``.

    Args:
        fp: a text file open for writing.
        parts: returns an iterable of (images, instances) table pairs, in image-id order, each pair
            covering the same images; called twice.
        keypoint_score_thr, info: as in ``coco_dataset``.

    Returns:
        the number of images and annotations written.
    """
    head = {"info": {"description": "BMP pseudo-labels (bmp-label)", **(info or {})}, "licenses": [],
            "categories": [person_category()]}
    fp.write(json.dumps(head, separators=(",", ":"))[:-1] + ',"images":[')
    num_images = num_annotations = 0
    for images, instances in parts():
        for entry in coco_dataset(images, instances.slice(0, 0), keypoint_score_thr)["images"]:
            fp.write(("," if num_images else "") + json.dumps(entry, separators=(",", ":")))
            num_images += 1
    fp.write('],"annotations":[')
    for images, instances in parts():
        for ann in coco_dataset(images, instances, keypoint_score_thr)["annotations"]:
            ann["id"] = num_annotations + 1  # global ids continue across parts
            fp.write(("," if num_annotations else "") + json.dumps(ann, separators=(",", ":")))
            num_annotations += 1
    fp.write("]}")
    return CocoCounts(images=num_images, annotations=num_annotations)


def coco_dataset(
    images: pa.Table, instances: pa.Table, keypoint_score_thr: float = 0.3, info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build the COCO dict.

    Args:
        images: the ``images`` table (any row order).
        instances: the ``instances`` table.
        keypoint_score_thr: keypoints scoring below this are written as unlabeled (v = 0).
        info: extra ``info`` fields (tool, version, source output).

    Returns:
        ``{"info", "licenses", "images", "annotations", "categories"}``; annotation ids are 1-based,
        in (image_id, instance_id) order; image ids are the job's ``image_id``.
    """
    ok = images.filter(pc.equal(images.column("status"), STATUS_OK))
    ok = ok.sort_by("image_id")
    coco_images = [
        {"id": int(i), "file_name": uri, "width": int(w), "height": int(h)}
        for i, uri, w, h in zip(*(ok.column(c).to_pylist() for c in ("image_id", "uri", "width", "height")))
    ]
    inst = instances.filter(pc.is_in(instances.column("image_id"), value_set=ok.column("image_id").combine_chunks()))
    inst = inst.sort_by([("image_id", "ascending"), ("instance_id", "ascending")])
    annotations = _annotations(inst, keypoint_score_thr)
    return {
        "info": {"description": "BMP pseudo-labels (bmp-label)", **(info or {})},
        "licenses": [],
        "images": coco_images,
        "annotations": annotations,
        "categories": [person_category()],
    }


def _annotations(inst: pa.Table, keypoint_score_thr: float) -> list[dict[str, Any]]:
    if inst.num_rows == 0:
        return []
    kpts51, num_kpts = coco_keypoints(keypoints_array(inst), keypoint_score_thr)
    det_boxes = boxes_array(inst, "bbox_xyxy")
    mask_boxes = boxes_array(inst, "mask_bbox_xyxy")
    # The tight mask box is what COCO's bbox means for a segmented person; fall back to the detector box.
    boxes = np.where(np.isnan(mask_boxes).any(axis=1, keepdims=True), det_boxes, mask_boxes).astype(np.float64)
    bbox_xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    rles = rles_of(inst)
    cols = {c: inst.column(c).to_pylist() for c in ("image_id", "mask_area", "pose_score", "det_score", "sam_score")}
    out = []
    for k in range(inst.num_rows):
        out.append(
            {
                "id": k + 1,
                "image_id": cols["image_id"][k],
                "category_id": PERSON_CATEGORY_ID,
                "keypoints": [round(float(v), 2) for v in kpts51[k]],
                "num_keypoints": int(num_kpts[k]),
                "bbox": [round(float(v), 2) for v in bbox_xywh[k]],
                "segmentation": rles[k],
                "area": float(cols["mask_area"][k]),
                "iscrowd": 0,
                "score": float(cols["pose_score"][k]),
                "det_score": float(cols["det_score"][k]),
                "sam_score": cols["sam_score"][k],
            }
        )
    return out
