"""BMP v2 in the loop: per-keypoint presence/visibility carried through, ``k_most_visible`` prompts, and the
pruning rule ``loop.pose_nms.remove_losing_old`` (old instances go only when a new one survives)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from bmp_core.config import ConfigError, LoopConfig, config_from_dict
from bmp_core.loop import run_bmp
from bmp_core.ops.prompts import MissingVisibilityError
from bmp_core.ports import BmpModels
from bmp_core.records import Detections, PoseOutput
from bmp_core.testing.dense_ops import run_bmp_dense
from bmp_core.testing.fakes import (
    _TEMPLATE_XY,
    FakeSegmenter,
    ModelRecording,
    ScriptedDetector,
    _ellipse,
    build_fake_models,
)
from bmp_core.testing.images import synthetic_people_bgr

V2 = ["loop.prompt.selection_method=k_most_visible", "loop.prompt.num_pos_keypoints=3",
      "loop.prompt.collapse_face=false", "loop.prompt.confidence_thr=0.5", "loop.prompt.visibility_thr=0.5",
      "loop.pose_nms.keypoint_thr=0.5", "loop.pose_nms.remove_losing_old=true", "models.kind=fake",
      "models.fake.visibility=true"]


class ScriptedPose:
    """Keypoints, visibility and presence chosen per box (keyed by its x1) by the test."""

    def __init__(self, by_x1: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> None:
        self.by_x1 = by_x1

    def estimate(self, images_bgr: Sequence[np.ndarray], boxes_xyxy: Sequence[np.ndarray],
                 masks: Sequence[np.ndarray | None]) -> list[PoseOutput]:
        out = []
        for boxes in boxes_xyxy:
            rows = [self.by_x1[int(b[0])] for b in boxes]
            kpts = np.stack([r[0] for r in rows]).astype(np.float32)
            vis = None if any(r[1] is None for r in rows) else np.stack([r[1] for r in rows]).astype(np.float32)
            out.append(PoseOutput(kpts, None if vis is None else np.ones_like(vis), vis))
        return out


def _dets(h: int, w: int, boxes: list[list[float]]) -> Detections:
    arr = np.asarray(boxes, np.float32)
    return Detections(arr, np.full(len(arr), 0.9, np.float32), np.zeros(len(arr), np.int64),
                      np.stack([_ellipse(h, w, b) for b in arr]))


def _assert_identical(got, want) -> None:  # noqa: ANN001 - Instances
    for name in want.__dataclass_fields__:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name


# --- per-keypoint outputs and k_most_visible in the loop ---------------------------------------------------

def test_fake_v2_loop_carries_visibility_and_equals_the_whole_image_loop() -> None:
    cfg = config_from_dict({}, V2)
    for seed, people in ((0, 3), (3, 5)):
        image = synthetic_people_bgr(240, 320, people, seed)
        recording = ModelRecording(build_fake_models(cfg.models.fake))
        got = run_bmp(image, recording.models, cfg.loop).instances
        assert len(got) and got.keypoint_visibility.shape == (len(got), 17)
        assert np.isfinite(got.keypoint_visibility).all() and np.isfinite(got.keypoint_presence).all()
        # the prompts are the most visible keypoints: their third column is that visibility
        for i in np.flatnonzero(got.prompted):
            k = int((got.prompts[i, :, 2] > 0).sum())
            assert np.allclose(np.sort(got.prompts[i, :k, 2])[::-1], np.sort(got.keypoint_visibility[i])[::-1][:k])
        _assert_identical(got, run_bmp_dense(image, recording.replay(), cfg.loop))
    # v1 fakes: no visibility, NaN rows
    plain = run_bmp(synthetic_people_bgr(240, 320, 3, 0), build_fake_models(), LoopConfig()).instances
    assert len(plain) and np.isnan(plain.keypoint_visibility).all() and np.isnan(plain.keypoint_presence).all()


def test_fake_visibility_is_low_under_another_persons_mask() -> None:
    image = np.full((100, 200, 3), 200, np.uint8)
    boxes = np.array([[20, 10, 80, 90], [40, 10, 100, 90]], np.float32)
    masks = np.stack([_ellipse(100, 200, b) for b in boxes])  # person 0 first: in front of person 1
    (out,) = build_fake_models(config_from_dict({}, ["models.fake.visibility=true"]).models.fake).pose.estimate(
        [image], [boxes], [masks])
    xy = out.keypoints_xys[1, :, :2].astype(int)
    under = masks[0][xy[:, 1], xy[:, 0]]
    assert under.any() and (~under).any()
    assert np.all(out.visibility[1, under] < 0.5) and np.all(out.visibility[1, ~under] > 0.5)
    assert np.all(out.visibility[0] > 0.5)  # nobody stands in front of person 0
    assert np.all(out.presence == np.float32(0.97))
    (plain,) = build_fake_models().pose.estimate([image], [boxes], [masks])
    assert plain.visibility is None and plain.presence is None
    np.testing.assert_array_equal(plain.keypoints_xys, out.keypoints_xys)  # the keypoints do not change


def test_k_most_visible_without_a_visible_keypoint_keeps_the_detector_mask() -> None:
    image = np.full((120, 160, 3), 120, np.uint8)
    a, b = [10, 10, 60, 110], [90, 10, 140, 110]
    kpts = {x1: np.concatenate([np.asarray(box[:2]) + _TEMPLATE_XY * (np.asarray(box[2:]) - box[:2]),
                                np.full((17, 1), 0.9)], axis=1) for x1, box in ((10, a), (90, b))}
    vis_a = np.full(17, 0.5)  # = the threshold: fails the strict gate (> 0.5) everywhere
    vis_b = np.where(np.arange(17) == 11, 0.8, 0.3)  # one visible keypoint: one prompt point
    pose = ScriptedPose({10: (kpts[10], vis_a), 90: (kpts[90], vis_b)})
    dets = _dets(120, 160, [a, b])
    cfg = config_from_dict({}, V2).loop
    got = run_bmp(image, BmpModels(ScriptedDetector([[dets]]), pose, FakeSegmenter()),
                  LoopConfig(iterations=1, pose_nms=cfg.pose_nms, prompt=cfg.prompt)).instances
    assert got.prompted.tolist() == [False, True]
    np.testing.assert_array_equal(got.masks[0], dets.masks[0])
    assert np.isnan(got.sam_scores[0]) and not np.isnan(got.sam_scores[1])
    np.testing.assert_allclose(got.prompts[1], [[*kpts[90][11, :2], 0.8], [0, 0, 0], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(got.keypoint_visibility, np.stack([vis_a, vis_b]), rtol=1e-6)


def test_k_most_visible_refuses_a_pose_model_without_visibility() -> None:
    with pytest.raises(ConfigError, match="k_most_visible"):
        config_from_dict({}, [o for o in V2 if o != "models.fake.visibility=true"])
    with pytest.raises(ConfigError, match="k_most_visible"):
        config_from_dict({}, ["loop.prompt.selection_method=k_most_visible"])  # MaskPose
    config_from_dict({}, ["loop.prompt.selection_method=k_most_visible", "models.pose.config=pmpose-b",
                     "models.pose.num_keypoints=23"])
    # run_bmp called directly with such models (no BmpConfig): one clear error, not a wrong prompt
    cfg = config_from_dict({}, V2).loop
    with pytest.raises(MissingVisibilityError, match="predicts none"):
        run_bmp(synthetic_people_bgr(240, 320, 3, 0), build_fake_models(), cfg)


# --- loop.pose_nms.remove_losing_old --------------------------------------------------------------------

_BOX = np.array([100, 50, 300, 450], np.float32)


def _shifted(dx: float, num_valid: int) -> np.ndarray:
    """Template keypoints over ``_BOX`` moved right by ``dx``; the first ``num_valid`` score 0.9, others 0.1."""
    out = np.zeros((17, 3), np.float32)
    out[:, :2] = _BOX[:2] + _TEMPLATE_XY * (_BOX[2:] - _BOX[:2]) + [dx, 0]
    out[:, 2] = np.where(np.arange(17) < num_valid, 0.9, 0.1)
    return out


def _pruning_run(remove_losing_old: bool, new_survives: bool):  # noqa: ANN202 - (Instances, detector)
    """Old A (pass 0) and C (pass 1), then new B in pass 2. OKS(A, C) < 0.8, OKS(A, B) and OKS(B, C) > 0.8,
    the (A, B) pair the largest; A has 12 valid keypoints, B 14, C 17 (or 10 when ``new_survives``).
    So pose-NMS first removes A (B has more), then B loses to C unless C is the weaker one."""
    h, w = 500, 400
    image = np.random.default_rng(0).integers(1, 256, (h, w, 3), dtype=np.uint8)
    box = _BOX.tolist()
    a, c, b = box, [box[0] + 1, *box[1:3], box[3]], [box[0] + 2, *box[1:]]
    pose = ScriptedPose({100: (_shifted(0, 12), None), 101: (_shifted(20, 10 if new_survives else 17), None),
                         102: (_shifted(7, 14), None)})
    detector = ScriptedDetector([[_dets(h, w, [a])], [_dets(h, w, [c])], [_dets(h, w, [b])],
                                 [Detections.empty(h, w)]])
    cfg = LoopConfig(iterations=4, pose_nms=LoopConfig().pose_nms.__class__(remove_losing_old=remove_losing_old))
    models = BmpModels(detector, pose, FakeSegmenter())
    return run_bmp(image, models, cfg, trace=True), detector, image, cfg, pose


@pytest.mark.parametrize("remove_losing_old", [False, True])
def test_old_instances_lost_to_a_surviving_new_one_are_removed_either_way(remove_losing_old: bool) -> None:
    result, detector, image, cfg, pose = _pruning_run(remove_losing_old, new_survives=True)
    inst = result.instances
    # A lost to B, and B beat C (C has fewer valid keypoints now): A and C are gone, B is in.
    assert inst.boxes_xyxy[:, 0].tolist() == [102.0]
    assert [t.num_removed_old for t in result.traces[:3]] == [0, 0, 2]
    # pass 3's detector input blacks out only the survivor's mask: A's and C's pixels are back
    survivor = inst.masks[0]
    pass3 = detector.inputs[3][0]
    assert np.all(pass3[survivor] == 0)
    np.testing.assert_array_equal(pass3[~survivor], image[~survivor])
    replay = ScriptedDetector(detector.outputs)
    want = run_bmp_dense(image, BmpModels(replay, pose, FakeSegmenter()), cfg)
    _assert_identical(inst, want)


def test_without_a_surviving_new_instance_v2_keeps_the_old_ones_and_d3_does_not() -> None:
    d3, _, image, cfg_d3, pose = _pruning_run(False, new_survives=False)
    v2, detector, _, cfg_v2, _ = _pruning_run(True, new_survives=False)
    # D3 as decided: A lost to B, so A goes, though B then lost to C; v2: no new one survived, nothing goes.
    assert d3.instances.boxes_xyxy[:, 0].tolist() == [101.0]
    assert v2.instances.boxes_xyxy[:, 0].tolist() == [100.0, 101.0]
    assert d3.traces[2].num_removed_old == 1 and v2.traces[2].num_removed_old == 0
    assert d3.traces[2].num_new == v2.traces[2].num_new == 0
    # the next pass blacks out what survived: A and C under v2
    covered = v2.instances.masks.any(axis=0)
    np.testing.assert_array_equal(detector.inputs[3][0][~covered], image[~covered])
    assert np.all(detector.inputs[3][0][covered] == 0)
    for result, cfg in ((d3, cfg_d3), (v2, cfg_v2)):
        replay = ScriptedDetector(detector.outputs)
        _assert_identical(result.instances, run_bmp_dense(image, BmpModels(replay, pose, FakeSegmenter()), cfg))
