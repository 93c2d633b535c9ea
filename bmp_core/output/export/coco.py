"""The one COCO encoder: ``ExportShard`` -> COCO person-keypoints images and annotations, streamed.

Used by the export (``--format coco``: files of at most ``images_per_file`` images per split, plus
``index.json``) and by the job's own ``coco.json`` (one file, pass-all policy). An annotation:

- kept person: ``keypoints`` ``[x, y, v] * 17`` (v = the policy's ``keypoint_flags``: 2 visible, 1 present
  but occluded, else 0, 0, 0; without predicted visibility 2 at or above ``keypoint_thr``),
  ``num_keypoints``, ``bbox`` xywh (tight box of the refined mask; the detector box when the mask is
  empty), ``segmentation`` compressed RLE, ``area`` (mask pixels), ``iscrowd`` 0, ``score`` (pose
  score), ``det_score`` / ``sam_score`` extras;
- ignore region: the same with ``iscrowd`` 1, all 51 keypoint numbers 0 and ``num_keypoints`` 0
  (as COCO's own crowd annotations: mmpose, mmdet and pycocotools then skip it as a target and
  as background);
- dropped person (failed the policy, empty mask): no annotation.

Image ids are the job's ``image_id`` (unique in the output, so across files); annotation ids run
1, 2, ... over the whole export, in (split file, image, instance) write order, so unique across files.
Each file is valid on its own. ``"annotations"`` is written before ``"images"`` (JSON objects are
unordered): annotations stream straight to the file and only the small image entries of the open
file are held (about 100 bytes each, 5 MB at 50,000 images).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from bmp_core.coco_meta import PERSON_CATEGORY_ID, person_category
from bmp_core.output.export.policy import Decision
from bmp_core.output.export.source import ExportShard
from bmp_core.output.tables import boxes_array, keypoints_array

DEFAULT_IMAGES_PER_FILE = 50_000
INDEX_JSON = "index.json"
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


def coco_keypoints(keypoints: np.ndarray, score_thr: float,
                   flags: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 17, 3) ``(x, y, score)`` -> ((N, 51) COCO ``[x, y, v]``, (N,) num_keypoints = labeled ones).

    ``flags``: (N, 17) ``v`` per keypoint (``policy.keypoint_flags``, {0, 1, 2}); None: v = 2 where the
    score is >= ``score_thr``, else 0. An unlabeled keypoint is written 0, 0, 0."""
    if flags is None:
        flags = np.where(keypoints[:, :, 2] >= score_thr, 2, 0)
    labeled = flags > 0
    out = np.zeros_like(keypoints, dtype=np.float64)
    out[:, :, :2] = np.where(labeled[:, :, None], keypoints[:, :, :2], 0.0)
    out[:, :, 2] = np.where(labeled, flags, 0)
    return out.reshape(len(keypoints), -1), labeled.sum(axis=1)


def coco_boxes_xywh(instances) -> np.ndarray:
    """(N, 4) float64 COCO boxes: the refined mask's tight box, the detector box where the mask is empty."""
    det_boxes = boxes_array(instances, "bbox_xyxy")
    mask_boxes = boxes_array(instances, "mask_bbox_xyxy")
    boxes = np.where(np.isnan(mask_boxes).any(axis=1, keepdims=True), det_boxes, mask_boxes).astype(np.float64)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def coco_head(info: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"info": {"description": "BMP pseudo-labels (bmp-label)", **(info or {})}, "licenses": [],
            "categories": [person_category()]}


def image_entry(shard: ExportShard, i: int) -> dict[str, Any]:
    return {"id": int(shard.image_ids[i]), "file_name": shard.uris[i], "width": int(shard.widths[i]),
            "height": int(shard.heights[i])}


SEGMENTATION_RLE = "rle"
SEGMENTATION_POLYGON = "polygon"


