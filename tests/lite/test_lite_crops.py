"""The lite backend's geometry against hand-computed values (numpy only: runs without MediaPipe)."""

from __future__ import annotations

import numpy as np
import pytest

from bmp_core.coco_meta import KEYPOINT_NAMES as COCO_KEYPOINT_NAMES
from bmp_core.models.lite.crops import (
    BLAZEPOSE_TO_COCO17,
    blend_background,
    crop_with_border,
    landmarks_to_coco17,
    padded_crop_box,
    paste_crop_mask,
    pasted_window,
)

pytestmark = pytest.mark.lite

# BlazePose's landmark names (MediaPipe pose_landmarks docs), in index order.
BLAZEPOSE_NAMES = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle", "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)


def test_mapping_is_the_spec_indices_and_names_agree() -> None:
    assert BLAZEPOSE_TO_COCO17 == (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
    assert tuple(BLAZEPOSE_NAMES[i] for i in BLAZEPOSE_TO_COCO17) == COCO_KEYPOINT_NAMES


def test_landmarks_to_coco17_by_hand() -> None:
    landmarks = np.zeros((33, 3), np.float32)
    landmarks[:, 0] = np.arange(33) / 100.0  # x_norm = index / 100
    landmarks[:, 1] = 0.5
    landmarks[:, 2] = np.linspace(0, 1, 33)
    landmarks[28, 2] = 1.7  # out of range visibility is clipped
    crop = np.array([100, 50, 300, 450])  # 200 x 400 pixels
    kpts = landmarks_to_coco17(landmarks, crop)
    assert kpts.shape == (17, 3) and kpts.dtype == np.float32
    # left_shoulder = BlazePose 11: x = 100 + 0.11 * 200 = 122, y = 50 + 0.5 * 400 = 250.
    np.testing.assert_allclose(kpts[5], [122.0, 250.0, 11 / 32], rtol=1e-6)
    # right_ankle = BlazePose 28: x = 100 + 0.28 * 200 = 156.
    np.testing.assert_allclose(kpts[16], [156.0, 250.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(kpts[:, 0], 100 + np.array(BLAZEPOSE_TO_COCO17) / 100.0 * 200, rtol=1e-6)
    with pytest.raises(ValueError, match="33"):
        landmarks_to_coco17(np.zeros((17, 3)), crop)


def test_blend_background_like_maskpose_by_hand() -> None:
    image = np.array([[[100, 101, 255], [0, 10, 99]]], np.uint8)  # (1, 2, 3)
    mask = np.array([[True, False]])
    out = blend_background(image, mask, alpha=0.2)
    assert out.dtype == np.uint8
    # Inside the mask: unchanged. Outside: 0.8 * value, rounded to nearest (as cv2.addWeighted and
    # pose_maskpose do): 0, 8, 79.2 -> 79.
    np.testing.assert_array_equal(out, [[[100, 101, 255], [0, 8, 79]]])
    # Outside pixels of a second image: 100 -> 80, 255 -> 204, 1 -> 0.8 -> 1 (truncating would give 0).
    np.testing.assert_array_equal(blend_background(np.full((1, 1, 3), [100, 255, 1], np.uint8),
                                                   np.zeros((1, 1), bool), 0.2), [[[80, 204, 1]]])


@pytest.mark.parametrize("alpha", [0.2, 0.1, 0.25, 0.5, 0.7])
def test_blend_background_equals_cv2_add_weighted(alpha: float) -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(int(alpha * 100))
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    image[0, :, :] = np.arange(80)[:, None] * 3 + np.arange(3)  # every value 0..239 somewhere
    image[1, :16, :] = np.arange(240, 256).reshape(16, 1)
    mask = rng.random((64, 80)) < 0.4
    expected = cv2.addWeighted(image, 1.0 - alpha, image * mask[:, :, None].astype(np.uint8), alpha, 0.0)
    np.testing.assert_array_equal(blend_background(image, mask, alpha), expected)


def test_padded_crop_box_by_hand() -> None:
    box = np.array([10.0, 20.0, 50.0, 100.0])  # 40 x 80, centre (30, 60)
    # Padding 1.25 -> 50 x 100; square -> 100 x 100 around (30, 60).
    np.testing.assert_array_equal(padded_crop_box(box, 1.25), [-20, 10, 80, 110])
    np.testing.assert_array_equal(padded_crop_box(box, 1.25, square=False), [5, 10, 55, 110])
    np.testing.assert_array_equal(padded_crop_box(np.array([5.0, 5.0, 5.0, 5.0]), 1.25), [1, 1, 9, 9])


def test_crop_with_border_and_paste_round_trip() -> None:
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    crop_xyxy = np.array([-1, 2, 3, 6])  # 4 wide, 4 tall, sticks out left and bottom
    crop = crop_with_border(image, crop_xyxy)
    assert crop.shape == (4, 4, 3)
    np.testing.assert_array_equal(crop[:2, 1:], image[2:4, 0:3])
    assert not crop[:, 0].any() and not crop[2:].any()  # zero border outside the image
    mask_crop = np.ones((4, 4), bool)
    pasted = paste_crop_mask(mask_crop, crop_xyxy, (4, 5))
    expected = np.zeros((4, 5), bool)
    expected[2:4, 0:3] = True
    np.testing.assert_array_equal(pasted, expected)
    assert not paste_crop_mask(mask_crop, np.array([10, 10, 14, 14]), (4, 5)).any()  # fully outside
    # the window handed over with the pasted mask is the crop cut to the image, here exactly the mask's
    np.testing.assert_array_equal(pasted_window(crop_xyxy, (4, 5)), [0, 2, 3, 4])
    np.testing.assert_array_equal(pasted_window(np.array([10, 10, 14, 14]), (4, 5)), [0, 0, 0, 0])
    np.testing.assert_array_equal(pasted_window(np.array([-3, 1, 0, 3]), (4, 5)), [0, 0, 0, 0])


def test_estimate_returns_blazepose_presence_when_the_landmarks_carry_it() -> None:
    from bmp_core.config import LiteModelsConfig
    from bmp_core.models.lite.blazepose import BlazePoseEstimator

    class Runner:  # a graph that sets presence = landmark index / 32 (and one that finds nobody)
        def __init__(self, with_presence: bool) -> None:
            self.with_presence = with_presence

        def run(self, crop_bgr: np.ndarray):  # noqa: ANN202 - the runner's (landmarks, probabilities)
            landmarks = np.zeros((33, 4), np.float32)
            landmarks[:, :2] = 0.5
            landmarks[:, 2] = 0.8
            landmarks[:, 3] = np.arange(33) / 32.0 if self.with_presence else np.nan
            return landmarks, np.ones(crop_bgr.shape[:2], np.float32)

    image = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[10, 10, 60, 90]], np.float32)
    (out,) = BlazePoseEstimator(LiteModelsConfig(), runner=Runner(True)).estimate([image], [boxes], [None])
    np.testing.assert_allclose(out.presence[0], np.array(BLAZEPOSE_TO_COCO17) / 32.0, rtol=1e-6)
    np.testing.assert_allclose(out.visibility[0], 0.8)
    (out,) = BlazePoseEstimator(LiteModelsConfig(), runner=Runner(False)).estimate([image], [boxes], [None])
    assert out.presence is None and out.visibility is not None
