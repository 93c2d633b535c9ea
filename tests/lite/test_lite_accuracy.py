"""Real weights on real images: the BlazePose pose estimator and segmenter, checked on COCO test images.

The accuracy of the whole job (coco.json scored by pycocotools, and ``bmp-label eval`` against
pycocotools) is in ``test_lite_job.py``; here the ports themselves: left/right mapping under a flip,
the segmenter's person lookup, mask conditioning, no detector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mediapipe")

from bmp_core.config import LoopConfig, ModelsConfig, load_config  # noqa: E402
from bmp_core.io.given_boxes import load_given_boxes  # noqa: E402
from bmp_core.models import build_models  # noqa: E402
from bmp_core.ops.masks import mask_windows  # noqa: E402
from bmp_core.ports import BmpModels  # noqa: E402
from tests.conftest import read_bgr  # noqa: E402

pytestmark = pytest.mark.lite

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "lite_cpu.yaml"
LEFT = [1, 3, 5, 7, 9, 11, 13, 15]  # COCO-17 left_eye ... left_ankle
RIGHT = [2, 4, 6, 8, 10, 12, 14, 16]


@pytest.fixture(scope="module")
def lite_models() -> BmpModels:
    return build_models(load_config(CONFIG).models)


@pytest.fixture(scope="module")
def coco_dir(testdata: Path) -> Path:
    return testdata / "coco"


def _pose_and_mirrored_pose(models: BmpModels, image: np.ndarray, boxes: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints of ``boxes`` on the image, and of the mirrored boxes on the mirrored image mapped back
    (x -> width - x) both as they come and with left/right swapped: (kpts, mirrored, swapped)."""
    width = image.shape[1]
    flipped_boxes = boxes.copy()
    flipped_boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    kpts = models.pose.estimate([image], [boxes], [None])[0].keypoints_xys
    kpts_f = models.pose.estimate([np.ascontiguousarray(image[:, ::-1])], [flipped_boxes], [None])[0].keypoints_xys
    mirrored = kpts_f.copy()
    mirrored[..., 0] = width - kpts_f[..., 0]
    swapped = mirrored.copy()
    swapped[:, LEFT + RIGHT] = mirrored[:, RIGHT + LEFT]
    return kpts, mirrored, swapped


def test_flip_swaps_left_and_right(coco_dir: Path, lite_models: BmpModels) -> None:
    gt = load_given_boxes(str(coco_dir / "test_coco.json"))
    image = read_bgr(coco_dir / "000000000785.jpg")  # one skier, fully visible
    boxes = gt["000000000785.jpg"].boxes_xyxy
    kpts, mirrored, swapped = _pose_and_mirrored_pose(lite_models, image, boxes)
    size = float(np.hypot(*(boxes[0, 2:] - boxes[0, :2])))
    # The mirrored result's left joints lie where the original's right joints are, and not where its left are.
    err_swapped = np.linalg.norm(swapped[0, :, :2] - kpts[0, :, :2], axis=1)
    err_unswapped = np.linalg.norm(mirrored[0, 5:, :2] - kpts[0, 5:, :2], axis=1)  # body joints, face is tiny
    assert np.median(err_swapped) < 0.05 * size
    assert np.median(err_unswapped) > 2 * np.median(err_swapped[5:])


def test_segmenter_returns_the_prompted_persons_mask(coco_dir: Path, lite_models: BmpModels) -> None:
    image = read_bgr(coco_dir / "000000196141.jpg")
    boxes = load_given_boxes(str(coco_dir / "test_coco.json"))["000000196141.jpg"].boxes_xyxy
    kpts = lite_models.pose.estimate([image], [boxes], [None])[0].keypoints_xys
    prepared = lite_models.segmenter.prepare(image.copy())  # a copy: matched by content, not identity
    confident = [k[k[:, 2] > 0.5, :2] for k in kpts]
    people = [i for i, pts in enumerate(confident) if len(pts) >= 3]
    assert len(people) >= 2
    out = lite_models.segmenter.segment(prepared, [confident[i][:4] for i in people])
    assert out.masks.shape == (len(people), *image.shape[:2]) and out.masks.dtype == bool
    tight = mask_windows(out.masks)  # the windows given enclose every mask pixel
    given = out.mask_windows_xyxy
    assert (given[:, :2] <= tight[:, :2]).all() and (given[:, 2:] >= tight[:, 2:]).all()
    np.testing.assert_array_equal(mask_windows(out.masks, given), tight)
    for row, i in enumerate(people):
        x1, y1, x2, y2 = boxes[i]
        ys, xs = np.nonzero(out.masks[row])
        assert len(xs) > 0 and 0.0 < out.scores[row] <= 1.0
        inside = (xs >= x1 - 5) & (xs <= x2 + 5) & (ys >= y1 - 5) & (ys <= y2 + 5)
        assert inside.mean() > 0.8  # the prompted person's mask, not a neighbour's


