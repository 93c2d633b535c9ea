"""What the BlazePose pose estimator hands to the BlazePose segmenter: each person's crop mask.

Why a cache: BlazePose predicts the landmarks and the person mask of a crop in one forward pass,
but the ``Segmenter`` port only receives prompt points (the loop picks them from the keypoints the
``PoseEstimator`` returned). So ``estimate`` stores, per image, every person it posed (keypoints,
crop window, crop mask) and ``segment`` finds the person a prompt belongs to: the one whose
keypoints lie closest to the prompt points. The loop's prompts ARE keypoints of one instance, so
the right person matches at distance ~0; a prompt that matches nobody (within ``match_tol``) is
left to the caller (the segmenter then runs BlazePose on a crop around the points).

Images are keyed by a hash of their pixels (not ``id()``: a decoded copy of the same image must
hit, a new array reusing a freed address must not). The cache keeps the last ``max_images`` images,
enough for one ``run_bmp_batch`` call (job.batch_size images) and its passes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def image_key(image_bgr: np.ndarray) -> str:
    """A content hash of an (H, W, 3) uint8 image, shape included (about 1 ms per megapixel)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(image_bgr.shape).encode())
    digest.update(np.ascontiguousarray(image_bgr).data)
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedPerson:
    """One BlazePose result, kept until the segmenter asks for its mask.

    Attributes:
        keypoints: (17, 3) float32 ``(x, y, score)`` image pixels, as ``estimate`` returned them.
        box_xyxy: (4,) float32 the box it was posed from (its diagonal scales the match distance).
        crop_xyxy: (4,) int64 the crop window.
        mask_crop: (h, w) bool BlazePose person mask over the crop (probability >= mask_thr), or
            None when BlazePose found nobody in the crop. Bool, not the float probabilities: a
            cache of 16 images x 40 people must stay small.
        mask_score: mean BlazePose probability inside ``mask_crop`` (0 when it is empty or None).
        presence: (17,) float32 BlazePose's per-landmark presence mapped to COCO-17 (NaN: not given).
        visibility: (17,) float32 BlazePose's per-landmark visibility mapped to COCO-17 (= the scores).
    """

    keypoints: np.ndarray
    box_xyxy: np.ndarray
    crop_xyxy: np.ndarray
    mask_crop: np.ndarray | None
    mask_score: float = 0.0
    presence: np.ndarray | None = None
    visibility: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.presence is None:  # a person cached without them (tests): presence unknown, visibility = score
            object.__setattr__(self, "presence", np.full(len(self.keypoints), np.nan, np.float32))
        if self.visibility is None:
            object.__setattr__(self, "visibility", np.asarray(self.keypoints, np.float32)[:, 2].copy())


class PersonCache:
    """Per-image list of ``CachedPerson``, least recently used images evicted first."""

    def __init__(self, max_images: int = 16) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.max_images = max_images
        self._people: OrderedDict[str, list[CachedPerson]] = OrderedDict()

    def add(self, key: str, people: Sequence[CachedPerson]) -> None:
        """Append ``people`` to image ``key`` (later passes add to earlier ones)."""
        self._people.setdefault(key, []).extend(people)
        self._people.move_to_end(key)
        while len(self._people) > self.max_images:
            self._people.popitem(last=False)

    def people(self, key: str) -> list[CachedPerson]:
        """Everyone posed on image ``key`` so far, in pose order ([] for an unknown or evicted image)."""
        return list(self._people.get(key, ()))

    def match(self, key: str, points_xy: np.ndarray, match_tol: float) -> CachedPerson | None:
        """The cached person of image ``key`` whose keypoints best explain the prompt points.

        Cost of a person: mean over prompt points of the distance to its nearest keypoint, divided
        by its box diagonal. Ties go to the most recently added person (the latest pass).

        Args:
            key: ``image_key`` of the image.
            points_xy: (K, 2) float prompt points in pixels, K >= 1.
            match_tol: largest accepted cost (fraction of the box diagonal).

        Returns:
            The best person, or None when nobody is within ``match_tol``.
        """
        best, best_cost = None, np.inf
        for person in self._people.get(key, ()):
            dist = np.linalg.norm(points_xy[:, None, :] - person.keypoints[None, :, :2], axis=2)
            x1, y1, x2, y2 = (float(v) for v in person.box_xyxy)
            diag = max(float(np.hypot(x2 - x1, y2 - y1)), 1.0)
            cost = float(dist.min(axis=1).mean()) / diag
            if cost <= best_cost:
                best, best_cost = person, cost
        return best if best_cost <= match_tol else None
