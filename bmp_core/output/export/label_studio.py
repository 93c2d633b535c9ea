"""``--format label-studio``: a review subset of N images for a labeling tool.

::

    DEST/tasks.json             Label Studio tasks: ``data.image`` + ``predictions`` (rectangles,
                                keypoints, polygons, each with its score)
    DEST/labeling_config.xml    the matching labeling config (paste it into the project's settings)
    DEST/review_coco.json       the same N images as COCO keypoints (CVAT: "COCO Keypoints 1.0" import;
                                ``file_name`` is the base name, which CVAT matches to the task's images)

Selection (``--review-by``), over the exported (``ok``) images that have at least one person:
``low-confidence``: lowest minimum pose score among the image's people (for PMPose runs the mean
predicted OKS, the model's own estimate of its accuracy); ``crowded``: most people;
``random``: an audit sample by a stable hash of the URI (salted, so it is independent of the split).
One pass, a heap of N: memory is N images' rows plus one shard.

Regions: a kept person is labeled ``person``, an ignore region ``ignore`` (so the reviewer sees the
policy's decision); dropped people are not shown. Unlabeled keypoints (``v = 0``, policy.keypoint_flags)
are not shown; occluded ones (``v = 1``) are (Label Studio keypoints carry no visibility flag; the
``review_coco.json`` beside them has it).
Coordinates are percentages of the image size, as Label Studio stores them.
"""

from __future__ import annotations

import hashlib
import heapq
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import pyarrow as pa

from bmp_core.coco_meta import KEYPOINT_NAMES
from bmp_core.ops.polygons import mask_polygon
from bmp_core.ops.rle import decode_rle
from bmp_core.output.export.coco import AnnotationIds, CocoFile, CocoFileInfo, ShardAnnotations, coco_head
from bmp_core.output.export.policy import Decision, ExportPolicy, PersonDecisions
from bmp_core.output.export.source import ExportShard
from bmp_core.output.tables import boxes_array, keypoints_array, rles_of

REVIEW_BY = ("low-confidence", "crowded", "random")
TASKS_JSON = "tasks.json"
CONFIG_XML = "labeling_config.xml"
REVIEW_COCO = "review_coco.json"
LABEL_PERSON = "person"
LABEL_IGNORE = "ignore"
# Control tag names of the labeling config; every prediction's from_name is one of these.
BOX, KEYPOINTS, POLYGON, IMAGE = "box", "keypoints", "mask", "image"


def labeling_config_xml() -> str:
    """The Label Studio labeling config the tasks' predictions refer to."""
    kpts = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in KEYPOINT_NAMES)
    regions = f'    <Label value="{LABEL_PERSON}" background="#2ca02c"/>\n' \
              f'    <Label value="{LABEL_IGNORE}" background="#7f7f7f"/>'
    return (
        "<View>\n"
        f'  <Image name="{IMAGE}" value="$image" zoom="true" zoomControl="true"/>\n'
        f'  <RectangleLabels name="{BOX}" toName="{IMAGE}">\n{regions}\n  </RectangleLabels>\n'
        f'  <PolygonLabels name="{POLYGON}" toName="{IMAGE}" opacity="0.3">\n{regions}\n  </PolygonLabels>\n'
        f'  <KeyPointLabels name="{KEYPOINTS}" toName="{IMAGE}">\n{kpts}\n  </KeyPointLabels>\n'
        "</View>\n"
    )


def review_key(review_by: str, uri: str, pose_scores: np.ndarray) -> float | None:
    """Smaller comes first; None: the image is not a candidate (no people)."""
    if not len(pose_scores):
        return None
    if review_by == "low-confidence":
        return float(np.min(pose_scores))
    if review_by == "crowded":
        return -float(len(pose_scores))
    if review_by == "random":
        return int.from_bytes(hashlib.sha256(f"review:{uri}".encode()).digest()[:8], "big") / 2.0**64
    raise ValueError(f"--review-by must be one of {', '.join(REVIEW_BY)}, got {review_by!r}")


