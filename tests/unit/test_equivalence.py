"""Each speed-up gives the same result as the plain reference-shaped path (decisions.md "Speed")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bmp_core.config import LoopConfig
from bmp_core.loop import run_bmp, run_bmp_batch
from bmp_core.ports import BmpModels
from bmp_core.testing import build_fake_models
from bmp_core.testing.reference_shaped import PerInstancePose, ReEncodingSegmenter, reference_shaped
from tests.conftest import read_bgr


def _images(testdata: Path) -> list[np.ndarray]:
    """Two crowded OCHuman photos, or in a plain clone two of the demo set's COCO photos."""
    paths = sorted((testdata / "ochuman").glob("*.jpg"))[:2] or sorted((testdata / "coco").glob("*.jpg"))[1:3]
    assert len(paths) == 2
    return [read_bgr(p) for p in paths]


def _assert_same(a, b) -> None:  # noqa: ANN001
    for name in a.instances.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a.instances, name), getattr(b.instances, name), err_msg=name)


def test_embedding_once_and_batched_prompts_equal_reencoding_per_instance(testdata: Path) -> None:
    for image in _images(testdata):
        fast_models = build_fake_models()
        slow_models = build_fake_models()
        slow = BmpModels(slow_models.detector, slow_models.pose, ReEncodingSegmenter(slow_models.segmenter))
        _assert_same(run_bmp(image, fast_models, LoopConfig()), run_bmp(image, slow, LoopConfig()))
        # the fast path embedded the image once; the reference shape once per pass that prompted SAM
        assert fast_models.segmenter.prepare_calls == 1
        assert slow_models.segmenter.prepare_calls == fast_models.segmenter.segment_calls  # once per pass
        # one decoder call per instance vs one per pass, on the same prompts
        assert slow_models.segmenter.segment_calls == slow_models.segmenter.prompts_seen
        assert slow_models.segmenter.prompts_seen == fast_models.segmenter.prompts_seen


def test_batched_pose_crops_equal_one_crop_at_a_time(testdata: Path) -> None:
    images = _images(testdata)
    fast = build_fake_models()
    slow_models = build_fake_models()
    slow = BmpModels(slow_models.detector, PerInstancePose(slow_models.pose), slow_models.segmenter)
    for got, image in zip(run_bmp_batch(images, fast, LoopConfig()), images):
        _assert_same(got, run_bmp(image, slow, LoopConfig()))
    assert fast.pose.calls == 2  # one pose call per pass for all crops of all images


def test_reference_shaped_path_equals_ours_with_given_boxes(testdata: Path) -> None:
    images = _images(testdata)
    boxes = [np.array([[10, 20, 200, 500], [150, 40, 400, 600]], np.float32)] * len(images)
    ours = run_bmp_batch(images, build_fake_models(), LoopConfig(), boxes)
    for image, b, got in zip(images, boxes, ours):
        _assert_same(got, run_bmp(image, reference_shaped(build_fake_models()), LoopConfig(), boxes_xyxy=b))
