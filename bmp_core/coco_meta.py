"""The COCO person category and its 17 keypoints: names, skeleton, OKS sigmas, flip pairs (one place).

In the spirit of detectron2's ``builtin_meta.py``: every module that needs one of these facts imports
it from here (records, OKS and pose-NMS, the pose adapter's flip test, COCO export, given boxes,
drawing, evaluation), so no two copies can disagree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PERSON_CATEGORY_ID = 1  # "person" in COCO's categories (and in every detections file we read)
NUM_KEYPOINTS = 17

KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)

# 1-based keypoint index pairs, as in COCO's person_keypoints_*.json ``skeleton``.
SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)

# Per-keypoint OKS falloff, from pycocotools' ``COCOeval`` Params (kpt_oks_sigmas = [.26, ...] / 10).
SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
SIGMAS.flags.writeable = False

# Keypoint index of each keypoint's mirror image (left <-> right; the nose maps to itself).
FLIP_INDICES = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)


def flip_indices(num_channels: int) -> list[int]:
    """The flip permutation of a pose head with ``num_channels`` >= 17 channels, COCO's 17 first: their
    left/right pairs swap (``FLIP_INDICES``), every channel past them maps to itself (the extras of the
    heads we run lie on the midline: MaskPose's 21 add thorax, neck, head top and pelvis; the 23 of
    MaskPose-1.1 and PMPose add thorax, pelvis, neck, head top and the AIC neck and head top).

    Raises:
        ValueError: fewer than 17 channels.
    """
    if num_channels < NUM_KEYPOINTS:
        raise ValueError(f"the pose head needs >= {NUM_KEYPOINTS} channels, got {num_channels}")
    return [*FLIP_INDICES, *range(NUM_KEYPOINTS, num_channels)]


def person_category() -> dict[str, Any]:
    """The COCO ``categories`` entry of a person-keypoints dataset."""
    return {
        "id": PERSON_CATEGORY_ID,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(KEYPOINT_NAMES),
        "skeleton": [list(pair) for pair in SKELETON],
    }