@dataclass(frozen=True)
class ReviewImage:
    """One selected image with a copy of its people's rows (not a slice: no shard stays alive)."""

    key: float
    image_id: int
    uri: str
    width: int
    height: int
    split: str
    instances: pa.Table
    decision: np.ndarray
    reason: np.ndarray
    visible_keypoints: np.ndarray
    keypoint_flags: np.ndarray | None = None  # (N, 17) COCO v of the shown people (policy.keypoint_flags)


def select_review(shards: Iterable[ExportShard], n: int, review_by: str, tally) -> list[ReviewImage]:
    """The ``n`` images that sort first by ``review_key`` (ties: image id), in that order."""
    heap: list[tuple[float, int, int, ReviewImage]] = []  # max-heap by (-key, -image_id)
    for shard in shards:
        tally.add_shard(shard)
        dec = shard.decisions.decision
        pose = shard.instances.column("pose_score").to_numpy(zero_copy_only=False)
        for i in range(shard.num_images):
            lo, hi = int(shard.starts[i]), int(shard.starts[i + 1])
            shown = np.arange(lo, hi)[dec[lo:hi] != Decision.DROP]
            key = review_key(review_by, shard.uris[i], pose[shown])
            if key is None or n <= 0:
                continue
            image_id = int(shard.image_ids[i])
            if len(heap) == n and (-heap[0][0], -heap[0][1]) <= (key, image_id):
                continue
            item = ReviewImage(key, image_id, shard.uris[i], int(shard.widths[i]), int(shard.heights[i]),
                               shard.splits[i], shard.instances.take(shown), dec[shown].copy(),
                               shard.decisions.reason[shown].copy(), shard.decisions.visible_keypoints[shown].copy(),
                               None if shard.decisions.keypoint_flags is None
                               else shard.decisions.keypoint_flags[shown].copy())
            entry = (-key, -image_id, len(heap), item)
            if len(heap) < n:
                heapq.heappush(heap, entry)
            else:
                heapq.heapreplace(heap, entry)
    return [e[3] for e in sorted(heap, key=lambda e: (-e[0], -e[1]))]


def _mean_pose(instances: pa.Table) -> float:
    if not instances.num_rows:
        return 0.0
    return round(float(np.clip(np.mean(instances.column("pose_score").to_numpy(zero_copy_only=False)), 0, 1)), 4)


def _pct(values: np.ndarray, size: int) -> list[float]:
    return [round(float(v) * 100.0 / size, 4) for v in values]


def task_of(image: ReviewImage, policy: ExportPolicy, image_url_prefix: str,
            polygon_tolerance_px: float) -> dict[str, Any]:
    """One Label Studio task: the image and one prediction holding every shown region."""
    w, h = image.width, image.height
    inst = image.instances
    results: list[dict[str, Any]] = []
    base = {"to_name": IMAGE, "original_width": w, "original_height": h, "image_rotation": 0}
    if inst.num_rows:
        boxes = boxes_array(inst, "bbox_xyxy").astype(np.float64)
        kps = keypoints_array(inst)
        masks = decode_rle(rles_of(inst), h, w)
        det = inst.column("det_score").to_pylist()
        pose = inst.column("pose_score").to_pylist()
        ids = inst.column("instance_id").to_pylist()
        for k in range(inst.num_rows):
            label = LABEL_PERSON if image.decision[k] == Decision.KEEP else LABEL_IGNORE
            rid = f"{image.image_id}_{ids[k]}"
            x0, y0 = np.clip(boxes[k, :2], 0, [w, h])
            x1, y1 = np.clip(boxes[k, 2:], 0, [w, h])
            results.append({**base, "id": rid, "from_name": BOX, "type": "rectanglelabels", "score": det[k],
                            "value": {"x": _pct([x0], w)[0], "y": _pct([y0], h)[0],
                                      "width": _pct([x1 - x0], w)[0], "height": _pct([y1 - y0], h)[0],
                                      "rotation": 0, "rectanglelabels": [label]}})
            poly = mask_polygon(masks[k], polygon_tolerance_px)
            if poly is not None:
                pts = np.clip(poly, 0, [w, h])
                results.append({**base, "id": f"{rid}_mask", "from_name": POLYGON, "type": "polygonlabels",
                                "score": pose[k], "parentID": rid,
                                "value": {"points": [[round(x * 100.0 / w, 4), round(y * 100.0 / h, 4)]
                                                     for x, y in pts.tolist()], "polygonlabels": [label]}})
            if image.decision[k] != Decision.KEEP:
                continue
            for j, name in enumerate(KEYPOINT_NAMES):
                x, y, s = (float(v) for v in kps[k, j])
                labeled = s >= policy.keypoint_thr if image.keypoint_flags is None else image.keypoint_flags[k, j] > 0
                if not labeled or not (0 <= x <= w and 0 <= y <= h):
                    continue
                results.append({**base, "id": f"{rid}_kp{j}", "from_name": KEYPOINTS, "type": "keypointlabels",
                                "score": s, "parentID": rid,
                                "value": {"x": round(x * 100.0 / w, 4), "y": round(y * 100.0 / h, 4),
                                          "width": 0.5, "keypointlabels": [name]}})
    return {
        "id": image.image_id,
        "data": {IMAGE: image_url_prefix + image.uri, "uri": image.uri, "image_id": image.image_id,
                 "split": image.split, "review_key": image.key},
        # Label Studio wants a prediction score in [0, 1]: the people's mean pose score (the selection
        # key, which may be a negated count, is in data.review_key).
        "predictions": [{"model_version": "bmp-label", "score": _mean_pose(inst), "result": results}],
    }


