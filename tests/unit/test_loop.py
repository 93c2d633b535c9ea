"""The BMP loop on fake models: golden result on a real image plus targeted behaviours."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bmp_core.config import LoopConfig, config_from_dict
from bmp_core.loop import run_bmp, run_bmp_batch
from bmp_core.ops.rle import decode_rle, encode_rle
from bmp_core.ports import BmpModels, Detector, PoseEstimator, Segmenter
from bmp_core.records import Detections, PoseOutput
from bmp_core.testing import (
    FakeDetector,
    FakePoseEstimator,
    FakeSegmenter,
    ScriptedDetector,
    build_fake_models,
)
from bmp_core.testing.fakes import _TEMPLATE_XY, _ellipse
from bmp_core.testing.images import SYNTHETIC_IMAGES, synthetic_people_bgr

GOLDEN = Path(__file__).parent / "golden" / "004806_fake.json"
CFG = LoopConfig()


class TemplatePose:
    """Template skeleton over each box; per-box keypoint scores chosen by the test (default 0.9)."""

    def __init__(self, scores_by_box: dict[tuple[int, ...], np.ndarray] | None = None) -> None:
        self.scores_by_box = scores_by_box or {}
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray | None] = []

    def estimate(self, images_bgr: Sequence[np.ndarray], boxes_xyxy: Sequence[np.ndarray],
                 masks: Sequence[np.ndarray | None]) -> list[PoseOutput]:
        out = []
        for image, boxes, m in zip(images_bgr, boxes_xyxy, masks, strict=True):
            self.images.append(image.copy())
            self.masks.append(None if m is None else m.copy())
            k = np.zeros((len(boxes), 17, 3), np.float32)
            for i, b in enumerate(boxes):
                k[i, :, :2] = b[:2] + _TEMPLATE_XY * (b[2:] - b[:2])
                k[i, :, 2] = self.scores_by_box.get(tuple(int(v) for v in b), 0.9)
            out.append(PoseOutput(k))
        return out


def _noise_image(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (h, w, 3), dtype=np.uint8)


def _dets(h: int, w: int, boxes: list[list[float]], scores: list[float], labels: list[int] | None = None
          ) -> Detections:
    boxes_arr = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Detections(
        boxes_arr, np.asarray(scores, np.float32),
        np.asarray(labels if labels is not None else [0] * len(boxes_arr), np.int64),
        np.stack([_ellipse(h, w, b) for b in boxes_arr]) if len(boxes_arr) else np.zeros((0, h, w), bool),
    )


def _result_to_json(result) -> dict:  # noqa: ANN001 - test helper
    inst = result.instances
    return {
        "image_hw": list(result.image_hw),
        "boxes_xyxy": inst.boxes_xyxy.tolist(),
        "det_scores": inst.det_scores.tolist(),
        "keypoints": inst.keypoints.tolist(),
        "pose_scores": inst.pose_scores.tolist(),
        "sam_scores": inst.sam_scores.tolist(),
        "iteration": inst.iteration.tolist(),
        "prompted": inst.prompted.tolist(),
        "prompts": inst.prompts.tolist(),
        "det_mask_iou": inst.det_mask_iou.tolist(),
        "masks_rle": encode_rle(inst.masks),
    }


def test_golden_result_on_ochuman_004806(image_004806: np.ndarray) -> None:
    """Fakes on the BMP demo image; regenerate with BMP_REGEN_GOLDEN=1 after an intended change."""
    result = run_bmp(image_004806, build_fake_models(), CFG)
    got = _result_to_json(result)
    if os.environ.get("BMP_REGEN_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1))
    want = json.loads(GOLDEN.read_text())
    assert got["image_hw"] == want["image_hw"] == [948, 686]
    assert got["iteration"] == want["iteration"]
    assert got["prompted"] == want["prompted"]
    for key in ("boxes_xyxy", "det_scores", "keypoints", "pose_scores", "sam_scores", "prompts", "det_mask_iou"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-4, err_msg=key)
    np.testing.assert_array_equal(decode_rle(got["masks_rle"]), decode_rle(want["masks_rle"]))
    # The golden run exercises the whole loop: people found in both passes, masks refined.
    assert 0 in got["iteration"] and 1 in got["iteration"]


def test_loop_structure_on_real_image(image_004806: np.ndarray) -> None:
    models = build_fake_models()
    result = run_bmp(image_004806, models, CFG, trace=True)
    inst = result.instances
    h, w = image_004806.shape[:2]
    assert inst.masks.shape == (len(inst), h, w) and inst.keypoints.shape == (len(inst), 17, 3)
    # merge order: older iterations first
    assert np.all(np.diff(inst.iteration) >= 0)
    # exclusivity (docs/method.md#exclusive-masks): masks of one pass never overlap; a newer mask keeps a pixel that an
    # older one also has only when its SAM score is higher (older masks are not modified)
    for it in np.unique(inst.iteration):
        assert not np.any(inst.masks[(inst.iteration == it) & inst.prompted].sum(0) > 1)
    for i in range(len(inst)):
        for j in range(len(inst)):
            if inst.iteration[i] < inst.iteration[j] and np.any(inst.masks[i] & inst.masks[j]):
                assert inst.sam_scores[j] > inst.sam_scores[i]
    np.testing.assert_allclose(inst.pose_scores, inst.keypoints[:, :, 2].mean(1), rtol=1e-6)
    # SAM embedding computed once for the image, though both passes prompted SAM
    assert models.segmenter.prepare_calls == 1 and models.segmenter.segment_calls == 2
    # the second pass ran the detector on the image with pass-1 masks blacked out
    first = inst.iteration == 0
    second_input = result.traces[1].detector_input_bgr
    covered = inst.masks[first].any(0)
    assert covered.any() and (inst.iteration == 1).any()
    assert np.all(second_input[covered] == 0)
    np.testing.assert_array_equal(second_input[~covered], image_004806[~covered])
    # no person survives the filter with score <= 0.3 or a non-person label
    for t in result.traces:
        assert np.all(t.detections.scores > 0.3) and np.all(t.detections.labels == 0)


def test_duplicate_found_in_second_pass_is_removed_by_pose_nms() -> None:
    image = _noise_image()
    h, w = image.shape[:2]
    a, a_dup, b = [20, 10, 70, 110], [22, 11, 72, 111], [95, 10, 145, 110]
    weak = np.where(np.arange(17) < 10, 0.9, 0.1).astype(np.float32)
    detector = ScriptedDetector([[_dets(h, w, [a], [0.9])], [_dets(h, w, [a_dup, b], [0.8, 0.7])]])
    pose = TemplatePose({tuple(a_dup): weak})
    models = BmpModels(detector, pose, FakeSegmenter())
    inst = run_bmp(image, models, CFG).instances
    assert inst.iteration.tolist() == [0, 1]
    np.testing.assert_allclose(inst.boxes_xyxy, [a, b])
    # pose always ran on the original image, never on the masked-out one
    for seen in pose.images:
        np.testing.assert_array_equal(seen, image)
    # the second detector input is the original with the first person's refined mask blacked out
    second = detector.inputs[1][0]
    assert np.all(second[inst.masks[0]] == 0)
    np.testing.assert_array_equal(second[~inst.masks[0]], image[~inst.masks[0]])


def test_old_instance_is_replaced_by_a_better_duplicate() -> None:
    image = _noise_image()
    h, w = image.shape[:2]
    a, a_dup = [20, 10, 70, 110], [22, 11, 72, 111]
    weak = np.where(np.arange(17) < 8, 0.9, 0.1).astype(np.float32)
    detector = ScriptedDetector([[_dets(h, w, [a], [0.9])], [_dets(h, w, [a_dup], [0.8])]])
    models = BmpModels(detector, TemplatePose({tuple(a): weak}), FakeSegmenter())
    inst = run_bmp(image, models, CFG).instances
    assert inst.iteration.tolist() == [1]
    np.testing.assert_allclose(inst.boxes_xyxy, [a_dup])


def test_instance_without_visible_keypoints_keeps_its_detector_mask() -> None:
    image = _noise_image(w=320)
    h, w = image.shape[:2]
    a, b = [20, 10, 70, 110], [220, 10, 270, 110]  # far apart: A's box-fallback OKS with B is ~0
    dets = _dets(h, w, [a, b], [0.9, 0.8])
    segmenter = FakeSegmenter()
    low = np.full(17, 0.1, np.float32)
    cfg = config_from_dict({}, ["loop.iterations=1"]).loop
    inst = run_bmp(image, BmpModels(ScriptedDetector([[dets]]), TemplatePose({tuple(a): low}), segmenter),
                   cfg).instances
    assert inst.prompted.tolist() == [False, True]
    np.testing.assert_array_equal(inst.masks[0], dets.masks[0])
    assert np.isnan(inst.sam_scores[0]) and not np.isnan(inst.sam_scores[1])
    assert inst.det_mask_iou[0] == 1.0
    assert np.all(inst.prompts[0] == 0)
    assert segmenter.segment_calls == 1 and segmenter.prompts_seen == 1


def test_nobody_prompted_means_sam_is_never_run() -> None:
    image = _noise_image()
    h, w = image.shape[:2]
    a = [20, 10, 70, 110]
    segmenter = FakeSegmenter()
    models = BmpModels(ScriptedDetector([[_dets(h, w, [a], [0.9])], [Detections.empty(h, w)]]),
                       TemplatePose({tuple(a): np.full(17, 0.2, np.float32)}), segmenter)
    inst = run_bmp(image, models, CFG).instances
    assert len(inst) == 1 and not inst.prompted[0]
    assert segmenter.prepare_calls == 0 and segmenter.segment_calls == 0


def test_empty_image_is_a_valid_result_with_zero_instances(image_004806: np.ndarray) -> None:
    black = np.zeros((64, 48, 3), np.uint8)
    models = build_fake_models()
    result = run_bmp(black, models, CFG)
    assert len(result.instances) == 0 and result.image_hw == (64, 48)
    assert result.instances.masks.shape == (0, 64, 48)
    assert models.detector.calls == 2 and models.pose.calls == 0 and models.segmenter.prepare_calls == 0
    h, w = image_004806.shape[:2]
    nothing = BmpModels(ScriptedDetector([[Detections.empty(h, w)]]), FakePoseEstimator(), FakeSegmenter())
    assert len(run_bmp(image_004806, nothing, CFG).instances) == 0


def test_detector_filter_label_strict_score_and_box_nms() -> None:
    image = _noise_image()
    h, w = image.shape[:2]
    boxes = [[10, 10, 60, 110], [12, 10, 62, 110], [80, 10, 130, 110], [100, 5, 150, 100], [5, 5, 40, 40]]
    # 0 kept; 1 suppressed by 0 (IoU > 0.3); 2 has score exactly 0.3 (dropped); 3 kept; 4 is a dog.
    dets = _dets(h, w, boxes, [0.9, 0.85, 0.3, 0.31, 0.99], [0, 0, 0, 0, 16])
    pose = TemplatePose()
    cfg = config_from_dict({}, ["loop.iterations=1"]).loop
    inst = run_bmp(image, BmpModels(ScriptedDetector([[dets]]), pose, FakeSegmenter()), cfg).instances
    np.testing.assert_allclose(inst.boxes_xyxy, [boxes[0], boxes[3]])
    np.testing.assert_allclose(inst.det_scores, [0.9, 0.31], rtol=1e-6)
    # the pose estimator was conditioned on the detector masks of exactly those detections
    np.testing.assert_array_equal(pose.masks[0], dets.masks[[0, 3]])


def test_given_boxes_replace_the_first_detector_pass(image_004806: np.ndarray) -> None:
    models = build_fake_models()
    h, w = image_004806.shape[:2]
    boxes = np.array([[50, 100, 300, 800], [380, 120, 640, 900]], np.float32)
    pose = TemplatePose()
    models = BmpModels(models.detector, pose, models.segmenter)
    inst = run_bmp(image_004806, models, CFG, boxes_xyxy=boxes).instances
    first = inst.iteration == 0
    np.testing.assert_allclose(inst.boxes_xyxy[first], boxes)
    assert np.all(inst.det_scores[first] == 1.0)
    assert not inst.det_masks[first].any()  # user boxes carry no mask
    assert not pose.masks[0].any()  # so the first pose pass is box-only
    assert models.detector.calls == 1  # only the second pass ran the detector
    # given boxes of shape (0, 4): nothing in pass 0, the detector still runs in pass 1
    fresh = build_fake_models()
    inst0 = run_bmp(image_004806, fresh, CFG, boxes_xyxy=np.zeros((0, 4))).instances
    assert fresh.detector.calls == 1 and set(inst0.iteration.tolist()) <= {1}
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        run_bmp(image_004806, fresh, CFG, boxes_xyxy=np.zeros((3, 5)))
    # scores of given boxes (a detections file) are kept as the detector scores
    scored = run_bmp(image_004806, build_fake_models(), CFG, boxes_xyxy=boxes,
                     box_scores=np.array([0.7, 0.4])).instances
    np.testing.assert_allclose(scored.det_scores[scored.iteration == 0], [0.7, 0.4], rtol=1e-6)
    with pytest.raises(ValueError, match="1 box scores for 2 boxes"):
        run_bmp(image_004806, build_fake_models(), CFG, boxes_xyxy=boxes, box_scores=np.array([0.7]))


def test_batch_equals_one_image_at_a_time() -> None:
    # Three sizes, as in a real batch (synthetic: runs without ../shared/testdata).
    images = [synthetic_people_bgr(s.height, s.width, s.num_people, s.seed) for s in SYNTHETIC_IMAGES[:3]]
    batched_models = build_fake_models()
    batched = run_bmp_batch(images, batched_models, CFG)
    assert batched_models.detector.calls == 2 and batched_models.pose.calls == 2  # one call per pass
    for image, got in zip(images, batched, strict=True):
        want = run_bmp(image, build_fake_models(), CFG)
        for name in want.instances.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(got.instances, name), getattr(want.instances, name), name)


def test_a_batch_prepares_sam_in_one_call_and_equals_one_image_at_a_time() -> None:
    """A segmenter with ``prepare_batch`` (SAM 2.1's adapter: one encoder forward for the batch) gets
    one call per pass for the images that prompt SAM, never one per image, with the same results."""
    images = [synthetic_people_bgr(s.height, s.width, s.num_people, s.seed) for s in SYNTHETIC_IMAGES[:3]]
    models = build_fake_models()
    batch_sizes: list[int] = []

    def prepare_batch(images_bgr: Sequence[np.ndarray]) -> list[object]:
        batch_sizes.append(len(images_bgr))
        return [models.segmenter.prepare(image) for image in images_bgr]

    models.segmenter.prepare_batch = prepare_batch  # type: ignore[attr-defined]
    batched = run_bmp_batch(images, models, CFG)
    assert batch_sizes and batch_sizes[0] == len(images)  # pass 0: every image prompts SAM, one call
    assert models.segmenter.prepare_calls == len(images)  # each image encoded once, in the batch call
    for image, got in zip(images, batched, strict=True):
        want = run_bmp(image, build_fake_models(), CFG)
        for name in want.instances.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(got.instances, name), getattr(want.instances, name), name)


def test_more_iterations_never_lose_instances_from_the_image(image_004806: np.ndarray) -> None:
    one = run_bmp(image_004806, build_fake_models(), config_from_dict({}, ["loop.iterations=1"]).loop)
    two = run_bmp(image_004806, build_fake_models(), CFG)
    assert len(two.instances) >= len(one.instances)
    assert set(one.instances.iteration.tolist()) == {0}


def test_fakes_satisfy_the_ports() -> None:
    models = build_fake_models()
    assert isinstance(models.detector, Detector) and isinstance(FakeDetector(), Detector)
    assert isinstance(models.pose, PoseEstimator) and isinstance(models.segmenter, Segmenter)


def test_bad_image_input_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8 BGR"):
        run_bmp(np.zeros((10, 10), np.uint8), build_fake_models(), CFG)
    with pytest.raises(ValueError, match="uint8 BGR"):
        run_bmp(np.zeros((10, 10, 3), np.float32), build_fake_models(), CFG)


def test_stage_timings_name_every_stage_and_count_each_second_once() -> None:
    """timings_s has every LOOP_STAGES key; a stage timed inside another (segment inside masks) is not
    counted twice, so an image's stages add up to no more than its share of the batch's wall time."""
    import time

    from bmp_core.records import LOOP_STAGES

    class SlowSegmenter(FakeSegmenter):  # SAM's calls take long enough that counting them twice shows
        def segment(self, prepared, points_xy):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.02:
                pass
            return super().segment(prepared, points_xy)

    fakes = build_fake_models()
    images = [synthetic_people_bgr(240, 320, num_people=3, seed=k) for k in range(3)]
    results = run_bmp_batch(images, BmpModels(fakes.detector, fakes.pose, SlowSegmenter()), LoopConfig())
    for r in results:
        assert list(r.timings_s) == list(LOOP_STAGES)
        stages = {k: v for k, v in r.timings_s.items() if k != "total"}
        assert min(stages.values()) >= -1e-9 and r.timings_s["segment"] > 0 and r.timings_s["masks"] > 0
    batch_s = sum(r.timings_s["total"] for r in results)
    assert sum(v for r in results for k, v in r.timings_s.items() if k != "total") <= batch_s + 1e-6
