"""The export quality policy: which people are training targets, which are ignore regions, which go.

Parquet keeps every person with its raw scores; an export applies one recorded ``ExportPolicy``.
Per person, ``decide`` gives a ``Decision`` and, when not kept, the *first* threshold it fails, in
the fixed order of ``REASONS`` (so the per-reason counts of ``export.json`` add up to the total):

- **keep**: passes every threshold: a training target (COCO ``iscrowd = 0`` with keypoints).
- **ignore**: fails one, but has a mask: an ignore region (COCO ``iscrowd = 1``, its RLE, no
  keypoints). Trainers skip such regions for both positives and negatives, so an unsure person is
  neither taught as a person nor as background.
- **drop**: fails one and has an empty mask: nothing to mark as ignored (counted, ``empty_mask``).

What an export applies when no threshold is given is ``default_policy(backend)``: thresholds chosen
per backend, because the scores mean different things (BlazePose's landmark scores, MaskPose's
heatmap maxima, PMPose's predicted OKS); docs/exports.md ("The default policy") has the measurement
and the reasoning behind each number. ``ExportPolicy()`` itself keeps everybody (all minimums 0).

Per keypoint, ``keypoint_flags`` gives the COCO visibility flag every format writes (docs/exports.md):
``v = 2`` visible, ``v = 1`` present but occluded, ``v = 0`` unlabeled (unconfident, or absent from the
crop). The occluded/absent split needs the pose model's per-keypoint visibility and presence (PMPose,
lite); a run without them (MaskPose, v1 outputs) gets ``v`` in {0, 2} from the score alone, as before.

The train/val split is ``split_of(uri)``: a stable hash of the image URI, so the same image lands in
the same split in every format, on every rerun, whatever the output's sharding.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import pyarrow as pa

from bmp_core.errors import UserError

# Why a person is not kept, in the order thresholds are tested (the first failing one is reported).
REASON_DET_SCORE = "det_score"
REASON_POSE_SCORE = "pose_score"
REASON_SAM_SCORE = "sam_score"  # below min_sam_score, or SAM never prompted (no score) when one is asked
REASON_VISIBLE_KEYPOINTS = "visible_keypoints"
REASON_MASK_AREA = "mask_area"
REASONS = (REASON_DET_SCORE, REASON_POSE_SCORE, REASON_SAM_SCORE, REASON_VISIBLE_KEYPOINTS, REASON_MASK_AREA)

SPLIT_TRAIN = "train"
SPLIT_VAL = "val"


class Decision(IntEnum):
    KEEP = 0
    IGNORE = 1
    DROP = 2


class PolicyError(UserError, ValueError):
    """A policy value out of range (a user mistake: the CLI prints it as one line and a hint)."""

    default_hint = "see 'bmp-label export --help' and docs/exports.md for the policy options and their ranges"


@dataclass(frozen=True)
class ExportPolicy:
    """Thresholds of an export (all inclusive: a score equal to the minimum passes).

    Attributes:
        min_det_score: detector score.
        min_pose_score: pose score (mean of the 17 keypoint scores).
        min_sam_score: SAM score; with a value > 0, a person SAM never prompted (no score) fails.
        keypoint_thr: a keypoint scoring >= this is labeled (``v`` 2 or 1), else ``v = 0`` with
            ``x = y = 0`` (unlabeled: the trainer ignores it). For PMPose runs the score is the predicted
            OKS of the keypoint, and ``min_pose_score`` thresholds the mean predicted OKS.
        keypoint_visibility_thr: a labeled keypoint whose predicted visibility is >= this is ``v = 2``
            (visible), below it ``v = 1`` (present but occluded). Only where the model predicts visibility.
        keypoint_presence_thr: a keypoint whose predicted presence (inside the crop) is below this is
            ``v = 0`` (absent). Only where the model predicts presence.
        min_visible_keypoints: labeled keypoints (``v`` > 0).
        min_mask_area_px: refined-mask pixels.
        val_fraction: share of images in ``val`` (by URI hash), 0 <= F < 1.
        max_ignore_fraction: YOLO only (it has no ignore regions): an image whose ignore regions
            cover more than this fraction of its area is left out of the YOLO export; below it the
            ignored people are omitted from the labels (counted in ``export.json``).
    """

    min_det_score: float = 0.0
    min_pose_score: float = 0.0
    min_sam_score: float = 0.0
    keypoint_thr: float = 0.3
    min_visible_keypoints: int = 0
    min_mask_area_px: int = 0
    val_fraction: float = 0.0
    max_ignore_fraction: float = 0.05
    keypoint_visibility_thr: float = 0.5
    keypoint_presence_thr: float = 0.5

    def __post_init__(self) -> None:
        for name in ("min_det_score", "min_pose_score", "min_sam_score", "keypoint_thr", "max_ignore_fraction",
                     "keypoint_visibility_thr", "keypoint_presence_thr"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise PolicyError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise PolicyError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.min_visible_keypoints <= 17:
            raise PolicyError(f"min_visible_keypoints must be in [0, 17], got {self.min_visible_keypoints}")
        if self.min_mask_area_px < 0:
            raise PolicyError(f"min_mask_area_px must be >= 0, got {self.min_mask_area_px}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Backends whose scores mean different things, each with its own default policy (``default_policy``).
BACKEND_LITE = "lite"  # MediaPipe BlazePose on given boxes
BACKEND_BMP = "bmp"  # BMP v1.1: RTMDet-Ins + MaskPose (keypoint score = heatmap maximum) + SAM 2.1
BACKEND_BMP_V2 = "bmp-v2"  # BMP v2: PMPose (keypoint score = predicted per-keypoint OKS)
BACKEND_FAKE = "fake"  # bmp_core.testing fakes: they stand in for bmp, so they get its policy

# Measured on the lite backend's labels of the demo images (scripts/measure_policy.py, table in
# docs/exports.md): people under 500 mask pixels are ~15 x 35 px, too small for COCO to label their
# keypoints; the lite backend's were all false positives there, so they become ignore regions.
_MIN_MASK_AREA_PX = 500
DEFAULT_POLICIES: dict[str, ExportPolicy] = {
    # Measured (docs/exports.md): pose >= 0.7 and SAM (BlazePose mask) >= 0.9 raised the kept people's
    # precision at OKS 0.5 from 0.35 to 0.92 on the demo images without losing a matched person;
    # the given boxes' detector scores did not separate good people from bad (0.01 lost two).
    BACKEND_LITE: ExportPolicy(min_pose_score=0.7, min_sam_score=0.9, keypoint_thr=0.3,
                               min_mask_area_px=_MIN_MASK_AREA_PX),
    # Reasoned from the method, not measured (no weights here): the method's own detector bar (score
    # > 0.3, given boxes included) and keypoint validity threshold (0.3, heatmap maximum); a person
    # whose mean keypoint is not valid by that threshold is unsure.
    BACKEND_BMP: ExportPolicy(min_det_score=0.3, min_pose_score=0.3, keypoint_thr=0.3,
                              min_mask_area_px=_MIN_MASK_AREA_PX),
    # Reasoned, not measured: PMPose's keypoint score is a predicted OKS, and the v2 method's keypoint
    # threshold is 0.5 everywhere; a mean predicted OKS under 0.5 says the pose is expected not to
    # match its person even at COCO's loosest OKS (AP50).
    BACKEND_BMP_V2: ExportPolicy(min_det_score=0.3, min_pose_score=0.5, keypoint_thr=0.5,
                                 min_mask_area_px=_MIN_MASK_AREA_PX),
}
DEFAULT_POLICIES[BACKEND_FAKE] = DEFAULT_POLICIES[BACKEND_BMP]


def policy_backend(models: Any) -> str:
    """The ``DEFAULT_POLICIES`` key of a ``ModelsConfig`` (the output's stored ``models`` section)."""
    if models.kind in (BACKEND_LITE, BACKEND_FAKE):
        return models.kind
    return BACKEND_BMP_V2 if str(models.pose.config).lower().startswith("pmpose") else BACKEND_BMP


def default_policy(backend: str) -> ExportPolicy:
    """The default policy of a backend (``policy_backend``); ``PolicyError`` for an unknown one."""
    if backend not in DEFAULT_POLICIES:
        raise PolicyError(f"no default policy for backend {backend!r}: one of {', '.join(DEFAULT_POLICIES)}")
    return DEFAULT_POLICIES[backend]


@dataclass(frozen=True)
class ResolvedPolicy:
    """A policy and where its values came from (recorded in ``export.json`` as ``policy_source``).

    Attributes:
        policy: the thresholds.
        source: ``default:<backend>`` (``default_policy``), ``export.json:<uri>`` (read from an
            export), ``options`` (all given); ``+options`` is appended when some values were given
            on top of a default or an export.json.
    """

    policy: ExportPolicy
    source: str


def resolve_policy(base: ExportPolicy, base_source: str, **given: Any) -> ResolvedPolicy:
    """``base`` with the ``given`` fields that are not None replaced (``+options`` in the source)."""
    from dataclasses import replace

    changed = {k: v for k, v in given.items() if v is not None}
    if not changed:
        return ResolvedPolicy(base, base_source)
    return ResolvedPolicy(replace(base, **changed), f"{base_source}+options")


@dataclass(frozen=True)
class PersonDecisions:
    """The policy's verdict on the people of one table (row order).

    Attributes:
        decision: (N,) int8 ``Decision`` values.
        reason: (N,) int8 index into ``REASONS`` of the first failed threshold, -1 when kept.
        visible_keypoints: (N,) int labeled keypoints (``keypoint_flags`` > 0).
        keypoint_flags: (N, 17) int8 COCO ``v`` of each keypoint (``keypoint_flags``); None: from
            ``keypoint_thr`` alone (v in {0, 2}).
    """

    decision: np.ndarray
    reason: np.ndarray
    visible_keypoints: np.ndarray
    keypoint_flags: np.ndarray | None = None


def decide(instances: pa.Table, policy: ExportPolicy) -> PersonDecisions:
    """Apply ``policy`` to the people of an ``instances`` table (any subset of rows, vectorised).

    Reads ``det_score``, ``pose_score``, ``sam_score`` (null: not prompted), ``keypoints``,
    ``keypoint_visibility`` / ``keypoint_presence`` (null or absent: not predicted) and ``mask_area``.
    """
    from bmp_core.output.tables import keypoints_array, per_keypoint_array

    n = instances.num_rows
    # The stored float32 scores against a Python float compare in float32 (NEP 50), as in ``keypoint_flags``:
    # a score stored as the float32 nearest the minimum passes (inclusive), also where the minimum has no
    # exact float32 (0.7 is stored as 0.69999999; in float64 it would fail ``min_pose_score=0.7``).
    det = instances.column("det_score").to_numpy(zero_copy_only=False).astype(np.float32)
    pose = instances.column("pose_score").to_numpy(zero_copy_only=False).astype(np.float32)
    sam_col = instances.column("sam_score").combine_chunks() if n else pa.array([], pa.float32())
    sam = sam_col.fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float32)
    area = instances.column("mask_area").to_numpy(zero_copy_only=False).astype(np.int64)
    flags = keypoint_flags(keypoints_array(instances), per_keypoint_array(instances, "keypoint_visibility"),
                           per_keypoint_array(instances, "keypoint_presence"), policy)
    visible = (flags > 0).sum(axis=1)
    # NaN (no SAM score) fails any min_sam_score > 0 and passes 0: ``sam >= 0`` is False for NaN.
    sam_ok = np.ones(n, bool) if policy.min_sam_score <= 0 else (sam >= policy.min_sam_score)
    fails = np.stack([
        det < policy.min_det_score,
        pose < policy.min_pose_score,
        ~sam_ok,
        visible < policy.min_visible_keypoints,
        area < policy.min_mask_area_px,
    ], axis=1) if n else np.zeros((0, len(REASONS)), bool)
    failed = fails.any(axis=1)
    reason = np.where(failed, fails.argmax(axis=1), -1).astype(np.int8)
    decision = np.where(~failed, Decision.KEEP, np.where(area > 0, Decision.IGNORE, Decision.DROP)).astype(np.int8)
    return PersonDecisions(decision=decision, reason=reason, visible_keypoints=visible, keypoint_flags=flags)