def review_coco(images: list[ReviewImage], policy: ExportPolicy, fp, info: dict[str, Any] | None) -> CocoFileInfo:
    """The selected images as one COCO file (the shared encoder; ``file_name`` = base name for CVAT)."""
    out = CocoFile(fp, coco_head(info), AnnotationIds())
    for im in images:
        n = im.instances.num_rows
        shard = ExportShard(
            image_ids=[im.image_id], uris=[im.uri], widths=[im.width], heights=[im.height], splits=[im.split],
            instances=im.instances, starts=np.array([0, n]),
            decisions=PersonDecisions(im.decision, im.reason, im.visible_keypoints, im.keypoint_flags),
            num_failed_images=0)
        out.add({"id": im.image_id, "file_name": im.uri.rstrip("/").rsplit("/", 1)[-1], "width": im.width,
                 "height": im.height}, ShardAnnotations(shard, policy.keypoint_thr).of_image(0))
    out.close()
    return CocoFileInfo(REVIEW_COCO, "review", out.num_images, out.annotations, out.ignore_regions)


def write_review_export(shards: Iterable[ExportShard], dest, policy: ExportPolicy, n: int, review_by: str,
                        tally, image_url_prefix: str, info: dict[str, Any] | None,
                        polygon_tolerance_px: float) -> list[dict]:
    """Select and write the review subset into ``dest`` (an ``OutputStore``); returns its files' summary.

    ``polygon_tolerance_px``: the Douglas-Peucker tolerance of the tasks' mask polygons. No defaults here:
    ``export_output`` passes ``ExportOptions``' values (a second default once made the polygons ignore
    ``--polygon-tolerance``).
    """
    import json

    if review_by not in REVIEW_BY:
        raise ValueError(f"--review-by must be one of {', '.join(REVIEW_BY)}, got {review_by!r}")
    images = select_review(shards, n, review_by, tally)
    tasks = [task_of(im, policy, image_url_prefix, polygon_tolerance_px) for im in images]
    dest.write_bytes(TASKS_JSON, json.dumps(tasks, indent=1).encode())
    dest.write_bytes(CONFIG_XML, labeling_config_xml().encode())
    buf = io.StringIO()
    coco = review_coco(images, policy, buf, info)
    dest.write_bytes(REVIEW_COCO, buf.getvalue().encode())
    return [{"file": TASKS_JSON, "tasks": len(tasks), "review_by": review_by},
            {"file": CONFIG_XML}, coco.__dict__]