class ShardAnnotations:
    """A shard's annotations encoded once (vectorised), handed out per image.

    ``segmentation``: ``rle`` (compressed RLE, exact) or ``polygon``: a kept person's mask as ONE COCO
    polygon (``bmp_core.ops.polygons.mask_polygon``: parts and holes joined by zero-width bridges,
    Douglas-Peucker at ``polygon_tolerance_px``), for pipelines that read polygons only (mmdet's
    ``LoadAnnotations(poly2mask=False)``, RTMDet's shipped setting). Ignore regions stay RLE (COCO's
    crowd convention); a person whose mask is empty keeps its (empty) RLE.
    """

    def __init__(self, shard: ExportShard, keypoint_thr: float, segmentation: str = SEGMENTATION_RLE,
                 polygon_tolerance_px: float = 1.0) -> None:
        if segmentation not in (SEGMENTATION_RLE, SEGMENTATION_POLYGON):
            raise ValueError(f"segmentation must be rle or polygon, got {segmentation!r}")
        inst = shard.instances
        self.shard = shard
        self._polygons = segmentation == SEGMENTATION_POLYGON
        self._tolerance = polygon_tolerance_px
        n = inst.num_rows
        if n:
            kpts51, num_kpts = coco_keypoints(keypoints_array(inst), keypoint_thr, shard.decisions.keypoint_flags)
            self._kpts = np.round(kpts51, 2).tolist()
            self._num_kpts = num_kpts.tolist()
            self._bbox = np.round(coco_boxes_xywh(inst), 2).tolist()
            self._counts = inst.column("mask_rle_counts").to_pylist()
            self._sizes = inst.column("mask_rle_size").to_pylist()
            self._cols = {c: inst.column(c).to_pylist() for c in ("mask_area", "pose_score", "det_score",
                                                                  "sam_score")}
        self._decision = shard.decisions.decision.tolist()

    def of_image(self, i: int) -> list[dict[str, Any]]:
        """Annotations (no ``id`` yet) of image ``i`` of the shard: kept people and ignore regions."""
        out = []
        image_id = int(self.shard.image_ids[i])
        for k in range(int(self.shard.starts[i]), int(self.shard.starts[i + 1])):
            decision = self._decision[k]
            if decision == Decision.DROP:
                continue
            crowd = decision == Decision.IGNORE
            rle = {"size": list(self._sizes[k]), "counts": self._counts[k]}
            out.append({
                "image_id": image_id,
                "category_id": PERSON_CATEGORY_ID,
                "keypoints": [0] * 51 if crowd else self._kpts[k],
                "num_keypoints": 0 if crowd else int(self._num_kpts[k]),
                "bbox": self._bbox[k],
                "segmentation": self._polygon(rle) if self._polygons and not crowd else rle,
                "area": float(self._cols["mask_area"][k]),
                "iscrowd": int(crowd),
                "score": float(self._cols["pose_score"][k]),
                "det_score": float(self._cols["det_score"][k]),
                "sam_score": self._cols["sam_score"][k],
            })
        return out


    def _polygon(self, rle: dict[str, Any]) -> Any:
        from bmp_core.ops.polygons import mask_polygon
        from bmp_core.ops.rle import decode_rle

        poly = mask_polygon(decode_rle([rle])[0], self._tolerance)
        if poly is None or len(poly) < 3:
            return rle
        return [np.round(poly.reshape(-1), 2).tolist()]


@dataclass(frozen=True)
class CocoFileInfo:
    """One written COCO file (``index.json`` and ``export.json`` list them)."""

    file: str
    split: str
    images: int
    annotations: int
    ignore_regions: int


class CocoFile:
    """One COCO file being streamed to ``fp``: ``add`` images one at a time, then ``close``."""

    def __init__(self, fp: IO[str], head: dict[str, Any], next_ann_id: Callable[[], int]) -> None:
        self._fp = fp
        self._next_id = next_ann_id
        self._images: list[str] = []
        self.annotations = 0
        self.ignore_regions = 0
        fp.write(_DUMPS(head)[:-1] + ',"annotations":[')

    @property
    def num_images(self) -> int:
        return len(self._images)

    def add(self, image: dict[str, Any], annotations: Iterable[dict[str, Any]]) -> None:
        self._images.append(_DUMPS(image))
        for ann in annotations:
            ann = {"id": self._next_id(), **ann}
            self._fp.write(("," if self.annotations else "") + _DUMPS(ann))
            self.annotations += 1
            self.ignore_regions += ann["iscrowd"]

    def close(self) -> None:
        self._fp.write('],"images":[' + ",".join(self._images) + "]}")


class AnnotationIds:
    """1, 2, 3, ... shared by every file of one export (annotation ids unique across files)."""

    def __init__(self) -> None:
        self.last = 0

    def __call__(self) -> int:
        self.last += 1
        return self.last


