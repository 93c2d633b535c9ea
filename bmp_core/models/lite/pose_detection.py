"""Pure-numpy decoding of BlazePose's person detector (``pose_detection.tflite``), as MediaPipe does it.

The model (inside the mediapipe wheel) takes one 224x224 letterboxed RGB image and returns, for each of
2254 SSD anchors, 12 regressors (box centre and size, 4 keypoints) and a score logit. MediaPipe's
``PoseDetectionCpu`` graph turns them into person detections with ``SsdAnchorsCalculator``,
``TensorsToDetectionsCalculator``, a weighted ``NonMaxSuppressionCalculator`` and
``DetectionLetterboxRemovalCalculator``; this module is those steps (options as in the wheel's graph),
checked against the graph itself in tests/lite/test_lite_detector.py.

The detector was trained to find the one main person of a frame for tracking, so one pass over a
photo finds about one person. ``window_grid`` and ``merge_people`` run it over overlapping square
windows as well (tiled inference, as in sliced prediction for small objects) and merge what several
windows found of one person (docs/lite.md, "The lite detector").

Nothing here imports mediapipe, so it is unit-testable anywhere; ``detector.py`` runs the model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

INPUT_SIDE = 224  # the model's square input, pixels
NUM_ANCHORS = 2254
NUM_KEYPOINTS = 4  # 0 mid-hip, 1 full-body scale/rotation point, 2 mid-shoulder, 3 upper-body scale point
_STRIDES = (8, 16, 32, 32, 32)  # the wheel's SsdAnchorsCalculatorOptions for pose detection
_MIN_SCALE, _MAX_SCALE = 0.1484375, 0.75
_SCORE_CLIP = 100.0  # TensorsToDetectionsCalculator's score_clipping_thresh
SCORE_THR = 0.5  # the wheel's min_score_thresh (mp_pose.Pose's min_detection_confidence default)
NMS_IOU_THR = 0.3  # the wheel's min_suppression_threshold (overlap: intersection over union)


@dataclass(frozen=True)
class PoseDetections:
    """Person detections of BlazePose's detector, in one coordinate frame (normalised or pixels).

    Attributes:
        boxes_xyxy: (N, 4) float32 the detector's box: a square about the face, NOT a person box.
        keypoints_xy: (N, 4, 2) float32 mid-hip, full-body scale point, mid-shoulder, upper-body point.
        scores: (N,) float32 sigmoid scores.
    """

    boxes_xyxy: np.ndarray
    keypoints_xy: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def empty() -> PoseDetections:
        return PoseDetections(np.zeros((0, 4), np.float32), np.zeros((0, NUM_KEYPOINTS, 2), np.float32),
                              np.zeros(0, np.float32))

    @staticmethod
    def concatenate(parts: list[PoseDetections]) -> PoseDetections:
        if not parts:
            return PoseDetections.empty()
        return PoseDetections(*(np.concatenate([getattr(p, name) for p in parts])
                                for name in ("boxes_xyxy", "keypoints_xy", "scores")))

    def take(self, index: np.ndarray) -> PoseDetections:
        return PoseDetections(self.boxes_xyxy[index], self.keypoints_xy[index], self.scores[index])

    def scaled(self, scale: float, offset_xy: tuple[float, float]) -> PoseDetections:
        """Coordinates ``v * scale + offset`` (x and y alike)."""
        off = np.asarray(offset_xy, np.float32)
        return PoseDetections(
            (self.boxes_xyxy * np.float32(scale) + np.tile(off, 2)).astype(np.float32),
            (self.keypoints_xy * np.float32(scale) + off).astype(np.float32),
            self.scores,
        )


@functools.cache
def ssd_anchor_centres() -> np.ndarray:
    """(2254, 2) float32 anchor centres ``(x, y)``, normalised to the input (``SsdAnchorsCalculator``).

    Layers of equal stride are one group (their anchors share the grid cells); per cell each layer adds
    two anchors (aspect ratio 1, and the interpolated scale). ``fixed_anchor_size``: every anchor is
    1 x 1, so only the centres matter. Order: group, row, column, anchor.
    """
    centres = []
    layer = 0
    while layer < len(_STRIDES):
        last = layer
        while last < len(_STRIDES) and _STRIDES[last] == _STRIDES[layer]:
            last += 1
        per_cell = 2 * (last - layer)
        side = math.ceil(INPUT_SIDE / _STRIDES[layer])
        ys, xs = np.meshgrid((np.arange(side) + 0.5) / side, (np.arange(side) + 0.5) / side, indexing="ij")
        grid = np.stack([xs, ys], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, per_cell, axis=1).reshape(-1, 2))
        layer = last
    out = np.concatenate(centres).astype(np.float32)
    assert len(out) == NUM_ANCHORS, len(out)
    return out


def decode(raw_boxes: np.ndarray, raw_logits: np.ndarray, score_thr: float = SCORE_THR) -> PoseDetections:
    """The model's outputs -> detections above ``score_thr``, normalised to its (letterboxed) input.

    Args:
        raw_boxes: (2254, 12) float32 regressors, x before y: box centre, box size, 4 keypoints.
        raw_logits: (2254,) or (2254, 1) float32 score logits.
        score_thr: keep sigmoid scores >= this.

    Returns:
        ``PoseDetections`` in anchor order, coordinates in [0, 1] of the 224x224 input (may exceed it).
    """
    raw = np.asarray(raw_boxes, np.float32).reshape(NUM_ANCHORS, 4 + 2 * NUM_KEYPOINTS)
    logits = np.clip(np.asarray(raw_logits, np.float32).reshape(NUM_ANCHORS), -_SCORE_CLIP, _SCORE_CLIP)
    scores = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)  # float32 exp(100) overflows
    keep = np.flatnonzero(scores >= score_thr)
    anchors = ssd_anchor_centres()[keep]
    r = raw[keep] / np.float32(INPUT_SIDE)
    centre = r[:, 0:2] + anchors
    half = r[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = r[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) + anchors[:, None, :]
    return PoseDetections(boxes.astype(np.float32), keypoints.astype(np.float32), scores[keep])


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box with (N, 4) boxes, 0 where they do not intersect (MediaPipe's rule)."""
    ix = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    iy = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.where((ix >= 0) & (iy >= 0), ix * iy, 0.0)
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def weighted_nms(dets: PoseDetections, iou_thr: float = NMS_IOU_THR) -> PoseDetections:
    """MediaPipe's weighted non-maximum suppression.

    By descending score: the best remaining detection and every remaining one overlapping it by IoU
    > ``iou_thr`` (itself included) become one detection: the score-weighted mean of their box corners
    and keypoints, with the best one's score.
    """
    order = np.argsort(-dets.scores, kind="stable")
    out = []
    while len(order):
        best = order[0]
        iou = _iou(dets.boxes_xyxy[best], dets.boxes_xyxy[order])
        group, rest = order[iou > iou_thr], order[iou <= iou_thr]
        if len(group) == 0:  # a degenerate box that does not even overlap itself: kept as is, then stop
            out.append((dets.boxes_xyxy[best], dets.keypoints_xy[best], dets.scores[best]))
            break
        w = dets.scores[group].astype(np.float64)
        box = (dets.boxes_xyxy[group] * w[:, None]).sum(axis=0) / w.sum()
        kpts = (dets.keypoints_xy[group] * w[:, None, None]).sum(axis=0) / w.sum()
        out.append((box, kpts, dets.scores[best]))
        order = rest
    if not out:
        return PoseDetections.empty()
    boxes, kpts, scores = zip(*out, strict=True)
    return PoseDetections(np.asarray(boxes, np.float32), np.asarray(kpts, np.float32),
                          np.asarray(scores, np.float32))


