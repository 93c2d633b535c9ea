"""COCO AP/AR of a bmp-label output against ground truth: keypoints (OKS), masks and boxes.

The numbers are pycocotools' own (``COCOeval``): this module only matches the output's images to the
ground truth's, turns ``instances`` rows into COCO result lists, and collects ``COCOeval.stats``.
OCHuman/CrowdPose-style ground truth that pycocotools cannot score (annotations without ``area``,
keypoint sets other than COCO-17) has its keypoints scored by xtcocotools, the COCO fork mmpose
uses, which takes ``use_area`` and ``sigmas`` arguments; its masks and boxes still go through
pycocotools (see ``CocoScorer``).

Images are matched by file name: a ground-truth ``file_name`` matches an output ``uri`` that ends with
it (``val2017/x.jpg`` or ``x.jpg``). Only matched images are scored; the rest are listed in the result
("missing_in_gt", "missing_in_output") instead of failing, so a labeled subset of a dataset can be
scored against the whole annotation file. A matched image the job failed on counts, with no
predictions (a failure is a miss).

Besides the whole output, each prefix of BMP passes is scored ("after pass k": instances with
``iteration <= k``), which shows what the later passes add.

Scores that rank predictions: the pose score for keypoints, the detector score for masks and boxes.

OKS scale (``oks_scale``): ``area`` is COCO's (each ground truth's ``area``); ``box`` is 0.53 x its box
area, xtcocotools' ``use_area=False``, the convention of mmpose's OCHuman numbers. ``auto`` takes ``box``
for ground truth without ``area`` (OCHuman's files) and for OCHuman-Pose (BMP v2's extension of OCHuman,
COCO format: recognised by "OCHuman-Pose" / "ochuman_pose" in its file name or its ``info``), so both
evaluate like OCHuman; ``area`` otherwise.

Where the ground truth has COCO visibility flags (v = 1 occluded and v = 2 visible among the matched
people's keypoints) and the output has predicted visibility (PMPose, lite), ``visibility`` also reports
how well it separates them (``bmp_core.analysis.visibility``).

Keypoint layouts (``keypoint_layout``): COCO's 17, and CrowdPose's 14 (12 body joints, head top,
neck), which the COCO-17 predictions are mapped onto: the 12 body joints are the same; the neck is
derived (the midpoint of the predicted shoulders); the head top has no COCO counterpart and is skipped
(not scored: dropped from the ground truth, with its sigma). OKS then uses CrowdPose's own sigmas,
and keypoint AP is also reported per crowd-index split (easy < 0.2 <= medium < 0.8 <= hard, the
CrowdPose evaluation code's thresholds, as in xtcocotools' ``keypoints_crowd``). Any other layout
is refused with a one-line ``EvaluationError``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bmp_core.analysis import visibility as vis_eval
from bmp_core.coco_meta import SIGMAS as COCO_SIGMAS
from bmp_core.io.image_matching import ImageMatch, match_images
from bmp_core.output.reader import JobOutput
from bmp_core.output.tables import boxes_array, keypoints_array, per_keypoint_array, rles_of

logger = logging.getLogger(__name__)

IOU_TYPES = ("keypoints", "segm", "bbox")
# COCOeval.summarize() order of ``stats``.
KEYPOINT_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
BOX_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# CrowdPose's keypoints in its files' order, and its OKS sigmas (its evaluation code's, also mmpose's
# configs/_base_/datasets/crowdpose.py). Its 12 body joints are COCO-17's joints 5..16, in order.
CROWDPOSE_KEYPOINTS = ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
                       "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
                       "right_ankle", "head", "neck")
CROWDPOSE_SIGMAS = np.array([.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79, .79]) / 10.0
# Crowd-index splits, [low, high): CrowdPose's evaluation code (and xtcocotools) split at 0.2 and 0.8.
CROWD_INDEX_SPLITS = {"easy": (0.0, 0.2), "medium": (0.2, 0.8), "hard": (0.8, float("inf"))}
CROWDPOSE_KEYPOINT_STATS = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard")
_COCO_BODY = slice(5, 17)  # COCO-17 joints that CrowdPose's first 12 are
_COCO_SHOULDERS = (5, 6)
__all__ = [  # ImageMatch and match_images are re-exported from image_matching
    "BOX_STATS", "CROWDPOSE_KEYPOINTS", "CROWDPOSE_KEYPOINT_STATS", "CROWDPOSE_SIGMAS",
    "CROWD_INDEX_SPLITS", "IOU_TYPES", "KEYPOINT_STATS", "CocoScorer", "EvaluationError", "ImageMatch",
    "KeypointLayout", "choose_backend", "crowdpose_from_coco17", "evaluate_output", "format_table",
    "keypoint_layout", "load_gt", "match_images", "needs_xtcocotools", "results_from_instances", "table_rows",
]
_MAX_LISTED = 100  # image names listed per "missing" kind in eval.json; the counts are always complete


@dataclass(frozen=True)
class ImageMatchCounts:
    """How the output's images matched the ground truth's (by file name, ``io.image_matching``)."""

    output: int  # images in the output
    gt: int  # images in the ground truth
    matched: int
    matched_failed: int  # matched images the job failed on (scored with no predictions)
    num_missing_in_gt: int
    num_missing_in_output: int
    num_ambiguous: int
    missing_in_gt: list[str]  # output URIs the ground truth lacks (the first _MAX_LISTED)
    missing_in_output: list[str]  # ground-truth file names the output lacks (the first _MAX_LISTED)
    ambiguous: list[Any]  # (the first _MAX_LISTED)


@dataclass(frozen=True)
class ScoredSubset:
    """The scores of one subset of the output's instances: all of them, or those found up to a pass."""

    num_predictions: int
    stats: dict[str, dict[str, float] | None]  # IoU type -> COCOeval stat -> value; None: nothing scored
    max_iteration: int | None = None  # instances with ``iteration <= max_iteration`` (0-based); None: all

    def to_dict(self) -> dict[str, Any]:
        head = {} if self.max_iteration is None else {"max_iteration": self.max_iteration}
        return {**head, "num_predictions": self.num_predictions, **self.stats}

    @classmethod
    def from_dict(cls, data: dict[str, Any], iou_types: Sequence[str]) -> ScoredSubset:
        return cls(int(data["num_predictions"]), {t: data.get(t) for t in iou_types}, data.get("max_iteration"))


