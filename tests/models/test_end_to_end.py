"""``run_bmp`` end to end through the real mmdet / mmpose / sam2 code (tiny random weights, CPU)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.models
pytest.importorskip("torch")
pytest.importorskip("mmdet")
pytest.importorskip("mmpose")
pytest.importorskip("sam2")

from bmp_core.loop import run_bmp


def test_run_bmp_on_ochuman_004806(
    tiny_models: Any, tiny_cfg: Any, ochuman_images: dict[str, np.ndarray]
) -> None:
    image = ochuman_images["004806"]
    h, w = image.shape[:2]
    result = run_bmp(image, tiny_models, tiny_cfg.loop)
    inst = result.instances
    assert result.image_hw == (h, w)
    assert len(inst) > 0  # the person-only random detector fires; the loop keeps some
    assert inst.keypoints.shape == (len(inst), 17, 3) and inst.keypoints.dtype == np.float32
    assert inst.masks.shape == (len(inst), h, w) and inst.masks.dtype == np.bool_
    assert inst.det_masks.shape == (len(inst), h, w)
    assert np.isfinite(inst.keypoints).all()
    # tiny_random's thresholds are 0, so every instance was prompted and SAM really ran.
    assert inst.prompted.all() and np.isfinite(inst.sam_scores).all()
    assert set(inst.iteration.tolist()) <= set(range(tiny_cfg.loop.iterations))
    # Keypoints stay near the image: inside it, give or take the crop padding of their box.
    box_w = inst.boxes_xyxy[:, 2] - inst.boxes_xyxy[:, 0]
    box_h = inst.boxes_xyxy[:, 3] - inst.boxes_xyxy[:, 1]
    margin = np.maximum(box_w, box_h)[:, None]
    assert (inst.keypoints[..., 0] > -margin).all() and (inst.keypoints[..., 0] < w + margin).all()
    assert (inst.keypoints[..., 1] > -margin).all() and (inst.keypoints[..., 1] < h + margin).all()
    for stage in ("detect", "pose", "segment_prepare", "segment", "total"):
        assert result.timings_s[stage] > 0
