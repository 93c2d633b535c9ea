"""User-given person boxes: a COCO detections or annotations file, matched to images by file name.

Two inputs are accepted:

- a COCO **annotations dataset** ``{"images": [...], "annotations": [{image_id, bbox, category_id,
  iscrowd?, score?}]}`` (ground truth, or a detector's output saved as a dataset); boxes without a
  ``score`` count as 1.0 and crowd regions (``iscrowd: 1``) are skipped;
- a COCO **results list** ``[{image_id, bbox, score, category_id}]`` (what detectors write for
  ``COCO.loadRes``), together with ``images_json_path``: a COCO dataset (e.g. the ground truth the
  detections were made on) or a bare list of ``{id, file_name}`` entries, for image id -> file name.
  Entries that carry their own ``file_name`` need no images file.

``bbox`` is COCO ``[x, y, width, height]`` in pixels; each image gets a ``GivenBoxes`` record of
``(N, 4) xyxy`` boxes and their ``(N,)`` scores. The scores matter: they become the instances'
``det_score``, by which COCO export and ``bmp-label eval`` rank masks and boxes (with 1.0 everywhere,
mask AP of the lite setup on the COCO test images drops from ~0.47 to ~0.22). Images are keyed by
their ``file_name`` as written in the file; ``GivenBoxIndex`` finds an image's entry from its URI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from bmp_core.coco_meta import PERSON_CATEGORY_ID
from bmp_core.config import BmpConfig
from bmp_core.errors import UserError
from bmp_core.io.image_matching import FileNameIndex


class GivenBoxes(NamedTuple):
    """The given people of one image (unpacks as ``boxes_xyxy, scores = record``)."""

    boxes_xyxy: np.ndarray  # (N, 4) float32 pixel boxes
    scores: np.ndarray  # (N,) float32; 1.0 for entries without a score (ground truth)


class GivenBoxesError(UserError, ValueError):
    """The given-boxes file is not a COCO results list / dataset, or cannot be matched to images."""

    default_hint = "job.given_boxes must be a COCO results list or dataset (docs/running-jobs.md)"


def _read_json(path: str) -> Any:
    from bmp_core.io.uris import read_bytes  # fsspec: local paths and s3:// alike

    try:
        return json.loads(read_bytes(path))
    except json.JSONDecodeError as err:
        raise GivenBoxesError(f"{path}: not valid JSON ({err})") from err


def _id_to_file_name(images: Any, where: str) -> dict[int, str]:
    if isinstance(images, dict):
        images = images.get("images")
    if not isinstance(images, list):
        raise GivenBoxesError(f"{where}: expected a COCO dataset with 'images', or [{{id, file_name}}]")
    try:
        return {int(im["id"]): str(im["file_name"]) for im in images}
    except (KeyError, TypeError, ValueError) as err:
        raise GivenBoxesError(f"{where}: every image entry needs 'id' and 'file_name' ({err!r})") from err


def parse_given_boxes(
    data: Any,
    id_to_file_name: Mapping[int, str] | None = None,
    score_thr: float = 0.0,
    category_id: int | None = PERSON_CATEGORY_ID,
) -> dict[str, GivenBoxes]:
    """Group COCO boxes and scores by image file name (the pure core of ``load_given_boxes``).

    Args:
        data: a parsed COCO results list or annotations dataset.
        id_to_file_name: image id -> file name; taken from ``data["images"]`` for a dataset.
        score_thr: keep boxes with ``score >= score_thr`` (a box without a score counts as 1.0).
        category_id: keep only this category (COCO person = 1); None keeps every category.

    Returns:
        file name -> ``GivenBoxes`` ((N, 4) float32 xyxy pixel boxes, (N,) float32 scores), in file
        order. Every image the mapping knows is present, an image without boxes with N = 0 (so "no
        people" differs from "unknown").

    Raises:
        GivenBoxesError: unknown layout, a results list without an id -> name mapping, a bad entry.
    """
    if isinstance(data, dict) and "annotations" in data:
        entries = data["annotations"]
        if id_to_file_name is None:
            id_to_file_name = _id_to_file_name(data, "the dataset")
    elif isinstance(data, list):
        entries = data
    else:
        raise GivenBoxesError("expected a COCO results list or a COCO dataset with 'annotations'")
    mapping = dict(id_to_file_name or {})
    grouped: dict[str, list[list[float]]] = {name: [] for name in mapping.values()}  # [x1, y1, x2, y2, score]
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or "bbox" not in entry:
            raise GivenBoxesError(f"entry {k} has no 'bbox': {entry!r}"[:200])
        if category_id is not None and entry.get("category_id", category_id) != category_id:
            continue
        score = float(entry.get("score", 1.0))
        if entry.get("iscrowd", 0) or score < score_thr:
            continue
        name = entry.get("file_name")
        if name is None:
            if "image_id" not in entry:
                raise GivenBoxesError(f"entry {k} has neither 'image_id' nor 'file_name'")
            if int(entry["image_id"]) not in mapping:
                raise GivenBoxesError(
                    f"entry {k}: image_id {entry['image_id']} is not in the images list"
                    + ("" if mapping else " (a results list needs images_json_path: its images' COCO file)")
                )
            name = mapping[int(entry["image_id"])]
        x, y, w, h = (float(v) for v in entry["bbox"])
        grouped.setdefault(str(name), []).append([x, y, x + w, y + h, score])
    out = {}
    for name, rows in grouped.items():
        table = np.asarray(rows, np.float32).reshape(-1, 5)
        out[name] = GivenBoxes(np.ascontiguousarray(table[:, :4]), np.ascontiguousarray(table[:, 4]))
    return out


def load_given_boxes(
    coco_json_path: str,
    score_thr: float = 0.0,
    images_json_path: str | None = None,
    category_id: int | None = PERSON_CATEGORY_ID,
) -> dict[str, GivenBoxes]:
    """Read person boxes and their scores from a COCO detections / annotations file (local path or URI).

    Args:
        coco_json_path: a COCO results list or a COCO annotations dataset.
        score_thr: keep boxes with ``score >= score_thr``.
        images_json_path: for a results list, the COCO dataset (or ``[{id, file_name}]`` list) that
            names its image ids; ignored for a dataset, which names its own.
        category_id: category to keep (person = 1); None keeps all.

    Returns:
        file name -> ``GivenBoxes(boxes_xyxy (N, 4), scores (N,))`` (see ``parse_given_boxes``).

    Example:
        >>> given = load_given_boxes("dets.json", 0.0, images_json_path="test_coco.json")
        >>> boxes_xyxy, scores = given["000000000785.jpg"]
        >>> boxes_xyxy.shape, scores.shape
        ((22, 4), (22,))
    """
    data = _read_json(coco_json_path)
    mapping = None
    if images_json_path is not None and not (isinstance(data, dict) and "images" in data):
        mapping = _id_to_file_name(_read_json(images_json_path), images_json_path)
    try:
        return parse_given_boxes(data, mapping, score_thr, category_id)
    except GivenBoxesError as err:
        raise GivenBoxesError(f"{coco_json_path}: {err}") from err


class GivenBoxIndex(FileNameIndex[GivenBoxes]):
    """Finds an image's given boxes from its URI with the one file-name rule (``image_matching.py``):
    the longest ``file_name`` whose every path component the URI ends with.

    ``file_name`` may be a bare name (``000000000785.jpg``) or a relative path (``val2017/...``).

    Example:
        >>> index = GivenBoxIndex(load_given_boxes("dets.json", images_json_path="gt.json"))
        >>> index.lookup("s3://bucket/coco/val2017/000000000785.jpg").boxes_xyxy.shape
        (22, 4)
    """

    def __init__(self, boxes_by_name: Mapping[str, GivenBoxes]) -> None:
        super().__init__(boxes_by_name.items())


def with_absolute_paths(cfg: BmpConfig) -> BmpConfig:
    """``cfg`` with its local ``job.given_boxes*`` paths made absolute (``~`` expanded), so that workers need
    not share the caller's directory; URIs of other filesystems (``s3://``) stay as they are. Every entry
    point calls it (the CLI, ``run_job``, ``BmpPredictor``), so they read the same files."""
    import dataclasses
    import os

    from bmp_core.io.uris import protocol_of

    def absolute(uri: str | None) -> str | None:
        if uri is None or protocol_of(uri) != "file":
            return uri
        return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))

    job = dataclasses.replace(cfg.job, given_boxes=absolute(cfg.job.given_boxes),
                              given_boxes_images=absolute(cfg.job.given_boxes_images))
    return cfg if job == cfg.job else dataclasses.replace(cfg, job=job)