@dataclass(frozen=True)
class EvaluationResult:
    """What ``evaluate_output`` found; ``to_dict`` is ``eval.json``, ``from_dict`` reads it back."""

    backend: dict[str, str]  # IoU type -> the library that scored it (pycocotools / xtcocotools)
    box_source: str
    iou_types: tuple[str, ...]
    images: ImageMatchCounts
    gt_without_mask: int  # ground-truth people without a segmentation (segm AP cannot match them)
    keypoint_layout: dict[str, Any]  # KeypointLayout.describe(), and CrowdPose's images per split
    overall: ScoredSubset  # every instance
    per_iteration: list[ScoredSubset]  # after each pass (empty for a single pass or per_iteration=False)
    oks_scale: str = "area"  # the OKS scale used: "area" (COCO's) or "box" (0.53 x box area, OCHuman's)
    visibility: vis_eval.VisibilityScore | None = None  # keypoint visibility AP; None: not computable
    gt: str | None = None  # where the ground truth was read (set by the CLI)
    output: str | None = None  # the output scored (set by the CLI)

    @property
    def crowdpose(self) -> bool:
        return self.keypoint_layout.get("name") == "crowdpose"

    def to_dict(self) -> dict[str, Any]:
        where = {k: v for k, v in (("gt", self.gt), ("output", self.output)) if v is not None}
        return {
            **where,
            "backend": self.backend,
            "box_source": self.box_source,
            "iou_types": list(self.iou_types),
            "images": dataclasses.asdict(self.images),
            "gt_without_mask": self.gt_without_mask,
            "keypoint_layout": self.keypoint_layout,
            "overall": self.overall.to_dict(),
            "per_iteration": [p.to_dict() for p in self.per_iteration],
            "oks_scale": self.oks_scale,
            "visibility": None if self.visibility is None else self.visibility.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        """An ``eval.json`` read back (an older one lacks ``keypoint_layout`` / ``gt_without_mask`` /
        ``oks_scale`` / ``visibility``)."""
        iou_types = tuple(data["iou_types"])
        visibility = data.get("visibility")
        return cls(
            backend=data.get("backend", {}), box_source=data.get("box_source", "detector"), iou_types=iou_types,
            images=ImageMatchCounts(**data["images"]), gt_without_mask=int(data.get("gt_without_mask", 0)),
            keypoint_layout=data.get("keypoint_layout", {}),
            overall=ScoredSubset.from_dict(data["overall"], iou_types),
            per_iteration=[ScoredSubset.from_dict(p, iou_types) for p in data.get("per_iteration", [])],
            oks_scale=data.get("oks_scale", "area"),
            visibility=None if visibility is None else vis_eval.VisibilityScore(**visibility),
            gt=data.get("gt"), output=data.get("output"),
        )


class EvaluationError(ValueError):
    """The ground truth cannot be scored as asked (the message says why and what to install)."""


@dataclass(frozen=True)
class KeypointLayout:
    """How the ground truth's keypoints are scored against COCO-17 predictions.

    ``name`` is ``"coco"`` or ``"crowdpose"``; ``scored`` the keypoints OKS uses, in order, with their
    ``sigmas``; ``derived`` says how a scored keypoint COCO-17 lacks is made from the prediction;
    ``skipped`` lists ground-truth keypoints no COCO-17 prediction can give, left out of OKS.
    """

    name: str
    scored: tuple[str, ...]
    sigmas: np.ndarray
    derived: dict[str, str] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The ``eval.json`` entry."""
        out: dict[str, Any] = {"name": self.name, "scored": list(self.scored), "derived": self.derived,
                               "skipped": list(self.skipped)}
        if self.name == "crowdpose":
            out["crowd_index_splits"] = {k: [lo, None if hi == float("inf") else hi]
                                         for k, (lo, hi) in CROWD_INDEX_SPLITS.items()}
        return out


COCO_LAYOUT = KeypointLayout("coco", tuple(f"coco_{k}" for k in range(17)), COCO_SIGMAS)
CROWDPOSE_LAYOUT = KeypointLayout(
    "crowdpose", CROWDPOSE_KEYPOINTS[:12] + ("neck",), np.delete(CROWDPOSE_SIGMAS, 12),
    derived={"neck": "midpoint of the predicted shoulders (score: the lower shoulder score)"},
    skipped=("head",),
)


def keypoint_layout(gt: dict[str, Any]) -> KeypointLayout:
    """The layout of the ground truth's person keypoints (its first category's ``keypoints`` names).

    COCO-17 is any 17-keypoint list (or none); CrowdPose is its 14 names in its order (``head`` may be
    spelled ``top_head``, as mmpose does).

    Raises:
        EvaluationError: any other layout, in one line naming both supported ones.
    """
    cats = [c for c in gt.get("categories", []) if "keypoints" in c]
    names = [str(n) for n in cats[0]["keypoints"]] if cats else []
    if not names or len(names) == len(COCO_SIGMAS):
        return COCO_LAYOUT
    if [("head" if n == "top_head" else n) for n in names] == list(CROWDPOSE_KEYPOINTS):
        return CROWDPOSE_LAYOUT
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    raise EvaluationError(
        f"ground truth has {len(names)} keypoints ({shown}): bmp-label eval scores COCO's 17 (nose, eyes, "
        "ears, shoulders ... ankles) or CrowdPose's 14 (left_shoulder, right_shoulder, ..., head, neck)"
    )


def crowdpose_from_coco17(keypoints: np.ndarray) -> np.ndarray:
    """(N, 17, 3) COCO keypoints -> (N, 13, 3) in ``CROWDPOSE_LAYOUT.scored`` order (12 joints, neck)."""
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 17, 3)
    left, right = keypoints[:, _COCO_SHOULDERS[0]], keypoints[:, _COCO_SHOULDERS[1]]
    neck = np.concatenate([(left[:, :2] + right[:, :2]) / 2, np.minimum(left[:, 2:], right[:, 2:])], axis=1)
    return np.concatenate([keypoints[:, _COCO_BODY], neck[:, None]], axis=1)


def _crowdpose_gt(gt: dict[str, Any]) -> dict[str, Any]:
    """A copy of CrowdPose ground truth with the head top dropped (13 scored keypoints).

    ``num_keypoints`` (which decides whether a person is ignored) is kept as the file says, except for
    a person whose only labeled keypoint was the head: with nothing left to score, it becomes 0.
    """
    gt = copy.deepcopy(gt)
    head = CROWDPOSE_KEYPOINTS.index("head")
    for cat in gt.get("categories", []):
        if "keypoints" in cat:
            cat["keypoints"] = list(CROWDPOSE_LAYOUT.scored)
            cat.pop("skeleton", None)  # its indices refer to the 14
    for a in gt["annotations"]:
        if a.get("keypoints") is None:
            continue
        kpts = np.asarray(a["keypoints"], np.float64).reshape(len(CROWDPOSE_KEYPOINTS), 3)
        kpts = np.delete(kpts, head, axis=0)
        a["keypoints"] = kpts.reshape(-1).tolist()
        labeled = int(np.count_nonzero(kpts[:, 2] > 0))
        a["num_keypoints"] = int(a.get("num_keypoints", labeled)) if labeled else 0
    return gt


def results_from_instances(
    instances: pa.Table, output_to_gt: dict[int, int], box_source: str = "detector"
) -> dict[str, list[dict[str, Any]]]:
    """COCO result lists (one per IoU type) from ``instances`` rows of matched images.

    Args:
        instances: ``instances`` table rows (any images; unmatched ones are dropped).
        output_to_gt: output ``image_id`` -> ground-truth image id.
        box_source: ``"detector"`` (the detector's box) or ``"mask"`` (the refined mask's tight box,
            the detector box where the mask is empty: what coco.json calls ``bbox``).

    Returns:
        ``{"keypoints": [...], "segm": [...], "bbox": [...]}``, category 1, in row order.
    """
    if box_source not in ("detector", "mask"):
        raise ValueError(f"box_source must be 'detector' or 'mask', got {box_source!r}")
    ids = np.array(list(output_to_gt), np.int64)
    rows = instances.filter(pc.is_in(instances.column("image_id"), value_set=pa.array(ids, pa.int64())))
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in IOU_TYPES}
    if rows.num_rows == 0:
        return out
    kpts = keypoints_array(rows).astype(np.float64)
    boxes = boxes_array(rows, "bbox_xyxy").astype(np.float64)
    if box_source == "mask":
        mask_boxes = boxes_array(rows, "mask_bbox_xyxy").astype(np.float64)
        boxes = np.where(np.isnan(mask_boxes).any(axis=1, keepdims=True), boxes, mask_boxes)
    boxes_xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    gt_ids = [output_to_gt[i] for i in rows.column("image_id").to_pylist()]
    pose_scores = rows.column("pose_score").to_pylist()
    det_scores = rows.column("det_score").to_pylist()
    for k, rle in enumerate(rles_of(rows)):
        base = {"image_id": gt_ids[k], "category_id": 1}
        out["keypoints"].append({**base, "keypoints": kpts[k].reshape(-1).tolist(), "score": pose_scores[k]})
        out["segm"].append({**base, "segmentation": rle, "score": det_scores[k]})
        out["bbox"].append({**base, "bbox": boxes_xywh[k].tolist(), "score": det_scores[k]})
    return out


def needs_xtcocotools(gt: dict[str, Any]) -> str | None:
    """Why pycocotools cannot score this ground truth (None when it can).

    A known keypoint layout other than COCO's (CrowdPose) is no reason: pycocotools takes its sigmas
    (``params.kpt_oks_sigmas``); a missing ``area`` is (pycocotools' OKS scale).
    """
    anns = gt.get("annotations", [])
    if any("area" not in a for a in anns):
        return "annotations without 'area' (OCHuman/CrowdPose style)"
    return None


OKS_SCALES = ("auto", "area", "box")
_OCHUMAN_POSE = re.compile(r"ochuman[-_ ]?pose", re.IGNORECASE)


def is_ochuman_pose(gt: dict[str, Any], path: str | None = None) -> bool:
    """Whether the ground truth is OCHuman-Pose (by its file name, or its ``info`` text)."""
    info = gt.get("info") if isinstance(gt.get("info"), dict) else {}
    texts = [path or "", *(str(v) for v in info.values())]
    return any(_OCHUMAN_POSE.search(t) for t in texts)


def box_oks_scale(gt: dict[str, Any], oks_scale: str = "auto", path: str | None = None) -> bool:
    """Whether keypoint OKS uses 0.53 x box area (``box``) rather than the annotations' ``area``.

    Raises:
        EvaluationError: ``area`` asked for ground truth without it.
    """
    if oks_scale not in OKS_SCALES:
        raise ValueError(f"oks_scale must be one of {OKS_SCALES}, got {oks_scale!r}")
    if oks_scale == "area" and needs_xtcocotools(gt):
        raise EvaluationError("--oks-scale area: this ground truth has annotations without 'area'; use box")
    if oks_scale != "auto":
        return oks_scale == "box"
    return needs_xtcocotools(gt) is not None or is_ochuman_pose(gt, path)


def _normalize_gt(gt: dict[str, Any]) -> dict[str, Any]:
    """A copy with the fields COCOeval reads filled in where a GT file leaves them out."""
    gt = copy.deepcopy(gt)
    cats = [c for c in gt.get("categories", []) if c.get("keypoints")]
    num_keypoints = len(cats[0]["keypoints"]) if cats else len(COCO_SIGMAS)
    gt.setdefault("info", {})
    gt.setdefault("licenses", [])
    for a in gt["annotations"]:
        a.setdefault("iscrowd", 0)
        if a.get("keypoints") is None:
            # A person annotated with a mask only: keypoint eval must ignore it (num_keypoints 0).
            a["keypoints"] = [0.0] * (3 * num_keypoints)
        if "num_keypoints" not in a:
            a["num_keypoints"] = int(np.count_nonzero(np.asarray(a["keypoints"])[2::3] > 0))
    return gt


def _coco_api(backend: str) -> tuple[Any, Any]:
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    try:
        from xtcocotools.coco import COCO
        from xtcocotools.cocoeval import COCOeval
    except ImportError as err:
        raise EvaluationError(
            "this ground truth needs xtcocotools: pip install Cython && pip install --no-build-isolation "
            "--no-binary xtcocotools xtcocotools (docs/analysis.md#numbers-bmp-label-eval)"
        ) from err
    return COCO, COCOeval


def choose_backend(gt: dict[str, Any], backend: str = "auto", box_scale: bool = False) -> str:
    """The keypoint backend, ``"pycocotools"`` or ``"xtcocotools"``, for ``auto|pycocotools|xtcocotools``;
    ``box_scale``: OKS on 0.53 x box area, which only xtcocotools computes.

    Raises:
        EvaluationError: pycocotools was asked for a ground truth it cannot score.
    """
    reason = needs_xtcocotools(gt) or ("OKS scale 0.53 x box area (OCHuman's convention)" if box_scale else None)
    if backend == "auto":
        return "xtcocotools" if reason else "pycocotools"
    if backend == "pycocotools" and reason:
        raise EvaluationError(f"pycocotools cannot score this ground truth ({reason}); use --backend xtcocotools")
    if backend not in ("pycocotools", "xtcocotools"):
        raise ValueError(f"unknown backend {backend!r}")
    return backend


class CocoScorer:
    """Scores result lists against one ground truth, on a fixed set of its images.

    Masks and boxes always go through pycocotools: where a ground-truth ``area`` is missing it is
    filled with the mask's pixel count (COCO's definition), or the box area without a mask. Keypoints
    go through ``keypoint_backend``; with xtcocotools and area-less ground truth, OKS uses
    xtcocotools' ``use_area=False`` scale (0.53 x box area), the convention mmpose's OCHuman and
    CrowdPose numbers use. (xtcocotools' own mask functions are not used: 1.14.3's ``_mask`` calls
    ``np.NPY_OWNDATA``, which numpy 2 removed.)

    Args:
        gt: the ground-truth dataset dict (COCO person keypoints format).
        image_ids: ground-truth image ids to score on.
        keypoint_backend: ``pycocotools`` or ``xtcocotools`` (see ``choose_backend``).
    """

    def __init__(self, gt: dict[str, Any], image_ids: Sequence[int], keypoint_backend: str,
                 layout: KeypointLayout = COCO_LAYOUT, box_scale: bool | None = None) -> None:
        self.layout = layout
        self.image_ids = sorted(int(i) for i in image_ids)
        self.backends = {"keypoints": keypoint_backend, "segm": "pycocotools", "bbox": "pycocotools"}
        normalized = _normalize_gt(gt)
        self._gts = {"pycocotools": _fill_area(_load_coco("pycocotools", copy.deepcopy(normalized)))}
        self._gt_of = {"keypoints": keypoint_backend, "segm": "pycocotools", "bbox": "pycocotools"}
        if keypoint_backend == "xtcocotools":
            self._gts["xtcocotools"] = _load_coco("xtcocotools", copy.deepcopy(normalized))
        self.gt_without_mask = sum(not a.get("segmentation") for a in normalized["annotations"])
        if self.gt_without_mask:
            self._gts["segm"] = _fill_area(_load_coco("pycocotools", _unmasked_as_crowd(normalized)))
            self._gt_of["segm"] = "segm"
        self._use_area = all("area" in a for a in gt["annotations"]) if box_scale is None else not box_scale
        crowd_index = {int(im["id"]): im.get("crowdIndex") for im in normalized.get("images", [])}
        # CrowdPose: the scored images of each crowd-index split (images without a crowdIndex in none).
        self.crowd_splits = {
            name: [i for i in self.image_ids if crowd_index.get(i) is not None and lo <= crowd_index[i] < hi]
            for name, (lo, hi) in CROWD_INDEX_SPLITS.items()
        } if layout.name == "crowdpose" else {}

    def stat_names(self, iou_type: str) -> tuple[str, ...]:
        if iou_type != "keypoints":
            return BOX_STATS
        return CROWDPOSE_KEYPOINT_STATS if self.layout.name == "crowdpose" else KEYPOINT_STATS

    def score(self, results: list[dict[str, Any]], iou_type: str) -> dict[str, float | None] | None:
        """COCOeval ``stats`` by name; all 0 without predictions; None without ground truth either.

        CrowdPose keypoints: AP/AR at OKS .50:.95, .50, .75 and the AP of each crowd-index split
        (None for a split without images).
        """
        names = self.stat_names(iou_type)
        if not results or not self.image_ids:
            # pycocotools' loadRes cannot take an empty list; nobody found among real people is AP 0.
            has_gt = any(self._gts["pycocotools"].getAnnIds(imgIds=self.image_ids, iscrowd=False))
            return dict.fromkeys(names, 0.0) if has_gt and self.image_ids else None
        backend = self.backends[iou_type]
        gt = self._gts[self._gt_of[iou_type]]
        _, eval_cls = _coco_api(backend)
        crowdpose = iou_type == "keypoints" and self.layout.name == "crowdpose"
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            dt = gt.loadRes(copy.deepcopy(results))  # loadRes adds fields to the dicts it gets

            def evaluated(image_ids: list[int]) -> Any:
                if backend == "xtcocotools":
                    # keypoints_crowd: CrowdPose's rule, a person is ignored when num_keypoints is 0.
                    ev = eval_cls(gt, dt, "keypoints_crowd" if crowdpose else iou_type,
                                  sigmas=self.layout.sigmas, use_area=self._use_area)
                else:
                    ev = eval_cls(gt, dt, iou_type)
                    if iou_type == "keypoints":
                        ev.params.kpt_oks_sigmas = self.layout.sigmas
                ev.params.imgIds = image_ids
                ev.evaluate()
                ev.accumulate()
                return ev

            ev = evaluated(self.image_ids)
            if not crowdpose:
                ev.summarize()
                return {name: float(v) for name, v in zip(names, ev.stats, strict=True)}
            # xtcocotools' own CrowdPose summary re-reads the annotation file from disk; the same
            # numbers are computed here from the accumulated precision / recall.
            stats: dict[str, float | None] = dict(_keypoint_summary(ev))
            for split, ids in self.crowd_splits.items():
                stats[f"AP_{split}"] = _keypoint_summary(evaluated(ids))["AP"] if ids else None
        return stats


def _keypoint_summary(ev: Any) -> dict[str, float]:
    """AP/AR over OKS .50:.95, at .50 and at .75 (all areas, 20 detections), as COCOeval.summarize."""
    p, precision, recall = ev.params, ev.eval["precision"], ev.eval["recall"]  # [T,R,K,A,M], [T,K,A,M]
    m = list(p.maxDets).index(20)

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(valid.mean()) if valid.size else -1.0

    out = {}
    thresholds = (("", slice(None)), ("50", np.isclose(p.iouThrs, 0.5)), ("75", np.isclose(p.iouThrs, 0.75)))
    for suffix, t in thresholds:
        out[f"AP{suffix}"] = mean(precision[t, :, :, 0, m])
        out[f"AR{suffix}"] = mean(recall[t, :, 0, m])
    return {name: out[name] for name in ("AP", "AP50", "AP75", "AR", "AR50", "AR75")}


def _unmasked_as_crowd(gt: dict[str, Any]) -> dict[str, Any]:
    """For mask AP: a person annotated without a mask becomes a crowd region over their box.

    COCOeval neither rewards nor penalises predictions inside a crowd region, which is the honest
    score for a mask nobody drew (the alternative, dropping the person, would make a correct
    prediction a false positive).
    """
    gt = copy.deepcopy(gt)
    for a in gt["annotations"]:
        if not a.get("segmentation"):
            x, y, w, h = a["bbox"]
            a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            a["iscrowd"] = 1
    return gt


def _load_coco(backend: str, dataset: dict[str, Any]) -> Any:
    coco_cls, _ = _coco_api(backend)
    coco = coco_cls()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _fill_area(coco: Any) -> Any:
    """Give every annotation of a pycocotools ``COCO`` an ``area`` (mask pixels, else box area)."""
    from pycocotools import mask as mask_utils

    for ann in coco.dataset["annotations"]:  # the index holds these same dicts
        if "area" in ann:
            continue
        if ann.get("segmentation"):
            ann["area"] = float(mask_utils.area(coco.annToRLE(ann)))
        else:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return coco


def _subset(results: dict[str, list[dict[str, Any]]], keep: np.ndarray) -> dict[str, list[dict[str, Any]]]:
    return {t: [r for r, k in zip(rs, keep, strict=True) if k] for t, rs in results.items()}


def evaluate_output(
    output: JobOutput,
    gt: dict[str, Any],
    iou_types: Sequence[str] = IOU_TYPES,
    backend: str = "auto",
    box_source: str = "detector",
    per_iteration: bool = True,
    progress: bool = False,
    oks_scale: str = "auto",
    gt_path: str | None = None,
) -> EvaluationResult:
    """Score an output against ground truth: overall and after each BMP pass.

    Args:
        output: the loaded output.
        gt: ground-truth dataset dict.
        iou_types: subset of ``("keypoints", "segm", "bbox")``.
        backend: ``auto`` (xtcocotools only where pycocotools cannot), ``pycocotools`` or ``xtcocotools``.
        box_source: see ``results_from_instances``.
        per_iteration: also score instances found up to each pass.
        progress: show a tqdm bar (one step per COCOeval run).
        oks_scale: ``auto``, ``area`` or ``box`` (module docstring).
        gt_path: the ground truth's file name, for recognising OCHuman-Pose.

    Returns:
        ``EvaluationResult`` (``to_dict()``: the ``eval.json`` dict): ``images`` (matching counts and
        lists), ``overall`` and ``per_iteration`` (``ScoredSubset``s: predictions and stats per IoU type),
        ``oks_scale`` and ``visibility`` (a ``VisibilityScore``, or None).
    """
    unknown = set(iou_types) - set(IOU_TYPES)
    if unknown:
        raise ValueError(f"unknown iou types {sorted(unknown)}; choose from {IOU_TYPES}")
    layout = keypoint_layout(gt)
    if layout.name == "crowdpose":
        gt = _crowdpose_gt(gt)
    box_scale = box_oks_scale(gt, oks_scale, gt_path)
    backend = choose_backend(gt, backend, box_scale)
    images = output.images
    ids_uris = zip(images.column("image_id").to_pylist(), images.column("uri").to_pylist(), strict=True)
    match = match_images(list(ids_uris),
                         gt.get("images", []))
    failed_ids = set(images.filter(pc.not_equal(images.column("status"), "ok")).column("image_id").to_pylist())
    results = results_from_instances(output.instances, match.output_to_gt, box_source)
    if layout.name == "crowdpose" and results["keypoints"]:
        mapped = crowdpose_from_coco17(np.array([r["keypoints"] for r in results["keypoints"]]))
        for r, kpts in zip(results["keypoints"], mapped, strict=True):
            r["keypoints"] = kpts.reshape(-1).tolist()
    matched_rows = output.instances.filter(
        pc.is_in(output.instances.column("image_id"), value_set=pa.array(list(match.output_to_gt), pa.int64()))
    )
    iterations = matched_rows.column("iteration").to_numpy()
    scorer = CocoScorer(gt, list(match.output_to_gt.values()), backend, layout, box_scale)

    num_passes = int(iterations.max()) + 1 if per_iteration and len(iterations) else 1
    subsets = [iterations <= k for k in range(num_passes - 1)] + [np.ones(len(iterations), bool)]
    from tqdm import tqdm

    bar = tqdm(total=len(subsets) * len(iou_types), desc="eval", unit="score", disable=not progress)
    scored = []
    for keep in subsets:
        sub = _subset(results, keep)
        stats = {}
        for t in iou_types:
            stats[t] = scorer.score(sub[t], t)
            bar.update()
        scored.append((int(keep.sum()), stats))
    bar.close()
    overall = ScoredSubset(*scored[-1])
    # "after the last pass" is the whole output: reuse its scores instead of computing them twice.
    passes = [ScoredSubset(n, stats, k) for k, (n, stats) in enumerate(scored)] if num_passes > 1 else []
    return EvaluationResult(
        backend=scorer.backends,
        box_source=box_source,
        iou_types=tuple(iou_types),
        images=_image_summary(match, len(images), len(gt.get("images", [])), failed_ids),
        gt_without_mask=scorer.gt_without_mask,
        keypoint_layout={**layout.describe(),
                         **({"split_images": {k: len(v) for k, v in scorer.crowd_splits.items()}}
                            if scorer.crowd_splits else {})},
        overall=overall,
        per_iteration=passes,
        oks_scale="box" if box_scale else "area",
        visibility=(_visibility(matched_rows, match.output_to_gt, gt, box_scale)
                    if layout.name == "coco" and "keypoints" in iou_types else None),
    )


def _visibility(rows: pa.Table, output_to_gt: dict[int, int], gt: dict[str, Any],
                box_scale: bool) -> vis_eval.VisibilityScore | None:
    """``visibility.visibility_score`` of the matched images' people (None: not computable)."""
    if rows.num_rows == 0 or "keypoint_visibility" not in rows.column_names:
        return None
    anns: dict[int, list[dict[str, Any]]] = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd") and a.get("keypoints") and np.any(np.asarray(a["keypoints"])[2::3] > 0):
            anns.setdefault(int(a["image_id"]), []).append(a)
    image_ids = np.asarray(rows.column("image_id").to_pylist())
    kpts, vis = keypoints_array(rows), per_keypoint_array(rows, "keypoint_visibility")
    scores = rows.column("pose_score").to_numpy(zero_copy_only=False)
    people = []
    for out_id, gt_id in output_to_gt.items():
        mine, theirs = image_ids == out_id, anns.get(int(gt_id), [])
        if not theirs or not mine.any():
            continue
        areas = [0.53 * a["bbox"][2] * a["bbox"][3] if box_scale else a["area"] for a in theirs]
        people.append(vis_eval.ImagePeople(
            np.array([a["keypoints"] for a in theirs], np.float64).reshape(-1, 17, 3), np.asarray(areas, np.float64),
            kpts[mine], scores[mine], vis[mine]))
    return vis_eval.visibility_score(people)


