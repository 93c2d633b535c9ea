"""Each real adapter (tiny random-weight models) on real OCHuman images: port contract and batching.

Random weights make the outputs meaningless but not arbitrary: shapes, dtypes, coordinate frames and
batch independence are properties of the plumbing, which is what these tests check.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.models
torch = pytest.importorskip("torch")
pytest.importorskip("mmdet")
pytest.importorskip("mmpose")
pytest.importorskip("sam2")

from bmp_core.ops.masks import mask_windows
from bmp_core.ports import Detector, PoseEstimator, Segmenter
from bmp_core.records import Detections, SegmentOutput


def test_adapters_satisfy_the_ports(tiny_models: Any) -> None:
    assert isinstance(tiny_models.detector, Detector)
    assert isinstance(tiny_models.pose, PoseEstimator)
    assert isinstance(tiny_models.segmenter, Segmenter)


# --------------------------------------------------------------------------------------------
# Detector


@pytest.fixture(scope="module")
def detections_batched(tiny_models: Any, ochuman_images: dict[str, np.ndarray]) -> list[Detections]:
    images = [ochuman_images["004806"], ochuman_images["003799"]]  # different sizes and aspect ratios
    return tiny_models.detector.detect(images)


def test_detector_output_contract(
    detections_batched: list[Detections], ochuman_images: dict[str, np.ndarray], tiny_cfg: Any
) -> None:
    for dets, name in zip(detections_batched, ("004806", "003799"), strict=True):
        h, w = ochuman_images[name].shape[:2]
        assert 0 < len(dets) <= tiny_cfg.models.detector.max_per_img
        assert dets.boxes_xyxy.dtype == np.float32 and dets.scores.dtype == np.float32
        assert dets.labels.dtype == np.int64 and dets.masks.dtype == np.bool_
        assert dets.masks.shape == (len(dets), h, w)  # full resolution of the ORIGINAL image
        # Boxes are in the original frame (not the 640 letterbox): inside the image, x1 <= x2, y1 <= y2.
        b = dets.boxes_xyxy
        assert (
            (b[:, 0] >= -1).all()
            and (b[:, 2] <= w + 1).all()
            and (b[:, 1] >= -1).all()
            and (b[:, 3] <= h + 1).all()
        )
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert (dets.scores >= tiny_cfg.models.detector.score_thr).all() and (dets.scores <= 1).all()
        assert (np.diff(dets.scores) <= 1e-6).all()  # mmdet returns them sorted by score
        assert set(dets.labels.tolist()) <= {0}  # tiny_random's person-only head
        # the masks' windows, found on the device, are the tight ones the host would find
        assert dets.mask_windows_xyxy.dtype == np.int64
        np.testing.assert_array_equal(dets.mask_windows_xyxy, mask_windows(dets.masks))


def test_detector_bgr_input_convention(tiny_models: Any) -> None:
    # RTMDet's config normalises BGR input with BGR-ordered mean/std (no channel flip).
    pre = tiny_models.detector.model.data_preprocessor
    assert pre._channel_conversion is False
    np.testing.assert_allclose(pre.mean.flatten().tolist(), [103.53, 116.28, 123.675], rtol=1e-6)


def test_detector_batched_equals_one_by_one(
    tiny_models: Any, ochuman_images: dict[str, np.ndarray], detections_batched: list[Detections]
) -> None:
    for dets, name in zip(detections_batched, ("004806", "003799"), strict=True):
        (single,) = tiny_models.detector.detect([ochuman_images[name]])
        assert len(single) == len(dets)
        np.testing.assert_allclose(single.boxes_xyxy, dets.boxes_xyxy, atol=1e-2)
        np.testing.assert_allclose(single.scores, dets.scores, atol=1e-4)
        np.testing.assert_array_equal(single.labels, dets.labels)
        assert (single.masks != dets.masks).mean() < 1e-4


# --------------------------------------------------------------------------------------------
# Pose


def _boxes(h: int, w: int) -> np.ndarray:
    return np.array(
        [
            [0.1 * w, 0.1 * h, 0.5 * w, 0.9 * h],
            [0.4 * w, 0.2 * h, 0.95 * w, 0.7 * h],
            [0.6 * w, 0.5 * h, 0.7 * w, 0.6 * h],
        ],
        np.float32,
    )


def _partial_masks(h: int, w: int, boxes: np.ndarray) -> np.ndarray:
    masks = np.zeros((len(boxes), h, w), bool)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int), strict=True):
        m[y1 : (y1 + y2) // 2, x1:x2] = True  # upper half of each box
    return masks


def test_pose_output_contract_and_frame(
    tiny_models: Any, ochuman_images: dict[str, np.ndarray], tiny_cfg: Any
) -> None:
    import dataclasses

    from bmp_core.models.pose_maskpose import MaskPoseEstimator

    image = ochuman_images["004806"]
    h, w = image.shape[:2]
    boxes = _boxes(h, w)
    (out,) = tiny_models.pose.estimate([image], [boxes], [_partial_masks(h, w, boxes)])
    assert out.presence is None and out.visibility is None  # MaskPose predicts neither
    reference = out.keypoints_xys
    assert reference.shape == (3, 17, 3) and reference.dtype == np.float32 and np.isfinite(reference).all()
    # Random weights give flat heatmaps on which DARK's unbounded step (the reference's) can leave the crop;
    # the frame is checked with the opt-in bound of one heatmap pixel around the argmax.
    pose = tiny_models.pose
    bounded_cfg = dataclasses.replace(pose.cfg, dark_max_offset_px=1.0)
    bounded = MaskPoseEstimator(pose.model, pose.device, bounded_cfg)
    kpts = bounded.estimate([image], [boxes], [_partial_masks(h, w, boxes)])[0].keypoints_xys
    np.testing.assert_array_equal(kpts[..., 2], reference[..., 2])  # the bound moves points, not scores
    # Each keypoint lies inside its crop: the box padded by 1.25 and grown to 3:4, in image pixels.
    pad = tiny_cfg.models.pose.bbox_padding
    for box, person in zip(boxes, kpts, strict=True):
        bw, bh = (box[2] - box[0]) * pad, (box[3] - box[1]) * pad
        bw, bh = max(bw, bh * 0.75), max(bh, bw / 0.75)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        # DARK refinement may move a border peak by < 1 heatmap pixel (crop size / 47 or / 63) outward.
        assert (np.abs(person[:, 0] - cx) <= bw / 2 + bw / 47).all(), (person[:, 0], cx, bw)
        assert (np.abs(person[:, 1] - cy) <= bh / 2 + bh / 63).all(), (person[:, 1], cy, bh)
    assert np.isfinite(kpts).all() and (kpts[..., 2] >= 0).all()


def test_pose_all_crops_of_all_images_in_one_batch_equals_one_by_one(
    tiny_models: Any, ochuman_images: dict[str, np.ndarray]
) -> None:
    images = [ochuman_images["004806"], ochuman_images["000817"]]
    boxes = [_boxes(*im.shape[:2]) for im in images]
    masks = [_partial_masks(*im.shape[:2], b) for im, b in zip(images, boxes, strict=True)]
    batched = [p.keypoints_xys for p in tiny_models.pose.estimate(images, boxes, masks)]
    for i, image in enumerate(images):
        for j in range(len(boxes[i])):
            one = tiny_models.pose.estimate([image], [boxes[i][j : j + 1]], [masks[i][j : j + 1]])[0].keypoints_xys
            np.testing.assert_allclose(one[0], batched[i][j], atol=2e-3, rtol=1e-4)


def test_pose_empty_mask_means_box_only_and_a_mask_changes_the_input(
    tiny_models: Any, ochuman_images: dict[str, np.ndarray]
) -> None:
    image = ochuman_images["003896"]
    h, w = image.shape[:2]
    boxes = _boxes(h, w)[:2]
    empty = np.zeros((2, h, w), bool)
    no_mask = tiny_models.pose.estimate([image], [boxes], [None])[0].keypoints_xys
    empty_mask = tiny_models.pose.estimate([image], [boxes], [empty])[0].keypoints_xys
    with_mask = tiny_models.pose.estimate([image], [boxes], [_partial_masks(h, w, boxes)])[0].keypoints_xys
    np.testing.assert_allclose(empty_mask, no_mask, atol=1e-5)
    assert not np.allclose(with_mask, no_mask, atol=1e-5)  # the conditioning reaches the network


def test_pose_no_boxes(tiny_models: Any, ochuman_images: dict[str, np.ndarray]) -> None:
    image = ochuman_images["004806"]
    out = tiny_models.pose.estimate([image, image], [np.zeros((0, 4), np.float32)] * 2, [None, None])
    assert [o.keypoints_xys.shape for o in out] == [(0, 17, 3), (0, 17, 3)]


def test_plain_vitpose_ignores_masks(tiny_models: Any, ochuman_images: dict[str, np.ndarray]) -> None:
    import dataclasses

    from bmp_core.models.pose_maskpose import MaskPoseEstimator

    maskpose = tiny_models.pose
    plain = MaskPoseEstimator(
        maskpose.model, maskpose.device, dataclasses.replace(maskpose.cfg, mask_conditioning=False)
    )
    image = ochuman_images["003896"]
    h, w = image.shape[:2]
    boxes = _boxes(h, w)[:1]
    with_mask = plain.estimate([image], [boxes], [_partial_masks(h, w, boxes)])[0].keypoints_xys
    box_only = maskpose.estimate([image], [boxes], [None])[0].keypoints_xys
    np.testing.assert_allclose(with_mask, box_only, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Segmenter


def _prompts() -> list[np.ndarray]:
    return [
        np.array([[200, 300], [250, 420], [230, 600]], np.float32),
        np.array([[450, 200]], np.float32),
        np.array([[100, 100], [150, 180], [120, 260]], np.float32),
        np.array([[500, 700], [520, 760]], np.float32),
    ]


def test_segmenter_output_contract(
    tiny_models: Any, sam_prepared_004806: Any, ochuman_images: dict[str, np.ndarray]
) -> None:
    out = tiny_models.segmenter.segment(sam_prepared_004806, _prompts())
    h, w = ochuman_images["004806"].shape[:2]
    assert isinstance(out, SegmentOutput)
    assert out.masks.shape == (4, h, w) and out.masks.dtype == np.bool_
    assert out.scores.shape == (4,) and out.scores.dtype == np.float32
    np.testing.assert_array_equal(out.mask_windows_xyxy, mask_windows(out.masks))  # found on the device
    empty = tiny_models.segmenter.segment(sam_prepared_004806, [])
    assert empty.masks.shape == (0, h, w) and empty.scores.shape == (0,)
    assert empty.mask_windows_xyxy.shape == (0, 4)


def test_segmenter_batched_prompts_equal_one_call_each(tiny_models: Any, sam_prepared_004806: Any) -> None:
    prompts = _prompts()
    batched = tiny_models.segmenter.segment(sam_prepared_004806, prompts)  # groups K=3 (2 prompts), 1, 2
    for i, points in enumerate(prompts):
        one = tiny_models.segmenter.segment(sam_prepared_004806, [points])
        assert (one.masks[0] != batched.masks[i]).mean() < 1e-4
        np.testing.assert_allclose(one.scores[0], batched.scores[i], atol=1e-4)


def test_segmenter_uses_dynamic_multimask_via_stability(tiny_models: Any) -> None:
    decoder = tiny_models.segmenter.predictor.model.sam_mask_decoder
    assert decoder.dynamic_multimask_via_stability is True
    assert decoder.dynamic_multimask_stability_thresh == pytest.approx(0.98)
    assert tiny_models.segmenter.predictor.model.image_size == 1024


def test_device_windows_equal_the_host_search_on_random_masks() -> None:
    """``models.windows.tight_windows`` against ``ops.masks.mask_windows`` (and a hand-made case)."""
    from bmp_core.models.windows import tight_windows

    rng = np.random.default_rng(3)
    masks = np.zeros((40, 23, 31), bool)
    for i in range(1, 40):  # mask 0 stays empty
        y0, x0 = rng.integers(0, 23), rng.integers(0, 31)
        block = masks[i, y0: y0 + rng.integers(1, 23), x0: x0 + rng.integers(1, 31)]
        block[...] = rng.uniform(size=block.shape) > rng.uniform(0.0, 0.9)
    masks[5] = True  # the whole image
    masks[6] = False
    masks[6, 22, 30] = True  # the last pixel only
    got = tight_windows(torch.as_tensor(masks))
    np.testing.assert_array_equal(got, mask_windows(masks))
    np.testing.assert_array_equal(got[[0, 5, 6]], [[0, 0, 0, 0], [0, 0, 31, 23], [30, 22, 31, 23]])
    np.testing.assert_array_equal(tight_windows(torch.as_tensor(masks.astype(np.uint8))), got)
    assert tight_windows(torch.zeros((0, 4, 5), dtype=torch.bool)).shape == (0, 4)
