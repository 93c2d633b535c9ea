"""BMP v2 end to end through the real code: ``configs/tiny_random_v2.yaml`` (RTMDet-Ins tiny, PMPose-s with our
ProbPose head, SAM 2.1 tiny; random weights, CPU), the v2 loop (k_most_visible prompts, remove_losing_old)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.models
pytest.importorskip("torch")
pytest.importorskip("mmdet")
pytest.importorskip("mmpose")
pytest.importorskip("sam2")

from bmp_core.loop import run_bmp
from tests.conftest import read_bgr

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def v2() -> Any:
    from bmp_core.config import load_config
    from bmp_core.models import build_models

    cfg = load_config(REPO / "configs" / "tiny_random_v2.yaml")
    return cfg, build_models(cfg.models)


def test_the_v2_config_is_the_v2_method(v2: Any) -> None:
    cfg, _ = v2
    assert cfg.models.pose.config == "pmpose-s" and cfg.models.pose.num_keypoints == 23
    assert cfg.loop.prompt.selection_method == "k_most_visible" and cfg.loop.prompt.num_pos_keypoints == 3
    assert cfg.loop.pose_nms.remove_losing_old and not cfg.loop.prompt.collapse_face


def test_run_bmp_v2_on_a_demo_image(v2: Any) -> None:
    cfg, models = v2
    image = read_bgr(REPO / "examples" / "images" / "000000000785.jpg")
    h, w = image.shape[:2]
    inst = run_bmp(image, models, cfg.loop).instances
    n = len(inst)
    assert n > 0
    # PMPose predicts presence and visibility for every person: probabilities, never NaN.
    for name in ("keypoint_presence", "keypoint_visibility"):
        values = getattr(inst, name)
        assert values.shape == (n, 17) and values.dtype == np.float32
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all(), name
    # The keypoint score is the predicted OKS (a sigmoid) and the pose score the mean of the 17.
    assert ((inst.keypoints[..., 2] >= 0) & (inst.keypoints[..., 2] <= 1)).all()
    np.testing.assert_allclose(inst.pose_scores, inst.keypoints[..., 2].mean(axis=1), rtol=1e-5, atol=1e-6)
    # k_most_visible (thresholds 0 here): at most 3 points, each a keypoint of that person, ranked by its
    # visibility (the prompt's third column), most visible first.
    assert inst.prompted.all()
    for i in range(n):
        used = inst.prompts[i][np.any(inst.prompts[i] != 0, axis=1)]
        assert 1 <= len(used) <= 3
        assert np.all(np.diff(used[:, 2]) <= 0)
        for x, y, vis in used:
            k = np.flatnonzero((inst.keypoints[i, :, 0] == x) & (inst.keypoints[i, :, 1] == y))
            assert len(k) >= 1 and np.isclose(inst.keypoint_visibility[i, k[0]], vis)
        assert np.isclose(used[0, 2], inst.keypoint_visibility[i].max())
    assert inst.masks.shape == (n, h, w)
