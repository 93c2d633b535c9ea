"""The fakes draw inside boxes but compute what whole-image drawing computes; the recording replays."""

from __future__ import annotations

import numpy as np
import pytest

from bmp_core.config import LoopConfig
from bmp_core.loop import run_bmp
from bmp_core.ports import BmpModels
from bmp_core.testing import build_fake_models
from bmp_core.testing.fakes import CrowdDetector, ModelRecording, _ellipse, _window_gray_mean


def _ellipse_whole_image(h: int, w: int, box_xyxy: np.ndarray) -> np.ndarray:
    """The plain definition: the inscribed ellipse evaluated at every pixel centre of the image."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    ax, ay = max((x2 - x1) / 2, 0.5), max((y2 - y1) / 2, 0.5)
    ys, xs = np.ogrid[:h, :w]
    return ((xs + 0.5 - cx) / ax) ** 2 + ((ys + 0.5 - cy) / ay) ** 2 <= 1.0


def test_ellipse_drawn_in_its_box_equals_the_whole_image_drawing() -> None:
    rng = np.random.default_rng(0)
    h, w = 37, 53
    # half-pixel edges put pixel centres exactly on the ellipse (the <= 1.0 boundary decides them)
    boxes = [[0, 0, 1, 1], [-5, -5, 300, 300], [10.3, 20.7, 10.4, 20.9], [52.5, 36.5, 53, 37], [-9, 3, -2, 8],
             [0.5, 0.5, 4.5, 6.5], [3.5, 2.5, 11.5, 30.5], [47.5, 20.5, 52.5, 36.5]]
    boxes += rng.uniform(-10, 60, (200, 4)).tolist()
    boxes += (np.round(rng.uniform(-10, 60, (200, 4)) * 2) / 2).tolist()
    for box in boxes:
        box = np.asarray(box)
        np.testing.assert_array_equal(_ellipse(h, w, box), _ellipse_whole_image(h, w, box))


def test_window_gray_mean_is_bit_identical_to_the_whole_image_gray() -> None:
    # many windows, on narrow images too (where the whole-image slice is contiguous)
    rng = np.random.default_rng(1)
    for w in (7, 5, 40):
        image = rng.integers(0, 256, (60, w, 3), dtype=np.uint8)
        gray = image.mean(axis=2)
        for _ in range(300):
            r0, c0 = int(rng.integers(0, 59)), int(rng.integers(0, w))
            r1, c1 = min(r0 + 7, 60), min(c0 + 7, w)
            assert _window_gray_mean(image, r0, r1, c0, c1) == gray[r0:r1, c0:c1].mean()
        assert _window_gray_mean(image, 0, 7, 0, w) == gray[0:7, 0:w].mean()


def test_replay_returns_the_recorded_outputs_and_refuses_other_calls() -> None:
    image = np.random.default_rng(2).integers(1, 256, (240, 320, 3), dtype=np.uint8)
    recording = ModelRecording(build_fake_models())
    want = run_bmp(image, recording.models, LoopConfig()).instances
    got = run_bmp(image, recording.replay(), LoopConfig()).instances
    for name in want.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), name)
    with pytest.raises(RuntimeError, match="does not match the recording"):
        run_bmp(image, recording.replay(), LoopConfig(iterations=3))


def test_crowd_detector_people_all_survive_box_nms() -> None:
    image = np.random.default_rng(3).integers(1, 256, (1080, 1920, 3), dtype=np.uint8)
    fakes = build_fake_models()
    models = BmpModels(CrowdDetector(20, 0), fakes.pose, fakes.segmenter)
    assert len(run_bmp(image, models, LoopConfig(iterations=1)).instances) == 20


def test_fakes_hand_over_windows_that_enclose_their_masks() -> None:
    """Every True pixel of a fake's mask lies in the window it gives (the loop reads nothing outside)."""
    from bmp_core.ops.masks import mask_windows

    image = np.random.default_rng(1).integers(1, 256, (120, 200, 3), dtype=np.uint8)
    image[30:90, 40:120] = 0  # blacked out: masks lose pixels there, their windows need not shrink
    for detector in (build_fake_models().detector, CrowdDetector(12, 3)):
        (dets,) = detector.detect([image])
        outputs = [(dets.masks, dets.mask_windows_xyxy)]
        segmenter = build_fake_models().segmenter
        points = [np.array([[x1 + 5, y1 + 5], [x2 - 5, y2 - 5]], np.float32) for x1, y1, x2, y2 in dets.boxes_xyxy]
        out = segmenter.segment(segmenter.prepare(image), points)
        outputs.append((out.masks, out.mask_windows_xyxy))
        for masks, given in outputs:
            tight = mask_windows(masks)
            filled = tight[:, 2] > tight[:, 0]
            assert filled.any()
            assert (given[filled, :2] <= tight[filled, :2]).all() and (given[filled, 2:] >= tight[filled, 2:]).all()
            np.testing.assert_array_equal(mask_windows(masks, given), tight)