def letterbox_to_pixels(dets: PoseDetections, width: int, height: int) -> PoseDetections:
    """Normalised coordinates of the letterboxed square input -> pixels of the (width x height) image.

    The image sat centred in a square of side ``max(width, height)`` (``keep_aspect_ratio``).
    """
    side = max(width, height)
    return dets.scaled(side, ((width - side) / 2.0, (height - side) / 2.0))


def window_grid(width: int, height: int, fractions: tuple[float, ...], overlap: float) -> np.ndarray:
    """Square windows over an image: the whole image, then for each fraction ``f`` windows of side
    ``f * min(width, height)`` stepping by ``(1 - overlap)`` of their side, the last ones flush with
    the far edges.

    Returns:
        (K, 4) int64 ``(x1, y1, x2, y2)`` windows inside the image; the first is the whole image.
    """
    windows = [(0, 0, width, height)]
    for fraction in fractions:
        side = max(1, round(fraction * min(width, height)))
        step = max(1, round(side * (1.0 - overlap)))
        xs = _starts(width, side, step)
        ys = _starts(height, side, step)
        windows += [(x, y, x + side, y + side) for y in ys for x in xs]
    return np.asarray(list(dict.fromkeys(windows)), np.int64)  # a window twice (short side) runs once


def _starts(length: int, side: int, step: int) -> list[int]:
    if side >= length:
        return [0]
    starts = list(range(0, length - side, step))
    return [*starts, length - side]


def person_scale_px(dets: PoseDetections) -> np.ndarray:
    """(N,) float32 hip-to-full-body-point distance: MediaPipe's person ROI is a square of side
    2 x this about the hip point (then grown 1.25x for the landmark model)."""
    return np.linalg.norm(dets.keypoints_xy[:, 1] - dets.keypoints_xy[:, 0], axis=1).astype(np.float32)


def merge_people(dets: PoseDetections, merge_dist: float) -> PoseDetections:
    """One detection per person out of the detections of several overlapping windows.

    By descending score, a detection joins the best one already kept when both its hip point and its
    box centre (the face) lie within ``merge_dist`` x that person's scale (``person_scale_px``) of
    theirs; else it is a new person. The kept detection is the best-scoring of its group: the
    windows see one person at different scales, and averaging them would blur the best view.
    """
    order = np.argsort(-dets.scores, kind="stable")
    kept: list[int] = []
    scale = person_scale_px(dets)
    hips = dets.keypoints_xy[:, 0]
    faces = (dets.boxes_xyxy[:, :2] + dets.boxes_xyxy[:, 2:]) / 2
    for i in order:
        same = [k for k in kept
                if np.linalg.norm(hips[i] - hips[k]) < merge_dist * scale[k]
                and np.linalg.norm(faces[i] - faces[k]) < merge_dist * scale[k]]
        if not same:
            kept.append(int(i))
    return dets.take(np.asarray(kept, np.int64))


def person_regions_xyxy(dets: PoseDetections) -> np.ndarray:
    """(N, 4) float32 axis-aligned squares of side 2 x ``person_scale_px`` about the hip point: the
    region the pose crop grows by ``models.lite.crop_padding`` (1.25: MediaPipe's landmark ROI)."""
    half = person_scale_px(dets)[:, None]
    hips = dets.keypoints_xy[:, 0]
    return np.concatenate([hips - half, hips + half], axis=1).astype(np.float32)