def test_mask_conditioning_changes_the_crop(lite_models: BmpModels, coco_dir: Path) -> None:
    image = read_bgr(coco_dir / "000000000785.jpg")
    boxes = load_given_boxes(str(coco_dir / "test_coco.json"))["000000000785.jpg"].boxes_xyxy
    seen: list[np.ndarray] = []
    runner = lite_models.pose.runner

    class Spy:
        def run(self, crop_bgr: np.ndarray) -> Any:
            seen.append(crop_bgr)
            return runner.run(crop_bgr)

    lite_models.pose.runner = Spy()
    try:
        mask = np.zeros(image.shape[:2], bool)
        x1, y1, x2, y2 = boxes[0].astype(int)
        mask[y1:y2, x1:x2] = True
        lite_models.pose.estimate([image], [boxes], [mask[None]])
        lite_models.pose.estimate([image], [boxes], [np.zeros_like(mask)[None]])  # all-False = no mask
    finally:
        lite_models.pose.runner = runner
    conditioned, plain = seen
    differs = np.any(conditioned != plain, axis=2)
    assert differs.any()
    # Only background pixels changed, each to 80% of its value, rounded to nearest as cv2.addWeighted
    # (and the MaskPose adapter) round.
    expected = np.rint(plain[differs].astype(np.float32) * np.float32(0.8)).astype(np.uint8)
    np.testing.assert_array_equal(conditioned[differs], expected)


def test_no_detector_and_offline_model_check(lite_models: BmpModels) -> None:
    from bmp_core.loop import NoDetectorError, run_bmp
    from bmp_core.models.lite.blazepose import _require_shipped_model

    assert lite_models.detector is not None  # BlazePose's own person detector (test_lite_detector.py)
    without = build_models(load_config(CONFIG, ["models.lite.detect_people=false", "loop.iterations=1"]).models)
    assert without.detector is None
    with pytest.raises(NoDetectorError, match="given_boxes"):
        run_bmp(np.zeros((8, 8, 3), np.uint8), without, LoopConfig(iterations=1))
    _require_shipped_model(1)  # pose_landmark_full + pose_detection are inside the wheel
    assert ModelsConfig(kind="lite").lite.model_complexity == 1


def test_unmatched_prompt_poses_a_crop_around_its_points(coco_dir: Path, lite_models: BmpModels) -> None:
    image = read_bgr(coco_dir / "000000000785.jpg")
    image[0, 0] = (1, 2, 3)  # new content: nothing of this image is cached
    box = load_given_boxes(str(coco_dir / "test_coco.json"))["000000000785.jpg"].boxes_xyxy[0]
    kpts = lite_models.pose.estimate([read_bgr(coco_dir / "000000000785.jpg")], [box[None]], [None])[0].keypoints_xys
    torso = kpts[0, [5, 6, 11, 12], :2]  # shoulders and hips of the skier
    out = lite_models.segmenter.segment(lite_models.segmenter.prepare(image), [torso])
    ys, xs = np.nonzero(out.masks[0])
    assert len(xs) > 500 and out.scores[0] > 0.5
    assert (xs.mean() - kpts[0, [5, 6, 11, 12], 0].mean()) ** 2 < (0.1 * (box[2] - box[0])) ** 2


def test_flip_swaps_left_and_right_on_every_test_image(coco_dir: Path, lite_models: BmpModels) -> None:
    swapped_err, unswapped_err = [], []  # per person: median body-joint error / box diagonal
    for name, (boxes, _scores) in load_given_boxes(str(coco_dir / "test_coco.json")).items():
        kpts, mirrored, swapped = _pose_and_mirrored_pose(lite_models, read_bgr(coco_dir / name), boxes)
        for i, box in enumerate(boxes):
            if kpts[i, :, 2].max() == 0 or mirrored[i, :, 2].max() == 0:
                continue  # BlazePose found nobody in one of the two crops
            diag = float(np.hypot(*(box[2:] - box[:2])))
            body = kpts[i, 5:, :2]
            swapped_err.append(np.median(np.linalg.norm(swapped[i, 5:, :2] - body, axis=1)) / diag)
            unswapped_err.append(np.median(np.linalg.norm(mirrored[i, 5:, :2] - body, axis=1)) / diag)
    # Measured over 11 people: median 0.018 swapped vs 0.18 unswapped.
    assert len(swapped_err) >= 8
    assert np.median(swapped_err) < 0.05
    assert np.median(swapped_err) < np.median(unswapped_err) / 3


def test_pose_output_carries_blazepose_visibility(coco_dir: Path, lite_models: BmpModels) -> None:
    """BlazePose's per-landmark visibility, mapped to COCO-17, comes with the keypoints (it is also their
    score); its presence too where the graph sets it, which mediapipe 0.10.21's solutions.pose does not."""
    image = read_bgr(coco_dir / "000000000785.jpg")
    boxes = load_given_boxes(str(coco_dir / "test_coco.json"))["000000000785.jpg"].boxes_xyxy
    (out,) = lite_models.pose.estimate([image], [boxes], [None])
    assert out.visibility is not None and out.visibility.shape == (len(boxes), 17)
    np.testing.assert_array_equal(out.visibility, out.keypoints_xys[:, :, 2])
    assert np.isfinite(out.visibility).all() and (out.visibility >= 0).all() and (out.visibility <= 1).all()
    assert np.median(out.visibility[0, 5:]) > 0.5  # a fully visible skier's body joints
    result = lite_models.pose.runner._pose.process(np.ascontiguousarray(image[:, :, ::-1]))
    has_presence = result.pose_landmarks.landmark[0].HasField("presence")
    assert (out.presence is not None) == has_presence
