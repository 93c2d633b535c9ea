"""Typed per-image records that cross module boundaries.

Every record is a frozen dataclass of numpy arrays. Shapes and units are in the field names and
docstrings: ``boxes_xyxy`` are absolute pixel corners ``(x1, y1, x2, y2)``, keypoints are
``(x, y, score)`` in pixels of the original image, masks are ``bool`` arrays of the image's size.
A mask window is ``(x0, y0, x1, y1)`` int64 pixel edges, end exclusive (``mask[y0:y1, x0:x1]``),
that encloses every True pixel of its mask (``bmp_core.ops.masks``); an empty window (x1 <= x0)
says the mask is empty. A model that knows its masks' windows hands them over with the masks, so the
loop never reads a whole image-sized mask to find where its pixels are.
``__post_init__`` checks that all per-instance fields agree on ``N`` (detectron2 ``Instances`` idea).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# COCO-17 keypoints; the pose adapters cut wider heads (21 channels) to these.
from bmp_core.coco_meta import NUM_KEYPOINTS


def _check_len(name: str, arr: np.ndarray | None, n: int) -> None:
    if arr is not None and len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} rows, expected {n}")


def _check_windows(windows: np.ndarray | None, masks: np.ndarray | None, n: int) -> None:
    if windows is None:
        return
    if masks is None:
        raise ValueError("mask_windows_xyxy given without masks")
    if windows.shape != (n, 4) or windows.dtype != np.int64:
        raise ValueError(f"mask_windows_xyxy must be (N, 4) int64, got {windows.shape} {windows.dtype}")
    h, w = masks.shape[1:]
    if n and ((windows < 0).any() or (windows[:, [0, 2]] > w).any() or (windows[:, [1, 3]] > h).any()):
        raise ValueError(f"mask_windows_xyxy must lie inside the ({h}, {w}) masks")


@dataclass(frozen=True)
class Detections:
    """Detector output for one image.

    Attributes:
        boxes_xyxy: (N, 4) float32, pixel corners.
        scores: (N,) float32 in [0, 1].
        labels: (N,) int64 class ids (COCO: person = 0).
        masks: (N, H, W) bool instance masks at full image resolution, or None when the source has no
            masks (user-given boxes).
        mask_windows_xyxy: (N, 4) int64 windows enclosing each mask's True pixels (module docstring),
            or None when unknown (the loop then reads each mask once to find them). A window that
            misses a True pixel gives wrong results downstream.
    """

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    mask_windows_xyxy: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.boxes_xyxy)
        if self.boxes_xyxy.shape != (n, 4):
            raise ValueError(f"boxes_xyxy must be (N, 4), got {self.boxes_xyxy.shape}")
        _check_len("scores", self.scores, n)
        _check_len("labels", self.labels, n)
        _check_len("masks", self.masks, n)
        _check_windows(self.mask_windows_xyxy, self.masks, n)

    def __len__(self) -> int:
        return len(self.boxes_xyxy)

    @staticmethod
    def empty(height: int, width: int) -> Detections:
        return Detections(
            boxes_xyxy=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            labels=np.zeros((0,), np.int64),
            masks=np.zeros((0, height, width), bool),
            mask_windows_xyxy=np.zeros((0, 4), np.int64),
        )

    def take(self, index: np.ndarray) -> Detections:
        """Rows ``index`` (int indices or a bool mask), in that order."""
        return Detections(
            boxes_xyxy=self.boxes_xyxy[index],
            scores=self.scores[index],
            labels=self.labels[index],
            masks=None if self.masks is None else self.masks[index],
            mask_windows_xyxy=None if self.mask_windows_xyxy is None else self.mask_windows_xyxy[index],
        )


@dataclass(frozen=True)
class SegmentOutput:
    """Segmenter output for N prompted instances of one image.

    Attributes:
        masks: (N, H, W) bool, original image resolution.
        scores: (N,) float32 predicted mask IoU (SAM's ``iou_predictions``).
        mask_windows_xyxy: (N, 4) int64 windows enclosing each mask's True pixels (module docstring),
            or None when unknown.
    """

    masks: np.ndarray
    scores: np.ndarray
    mask_windows_xyxy: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_len("scores", self.scores, len(self.masks))
        _check_windows(self.mask_windows_xyxy, self.masks, len(self.masks))


@dataclass(frozen=True)
class PoseOutput:
    """One image's poses from a ``PoseEstimator``: N people, the 17 COCO keypoints each.

    Attributes:
        keypoints_xys: (N, 17, 3) float32 ``(x, y, score)`` in pixels of the original image. The score is the
            heatmap maximum for MaskPose/ViTPose, the predicted per-keypoint OKS for PMPose.
        presence: (N, 17) float32 in [0, 1], P(the keypoint lies inside the crop), or None when the model
            does not predict it (MaskPose).
        visibility: (N, 17) float32 in [0, 1], P(the keypoint is visible), or None when not predicted.
    """

    keypoints_xys: np.ndarray
    presence: np.ndarray | None = None
    visibility: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.keypoints_xys.shape[0]
        if self.keypoints_xys.shape != (n, 17, 3):
            raise ValueError(f"PoseOutput.keypoints_xys must be (N, 17, 3), got {self.keypoints_xys.shape}")
        for name in ("presence", "visibility"):
            value = getattr(self, name)
            if value is not None and value.shape != (n, 17):
                raise ValueError(f"PoseOutput.{name} must be ({n}, 17), got {value.shape}")

    def take(self, index: np.ndarray) -> PoseOutput:
        """People ``index`` (int indices or a bool mask), in that order."""
        return PoseOutput(*(None if a is None else a[index] for a in (self.keypoints_xys, self.presence,
                                                                       self.visibility)))


@dataclass(frozen=True)
class Instances:
    """The people found in one image by the BMP loop, in merge order (older iterations first).

    The loop's results hold read-only views of its mask store in ``masks`` and ``det_masks``.

    Attributes:
        boxes_xyxy: (N, 4) float32 detector boxes (or the user-given boxes), pixels.
        det_scores: (N,) float32 detector scores (1.0 for user-given boxes).
        keypoints: (N, 17, 3) float32 ``(x, y, score)`` COCO-17, pixels of the original image.
        pose_scores: (N,) float32 mean of the 17 keypoint scores (the COCO ``score``).
        sam_scores: (N,) float32 SAM predicted IoU; NaN where the instance was not prompted.
        masks: (N, H, W) bool refined masks (mutually exclusive among SAM-refined ones).
        det_masks: (N, H, W) bool detector masks (all-False for user-given boxes).
        det_mask_iou: (N,) float32 IoU between ``det_masks`` and ``masks``.
        iteration: (N,) int32 0-based BMP iteration that found the instance.
        mask_boxes_xyxy: (N, 4) float32 tight box of ``masks`` (NaN for an empty mask).
        prompts: (N, K, 3) float32 SAM prompt points ``(x, y, score)``, zero-padded to K; with
            ``k_most_visible`` prompts ``(x, y, visibility)``, as the reference's ``sam_kpts``.
        prompted: (N,) bool False when no keypoint was confident enough to prompt SAM; such an
            instance keeps its detector mask.
        keypoint_presence: (N, 17) float32 the pose model's P(keypoint inside the crop); NaN where the
            model does not predict it (MaskPose, v1 runs). docs/output.md.
        keypoint_visibility: (N, 17) float32 the pose model's P(keypoint visible); NaN where not predicted.
    """

    boxes_xyxy: np.ndarray
    det_scores: np.ndarray
    keypoints: np.ndarray
    pose_scores: np.ndarray
    sam_scores: np.ndarray
    masks: np.ndarray
    det_masks: np.ndarray
    det_mask_iou: np.ndarray
    iteration: np.ndarray
    mask_boxes_xyxy: np.ndarray
    prompts: np.ndarray
    prompted: np.ndarray
    # Last, with defaults: Instances built without them (a model without these outputs) hold NaN.
    keypoint_presence: np.ndarray | None = None
    keypoint_visibility: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.boxes_xyxy)
        for name in ("keypoint_presence", "keypoint_visibility"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full((n, NUM_KEYPOINTS), np.nan, np.float32))
            elif getattr(self, name).shape != (n, NUM_KEYPOINTS):
                raise ValueError(f"{name} must be ({n}, 17), got {getattr(self, name).shape}")
        for name in (
            "det_scores", "keypoints", "pose_scores", "sam_scores", "masks", "det_masks",
            "det_mask_iou", "iteration", "mask_boxes_xyxy", "prompts", "prompted",
        ):
            _check_len(name, getattr(self, name), n)
        if self.keypoints.shape[1:] != (NUM_KEYPOINTS, 3):
            raise ValueError(f"keypoints must be (N, 17, 3), got {self.keypoints.shape}")

    def __len__(self) -> int:
        return len(self.boxes_xyxy)

    @staticmethod
    def empty(height: int, width: int, num_prompts: int) -> Instances:
        return Instances(
            boxes_xyxy=np.zeros((0, 4), np.float32),
            det_scores=np.zeros((0,), np.float32),
            keypoints=np.zeros((0, NUM_KEYPOINTS, 3), np.float32),
            pose_scores=np.zeros((0,), np.float32),
            sam_scores=np.zeros((0,), np.float32),
            masks=np.zeros((0, height, width), bool),
            det_masks=np.zeros((0, height, width), bool),
            det_mask_iou=np.zeros((0,), np.float32),
            iteration=np.zeros((0,), np.int32),
            mask_boxes_xyxy=np.zeros((0, 4), np.float32),
            prompts=np.zeros((0, num_prompts, 3), np.float32),
            prompted=np.zeros((0,), bool),
            keypoint_presence=np.zeros((0, NUM_KEYPOINTS), np.float32),
            keypoint_visibility=np.zeros((0, NUM_KEYPOINTS), np.float32),
        )

    def take(self, index: np.ndarray) -> Instances:
        """Rows ``index`` (int indices or a bool mask), in that order."""
        return Instances(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})

    @staticmethod
    def concat(first: Instances, second: Instances) -> Instances:
        """``first`` rows, then ``second`` rows (merge order: old, then new)."""
        return Instances(
            **{
                name: np.concatenate([getattr(first, name), getattr(second, name)], axis=0)
                for name in first.__dataclass_fields__
            }
        )


@dataclass(frozen=True)
class IterationTrace:
    """What one BMP iteration saw and did (kept only when the loop is asked to trace; for GIFs).

    Attributes:
        iteration: 0-based iteration index.
        detector_input_bgr: (H, W, 3) uint8 the (masked-out) image the detector ran on.
        detections: detector output after the person/score/NMS filter.
        num_new: instances this iteration added after pose-NMS.
        num_removed_old: earlier instances this iteration's pose-NMS removed.
    """

    iteration: int
    detector_input_bgr: np.ndarray
    detections: Detections
    num_new: int
    num_removed_old: int


# ``BmpResult.timings_s``'s keys: the model calls (detect, pose, segment_prepare, segment) and the loop's
# own work between them (filter: the detector's person/score/NMS filter; pose_nms; prompts; exclusive;
# masks: the new rows' masks, IoU and boxes; mask_out: the next pass's detector input), and total.
# Seconds per image; batched calls are split evenly.
LOOP_STAGES = ("detect", "filter", "pose", "pose_nms", "prompts", "segment_prepare", "segment", "exclusive",
               "masks", "mask_out", "total")


@dataclass(frozen=True)
class BmpResult:
    """Result of ``run_bmp`` for one image.

    Attributes:
        instances: every person found, merge order.
        image_hw: (height, width) of the image in pixels.
        timings_s: seconds per stage of ``LOOP_STAGES`` (each image's share of a batched call).
        traces: one ``IterationTrace`` per iteration when tracing was asked for, else empty.
    """

    instances: Instances
    image_hw: tuple[int, int]
    timings_s: dict[str, float] = field(default_factory=dict)
    traces: tuple[IterationTrace, ...] = ()