def _image_summary(match: ImageMatch, num_output: int, num_gt: int, failed_ids: set[int]) -> ImageMatchCounts:
    return ImageMatchCounts(
        output=num_output,
        gt=num_gt,
        matched=len(match.output_to_gt),
        matched_failed=len(failed_ids & set(match.output_to_gt)),
        num_missing_in_gt=len(match.missing_in_gt),
        num_missing_in_output=len(match.missing_in_output),
        num_ambiguous=len(match.ambiguous),
        missing_in_gt=match.missing_in_gt[:_MAX_LISTED],
        missing_in_output=match.missing_in_output[:_MAX_LISTED],
        ambiguous=match.ambiguous[:_MAX_LISTED],
    )


def load_gt(path: str) -> dict[str, Any]:
    """Read a COCO-format ground-truth JSON (local path or URI)."""
    from bmp_core.io.uris import read_bytes

    gt = json.loads(read_bytes(path))
    if not isinstance(gt, dict) or "images" not in gt or "annotations" not in gt:
        raise EvaluationError(f"{path} is not a COCO dataset (needs 'images' and 'annotations')")
    return gt


_TABLE_COLUMNS = {"keypoints": ("AP", "AP50", "AP75", "APm", "APl", "AR"),
                  "segm": ("AP", "AP50", "AP75", "APm", "APl", "AR100"),
                  "bbox": ("AP", "AP50", "AP75", "APm", "APl", "AR100")}