def keypoint_flags(keypoints: np.ndarray, visibility: np.ndarray, presence: np.ndarray,
                   policy: ExportPolicy) -> np.ndarray:
    """(N, 17) int8 COCO visibility flags of N people (module docstring; docs/exports.md).

    ``v = 0`` when the score is below ``keypoint_thr`` or the presence below ``keypoint_presence_thr``;
    else ``v = 2`` when the visibility is at or above ``keypoint_visibility_thr``, ``v = 1`` below it.
    A NaN visibility (presence) means the model does not predict it: that test is skipped, so a run
    without either gets exactly the flags it always had (``v = 2`` at or above ``keypoint_thr``, else 0).

    Args:
        keypoints: (N, 17, 3) ``(x, y, score)``.
        visibility, presence: (N, 17) float, NaN where not predicted.
    """
    # float32 against a Python float compares in float32 (NEP 50): a stored score equal to the float32
    # nearest the threshold passes, as the exports always did.
    score = np.asarray(keypoints, np.float32).reshape(-1, 17, 3)[:, :, 2]
    vis, pres = np.asarray(visibility, np.float32), np.asarray(presence, np.float32)
    labeled = (score >= policy.keypoint_thr) & ~(pres < policy.keypoint_presence_thr)  # NaN < t is False
    occluded = vis < policy.keypoint_visibility_thr
    return np.where(labeled, np.where(occluded, 1, 2), 0).astype(np.int8)


def split_score(uri: str) -> float:
    """A number in [0, 1) fixed by the URI alone (first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(uri.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_of(uri: str, val_fraction: float) -> str:
    """``"val"`` for the images whose ``split_score`` is below ``val_fraction``, else ``"train"``.

    Raising the fraction only moves images from train to val, never back.
    """
    return SPLIT_VAL if split_score(uri) < val_fraction else SPLIT_TRAIN
