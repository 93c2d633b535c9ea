"""Port wrappers that run the models the way the published reference does (docs/method.md#sam-prompts;
docs/decisions.md#speed-without-changing-results).

Wrapping our own adapters keeps the comparison honest: both paths use the same weights and the
same pre/post-processing; only the call pattern differs:
  - pose: one crop per forward pass (the reference calls ``inference_topdown`` per instance batch of 1),
  - SAM: the image is re-encoded in every BMP iteration, and every instance is one decoder call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bmp_core.ports import BmpModels, PoseEstimator, Segmenter
from bmp_core.records import PoseOutput, SegmentOutput


class PerInstancePose:
    """Pose one box at a time."""

    def __init__(self, inner: PoseEstimator) -> None:
        self.inner = inner

    def estimate(self, images_bgr: Sequence[np.ndarray], boxes_xyxy: Sequence[np.ndarray],
                 masks: Sequence[np.ndarray | None]) -> list[PoseOutput]:
        out = []
        for image, boxes, image_masks in zip(images_bgr, boxes_xyxy, masks, strict=True):
            rows = [
                self.inner.estimate([image], [boxes[i: i + 1]],
                                    [None if image_masks is None else image_masks[i: i + 1]])[0]
                for i in range(len(boxes))
            ]
            out.append(concat_poses(rows))
        return out


def concat_poses(poses: Sequence[PoseOutput]) -> PoseOutput:
    """The people of several ``PoseOutput`` of one image, in order (presence / visibility only when all
    have them)."""
    if not poses:
        return PoseOutput(np.zeros((0, 17, 3), np.float32))

    def cat(name: str) -> np.ndarray | None:
        parts = [getattr(p, name) for p in poses]
        return None if any(a is None for a in parts) else np.concatenate(parts)

    return PoseOutput(np.concatenate([p.keypoints_xys for p in poses]), cat("presence"), cat("visibility"))


@dataclass
class _Lazy:
    image_bgr: np.ndarray


class ReEncodingSegmenter(Segmenter):
    """Re-computes the image embedding on every ``segment`` call (= every BMP iteration) and
    prompts one instance per decoder call."""

    def __init__(self, inner: Segmenter) -> None:
        self.inner = inner

    def prepare(self, image_bgr: np.ndarray) -> Any:
        return _Lazy(image_bgr)

    def segment(self, prepared: Any, points_xy: Sequence[np.ndarray]) -> SegmentOutput:
        embedded = self.inner.prepare(prepared.image_bgr)
        outs = [self.inner.segment(embedded, [pts]) for pts in points_xy]
        windows = [o.mask_windows_xyxy for o in outs]
        return SegmentOutput(np.concatenate([o.masks for o in outs]), np.concatenate([o.scores for o in outs]),
                             None if any(w is None for w in windows) else np.concatenate(windows))


def reference_shaped(models: BmpModels) -> BmpModels:
    """The same models, called the reference's way."""
    return BmpModels(models.detector, PerInstancePose(models.pose), ReEncodingSegmenter(models.segmenter))