def write_coco_stream(fp: IO[str], shards: Iterable[ExportShard], keypoint_thr: float,
                      info: dict[str, Any] | None = None) -> CocoFileInfo:
    """All images of ``shards`` as one COCO file on ``fp`` (the job's ``coco.json``)."""
    out = CocoFile(fp, coco_head(info), AnnotationIds())
    for shard in shards:
        anns = ShardAnnotations(shard, keypoint_thr)
        for i in range(shard.num_images):
            out.add(image_entry(shard, i), anns.of_image(i))
    out.close()
    return CocoFileInfo(file="", split="all", images=out.num_images, annotations=out.annotations,
                        ignore_regions=out.ignore_regions)


class CocoSplitWriter:
    """The files of one split in ``dest`` (an ``OutputStore``): ``{split}.json`` when ``single``, else
    ``{split}-00000.json``, ``{split}-00001.json``, ... of at most ``images_per_file`` images each."""

    def __init__(self, dest, prefix: str, split: str, images_per_file: int, single: bool,
                 head: dict[str, Any], ids: AnnotationIds, stack: contextlib.ExitStack) -> None:
        self._dest, self._prefix, self.split = dest, prefix, split
        self._per_file, self._single, self._head, self._ids, self._stack = images_per_file, single, head, ids, stack
        self._file: CocoFile | None = None
        self._close_fp: Callable[[], Any] | None = None
        self._rel = ""
        self.files: list[CocoFileInfo] = []

    def add(self, image: dict[str, Any], annotations: list[dict[str, Any]]) -> None:
        if self._file is None:
            k = len(self.files)
            stem = f"{self._prefix}{self.split}"
            self._rel = f"{stem}.json" if self._single else f"{stem}-{k:05d}.json"
            cm = self._dest.open_text_for_write(self._rel)
            fp = cm.__enter__()
            self._close_fp = lambda: cm.__exit__(None, None, None)
            self._stack.callback(self._abort, cm)
            self._file = CocoFile(fp, self._head, self._ids)
        self._file.add(image, annotations)
        if not self._single and self._file.num_images >= self._per_file:
            self.finish()

    def _abort(self, cm) -> None:
        # Reached only when the export fails with this file open (``finish`` clears ``_file`` once the file's
        # last bytes are written): discard it, so no half file is left.
        if self._file is not None:
            cm.__exit__(RuntimeError, RuntimeError("export aborted"), None)
            self._file = None

    def finish(self) -> None:
        if self._file is None:
            return
        f = self._file
        f.close()  # the file's end (its images); if this write fails, _file is still set: _abort discards it
        self._file = None
        assert self._close_fp is not None
        self._close_fp()
        self.files.append(CocoFileInfo(self._rel, self.split, f.num_images, f.annotations, f.ignore_regions))


def write_coco_export(shards: Iterable[ExportShard], dest, keypoint_thr: float, images_per_file: int,
                      single: bool, tally, info: dict[str, Any] | None = None,
                      prefix: str = "", segmentation: str = SEGMENTATION_RLE,
                      polygon_tolerance_px: float = 1.0) -> list[CocoFileInfo]:
    """The ``--format coco`` files of ``shards`` in ``dest`` (an ``OutputStore``) and ``index.json``.

    Args:
        shards: ``ExportShard`` s in image-id order.
        images_per_file: the most images in one file (>= 1).
        single: the caller knows everything fits one file per split: name it ``train.json`` /
            ``val.json`` instead of ``train-00000.json``.
        tally: an ``ExportTally``, filled in.
        prefix: put in front of every file name (e.g. ``"coco/"``).
        segmentation, polygon_tolerance_px: as in ``ShardAnnotations``.

    Returns:
        the files written, train first.
    """
    if images_per_file < 1:
        raise ValueError(f"images_per_file must be >= 1, got {images_per_file}")
    head = coco_head(info)
    ids = AnnotationIds()
    with contextlib.ExitStack() as stack:
        writers = {s: CocoSplitWriter(dest, prefix, s, images_per_file, single, head, ids, stack)
                   for s in ("train", "val")}
        for shard in shards:
            tally.add_shard(shard)
            anns = ShardAnnotations(shard, keypoint_thr, segmentation, polygon_tolerance_px)
            for i, split in enumerate(shard.splits):
                writers[split].add(image_entry(shard, i), anns.of_image(i))
        for w in writers.values():
            w.finish()
    files = writers["train"].files + writers["val"].files
    dest.write_json(f"{prefix}{INDEX_JSON}", {
        "description": "COCO person-keypoints files of one bmp-label export; each file is valid on its own, "
                       "image and annotation ids are unique across files",
        "files": [f.__dict__ for f in files],
    })
    return files
