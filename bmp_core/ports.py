"""The three model ports the BMP loop depends on.

Real adapters (``bmp_core/models/``) and fakes (``bmp_core/testing/``) satisfy them structurally.
All images are ``(H, W, 3) uint8`` **BGR** at the port; an adapter that needs RGB (SAM) converts.
The ports are batch-first so that adapters can run one forward pass for many images / crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bmp_core.records import Detections, PoseOutput, SegmentOutput


@runtime_checkable
class Detector(Protocol):
    """Instance-segmentation detector (RTMDet-Ins in the real setup)."""

    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """Detect objects in each image.

        Args:
            images_bgr: B images, each (H_i, W_i, 3) uint8 BGR.

        Returns:
            B ``Detections`` (all classes; the loop keeps the person label), masks at full resolution,
            with the windows that enclose them (``mask_windows_xyxy``) where the model can find them
            without reading the masks on the host (the real adapters: on the device; the fakes: where
            they drew); the loop then reads each mask only inside its window.
        """
        ...


@runtime_checkable
class PoseEstimator(Protocol):
    """Top-down pose estimator (MaskPose / PMPose in the real setup)."""

    def estimate(
        self,
        images_bgr: Sequence[np.ndarray],
        boxes_xyxy: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None],
    ) -> list[PoseOutput]:
        """Estimate 17 COCO keypoints for every box of every image.

        Args:
            images_bgr: B images, each (H_i, W_i, 3) uint8 BGR (the ORIGINAL image, never masked out).
            boxes_xyxy: B arrays (N_i, 4) float32 pixel boxes.
            masks: B arrays (N_i, H_i, W_i) bool conditioning masks, or None for box-only pose. An
                all-False mask means "no mask for this instance": it is posed from its box alone.

        Returns:
            B ``PoseOutput``: (N_i, 17, 3) float32 ``(x, y, score)`` in pixels of the original image, and
            (N_i, 17) per-keypoint presence and visibility where the model predicts them (else None).
        """
        ...


@runtime_checkable
class Segmenter(Protocol):
    """Point-promptable segmenter (SAM 2.1 in the real setup)."""

    def prepare(self, image_bgr: np.ndarray) -> Any:
        """Compute what every later prompt on this image reuses (SAM: the image embedding).

        Args:
            image_bgr: (H, W, 3) uint8 BGR.

        Returns:
            An opaque handle for ``segment``; the loop computes it once per image for all iterations.
        """
        ...

    def segment(self, prepared: Any, points_xy: Sequence[np.ndarray]) -> SegmentOutput:
        """Segment one instance per prompt, positive points only.

        Args:
            prepared: the handle ``prepare`` returned for this image.
            points_xy: N arrays (K_i, 2) float32 pixel coordinates, K_i >= 1.

        Returns:
            ``SegmentOutput`` with (N, H, W) bool masks, (N,) scores and, where the model knows them, the
            masks' enclosing windows (as for ``Detector.detect``).
        """
        ...

    def prepare_batch(self, images_bgr: Sequence[np.ndarray]) -> list[Any]:
        """``prepare`` of several images; an adapter that can encode them in one forward pass overrides it
        (SAM 2.1: one encoder call on the device). The results must be those of ``prepare`` one image at
        a time (the loop's results never depend on the batch)."""
        return [self.prepare(image) for image in images_bgr]


@dataclass(frozen=True)
class BmpModels:
    """The three models the loop runs, built once per worker.

    ``detector`` is None for models without a person detector (the lite backend with
    ``models.lite.detect_people: false``): the boxes of pass 0 must then be given
    (``run_bmp(boxes_xyxy=...)``, ``job.given_boxes``) and ``loop.iterations`` be 1; the loop refuses
    a detection pass without a detector (``NoDetectorError``). Callers ask
    ``models.detector is None``, never which backend built the models.
    """

    detector: Detector | None
    pose: PoseEstimator
    segmenter: Segmenter
