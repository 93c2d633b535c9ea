"""Preprocessing of the adapters against hand-computed values (no model weights involved).

UDP crop matrix, box -> centre/size with the aspect fix, MaskPose background blending, BGR -> RGB and
normalisation, the 21 -> 17 cut with heatmap decoding back to image pixels, the flip test's channel
swap (SAM's RGB input: tests/models/test_sam_detector_speed_paths.py).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.models
torch = pytest.importorskip("torch")
pytest.importorskip("mmpose")
pytest.importorskip("cv2")

from bmp_core.config import PoseModelConfig
from bmp_core.models import _compat

_compat.apply()

from bmp_core.models import pose_maskpose as pm
from bmp_core.testing.pose_reference import crops_to_tensor, outer_polygon_mask

INPUT_WH = (192, 256)
HEATMAP_WH = (48, 64)


def test_box_center_scale_pads_and_fixes_aspect() -> None:
    # 200x200 box, padding 1.25 -> 250x250; width is too wide for 3:4, so the height grows to 250/0.75.
    center, scale = pm.box_center_scale(np.array([100, 200, 300, 400], np.float32), 1.25, 0.75)
    np.testing.assert_allclose(center, [200, 300])
    np.testing.assert_allclose(scale, [250, 250 / 0.75], rtol=1e-6)
    # A tall 100x400 box: padding -> 125x500, the width grows to 500*0.75 = 375.
    center, scale = pm.box_center_scale(np.array([0, 0, 100, 400], np.float32), 1.25, 0.75)
    np.testing.assert_allclose(center, [50, 200])
    np.testing.assert_allclose(scale, [375, 500], rtol=1e-6)


def test_udp_warp_matrix_maps_crop_edges_to_first_and_last_pixel() -> None:
    center = np.array([200.0, 300.0], np.float32)
    scale = np.array([250.0, 250.0 / 0.75], np.float32)
    warp = pm.udp_warp_matrix(center, scale, INPUT_WH)
    # UDP: the crop's left/top edge lands on pixel 0, the right/bottom edge on pixel (size - 1).
    sx, sy = (INPUT_WH[0] - 1) / scale[0], (INPUT_WH[1] - 1) / scale[1]
    expected = np.array([[sx, 0, sx * (scale[0] / 2 - center[0])], [0, sy, sy * (scale[1] / 2 - center[1])]])
    np.testing.assert_allclose(warp, expected, rtol=1e-5, atol=1e-4)
    corners = np.array([[75.0, 300 - scale[1] / 2, 1], [325.0, 300 + scale[1] / 2, 1], [200, 300, 1]])
    np.testing.assert_allclose(corners @ warp.T, [[0, 0], [191, 255], [95.5, 127.5]], atol=1e-3)


def test_blend_background_dims_only_outside_the_mask() -> None:
    image = np.array([[[100, 255, 7], [1, 50, 200]]], np.uint8)  # (1, 2, 3)
    mask = np.array([[False, True]])
    out = pm.blend_background(image, mask, alpha=0.2)
    # 0.8 * value, rounded as cv2.addWeighted rounds: 100 -> 80, 255 -> 204, 7 -> 6 (5.6, not truncated to 5);
    # the masked pixel is unchanged.
    np.testing.assert_array_equal(out, [[[80, 204, 6], [1, 50, 200]]])
    assert out.dtype == np.uint8


def test_crops_to_tensor_is_rgb_and_normalised() -> None:
    crop = np.zeros((256, 192, 3), np.uint8)
    crop[..., 0], crop[..., 1], crop[..., 2] = 10, 20, 30  # B, G, R
    x = crops_to_tensor([crop], pm.IMAGENET_MEAN_RGB, pm.IMAGENET_STD_RGB)
    assert x.shape == (1, 3, 256, 192) and x.dtype == np.float32
    np.testing.assert_allclose(
        x[0, :, 0, 0], [(30 - 123.675) / 58.395, (20 - 116.28) / 57.12, (10 - 103.53) / 57.375], rtol=1e-6
    )


def test_flip_indices_swap_left_right_and_keep_midline_extras() -> None:
    idx = pm.flip_indices(21)
    assert idx[:5] == [0, 2, 1, 4, 3] and idx[5:7] == [6, 5] and idx[15:17] == [16, 15]
    assert idx[17:] == [17, 18, 19, 20]  # thorax, neck, head top, pelvis lie on the midline
    assert sorted(idx) == list(range(21))


# --------------------------------------------------------------------------------------------
# Decoding and the 21 -> 17 cut with a stub network whose heatmaps we design


def _gaussian(u: int, v: int, amplitude: float, sigma: float = 2.0) -> np.ndarray:
    ys, xs = np.mgrid[: HEATMAP_WH[1], : HEATMAP_WH[0]]
    return amplitude * np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma**2))


class _Head:
    out_channels = 21

    def __init__(self) -> None:
        from mmpose.codecs import UDPHeatmap

        self.decoder = UDPHeatmap(input_size=INPUT_WH, heatmap_size=HEATMAP_WH, sigma=2)

    def forward(self, feats: tuple[object, ...]) -> object:
        return feats[-1]  # like mmpose's HeatmapHead: the last of the backbone's feature maps


class _FixedHeatmapModel:
    """Returns the same designed (21, 64, 48) heatmaps for every crop."""

    def __init__(self, heatmaps: np.ndarray) -> None:
        self.head = _Head()
        self._hm = torch.from_numpy(heatmaps)

    def extract_feat(self, x: object) -> tuple[object, ...]:
        return (self._hm[None].repeat(len(x), 1, 1, 1),)  # a tuple of feature maps, as mmpose's


def _estimator(model: object, **overrides: object) -> pm.MaskPoseEstimator:
    cfg = PoseModelConfig(config="vitpose-s", checkpoint=None, **{"flip_test": False, **overrides})
    return pm.MaskPoseEstimator(model, torch.device("cpu"), cfg)


def test_decode_keeps_first_17_channels_and_maps_peaks_to_image_pixels() -> None:
    rng = np.random.default_rng(0)
    peaks_uv = np.stack([rng.integers(5, 43, 21), rng.integers(5, 59, 21)], axis=1)
    amplitudes = np.linspace(0.3, 0.9, 21).astype(np.float32)
    heatmaps = np.stack([_gaussian(u, v, a) for (u, v), a in zip(peaks_uv, amplitudes, strict=True)]).astype(np.float32)
    estimator = _estimator(_FixedHeatmapModel(heatmaps))
    image = np.zeros((600, 500, 3), np.uint8)
    box = np.array([[100, 200, 300, 400]], np.float32)
    keypoints = estimator.estimate([image], [box], [None])[0].keypoints_xys
    assert keypoints.shape == (1, 17, 3) and keypoints.dtype == np.float32
    # Hand-computed: crop centre (200, 300), size 250 x 333.3; heatmap pixel u -> x = left + u * w / 47.
    w, h = 250.0, 250.0 / 0.75
    expected_x = 200 - w / 2 + peaks_uv[:17, 0] * w / (HEATMAP_WH[0] - 1)
    expected_y = 300 - h / 2 + peaks_uv[:17, 1] * h / (HEATMAP_WH[1] - 1)
    np.testing.assert_allclose(keypoints[0, :, 0], expected_x, atol=0.05)
    np.testing.assert_allclose(keypoints[0, :, 1], expected_y, atol=0.05)
    np.testing.assert_allclose(keypoints[0, :, 2], amplitudes[:17], rtol=1e-4)  # the 4 extras are dropped


class _MirrorSymmetricModel:
    """A flip-equivariant 'network': every channel is the input's red intensity (pooled to heatmap size)
    weighted by a horizontal ramp; left-side channels use the ramp, right-side ones its mirror image,
    midline ones no ramp. So net(flip(I))[k] == flip(net(I)[flip_index[k]]) exactly."""

    def __init__(self) -> None:
        self.head = _Head()
        ramp = np.linspace(0.2, 1.0, HEATMAP_WH[0], dtype=np.float32)
        idx = pm.flip_indices(21)
        weights = []
        for k in range(21):
            if idx[k] == k:
                weights.append(np.full_like(ramp, 0.6))
            else:
                weights.append(ramp if k % 2 == 1 else ramp[::-1])  # COCO: odd = left, even = right
        self.weights = torch.from_numpy(np.stack(weights))[None, :, None, :]  # (1, 21, 1, W)

    def extract_feat(self, x: object) -> tuple[object, ...]:
        red = torch.relu(x[:, 0:1])  # (N, 1, 256, 192), normalised red channel
        pooled = torch.nn.functional.avg_pool2d(red, 4)  # (N, 1, 64, 48)
        return (pooled * self.weights,)


def test_flip_test_swaps_left_right_channels_back() -> None:
    image = np.zeros((400, 400, 3), np.uint8)
    image[150:170, 230:250, 2] = 255  # a red blob right of the box centre
    box = np.array([[100, 100, 300, 300]], np.float32)
    model = _MirrorSymmetricModel()
    plain = _estimator(model, flip_test=False).estimate([image], [box], [None])[0].keypoints_xys
    flipped = _estimator(model, flip_test=True).estimate([image], [box], [None])[0].keypoints_xys
    # For an equivariant network the flip-averaged heatmaps equal the plain ones only if the mirrored
    # heatmaps' left/right channels are swapped back; without the swap the scores would average the
    # ramp with its mirror image.
    np.testing.assert_allclose(flipped, plain, rtol=1e-4, atol=1e-3)
    assert plain[0, 1, 2] != pytest.approx(plain[0, 2, 2], rel=1e-2)  # left and right really differ


def test_outer_polygon_mask_fills_holes_and_drops_specks() -> None:
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    mask[18:22, 18:22] = False  # a hole: the reference's outer contours fill it
    mask[2, 35] = True  # a 1-pixel speck: a contour of 1 point is no polygon
    out = outer_polygon_mask(mask)
    assert out[19, 19] and out[20, 20]
    assert not out[2, 35]
    assert not out[:8].any() and not out[32:].any() and not out[:, :8].any() and not out[:, 32:].any()
    # The rasterised polygon through the boundary pixels' indices keeps the square up to its last row/column.
    assert abs(int(out[10:30, 10:30].sum()) - 400) <= 2 * 20
    assert not outer_polygon_mask(np.zeros((5, 5), bool)).any()