_CROWD_COLUMNS = ("AP_easy", "AP_medium", "AP_hard")


def table_rows(result: EvaluationResult) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the AP table: one row per (subset, IoU type); "-" where nothing was scored.

    CrowdPose ground truth adds its crowd-index columns (keypoints only); its keypoint APm/APl, which
    are area ranges, are not reported ("-").
    """
    crowd = result.crowdpose
    header = ["subset", "type", "preds", "AP", "AP50", "AP75", "APm", "APl", "AR"]
    if crowd:
        header += ["APeasy", "APmed", "APhard"]
    rows = []
    subsets = [("all", result.overall)]
    subsets += [(f"after pass {p.max_iteration + 1}", p) for p in result.per_iteration]
    for name, entry in subsets:
        for t in result.iou_types:
            stats = entry.stats.get(t)
            columns = _TABLE_COLUMNS[t] + (_CROWD_COLUMNS if crowd else ())
            values = ["-" if stats is None or stats.get(c) is None else f"{stats[c]:.3f}" for c in columns]
            rows.append([name, t, str(entry.num_predictions), *values])
    return header, rows


def format_table(result: EvaluationResult) -> str:
    """A fixed-width text table of ``evaluate_output``'s result, with the image matching summary."""
    header, rows = table_rows(result)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    im = result.images
    lines.append("")
    lines.append(
        f"images: {im.matched} matched ({im.matched_failed} failed in the job), "
        f"{im.num_missing_in_gt} of the output not in the GT, {im.num_missing_in_output} of the GT "
        f"not in the output, {im.num_ambiguous} ambiguous; keypoints scored by {result.backend['keypoints']}"
    )
    visibility_line = vis_eval.describe(result.visibility)
    if visibility_line:
        lines.append(visibility_line)
    layout = result.keypoint_layout
    if result.crowdpose:
        splits = ", ".join(f"{k} {n}" for k, n in layout.get("split_images", {}).items())
        lines.append(f"CrowdPose keypoints: {len(layout['scored'])} scored with CrowdPose's sigmas; derived: "
                     f"{'; '.join(f'{k} = {v}' for k, v in layout['derived'].items())}; skipped: "
                     f"{', '.join(layout['skipped'])}; images per crowd-index split: {splits}")
    return "\n".join(lines)
