"""Each speed-up gives the same result as the plain reference-shaped path
(docs/decisions.md#speed-without-changing-results)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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


def _assert_same(a, b) -> None:
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
    for got, image in zip(run_bmp_batch(images, fast, LoopConfig()), images, strict=True):
        _assert_same(got, run_bmp(image, slow, LoopConfig()))
    assert fast.pose.calls == 2  # one pose call per pass for all crops of all images


def test_reference_shaped_path_equals_ours_with_given_boxes(testdata: Path) -> None:
    images = _images(testdata)
    boxes = [np.array([[10, 20, 200, 500], [150, 40, 400, 600]], np.float32)] * len(images)
    ours = run_bmp_batch(images, build_fake_models(), LoopConfig(), boxes)
    for image, b, got in zip(images, boxes, ours, strict=True):
        _assert_same(got, run_bmp(image, reference_shaped(build_fake_models()), LoopConfig(), boxes_xyxy=b))


# --- the windowed loop (one mask store per image) against the plain whole-image loop ---

from bmp_core.config import config_from_dict
from bmp_core.records import Detections
from bmp_core.testing.dense_ops import run_bmp_dense
from bmp_core.testing.fakes import (
    CrowdDetector,
    FakePoseEstimator,
    FakeSegmenter,
    ModelRecording,
    ScriptedDetector,
    _ellipse,
)


def _assert_identical(got, want) -> None:
    for name in want.__dataclass_fields__:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name


def _crowd(num_people: int, seed: int) -> BmpModels:
    return BmpModels(CrowdDetector(num_people, seed), FakePoseEstimator(), FakeSegmenter())


def test_large_images_with_many_people_equal_the_whole_image_loop() -> None:
    """1920x1080, 20 people (all survive box NMS, one hidden behind every fifth): byte-identical."""
    cfg = LoopConfig()
    for seed in (0,):  # a seed whose second pass finds someone
        image = np.random.default_rng(seed).integers(1, 256, (1080, 1920, 3), dtype=np.uint8)
        recording = ModelRecording(_crowd(20, seed))
        got = run_bmp(image, recording.models, cfg).instances
        assert len(got) >= 20 and set(got.iteration.tolist()) == {0, 1}
        _assert_identical(got, run_bmp_dense(image, recording.replay(), cfg))
        # the models' outputs were not written into: replaying them gives the same result again
        _assert_identical(run_bmp(image, recording.replay(), cfg).instances, got)


def test_loop_variants_equal_the_whole_image_loop(testdata: Path) -> None:
    """Test images, given boxes, 3 passes, dilation, no exclusivity: byte-identical to the plain loop."""
    variants = [[], ["loop.iterations=3"], ["loop.masks.mask_out_dilate_px=2"],
                ["loop.masks.exclusive=false"]]
    for image in _images(testdata):
        for overrides in variants:
            cfg = config_from_dict({}, overrides).loop
            recording = ModelRecording(build_fake_models())
            _assert_identical(run_bmp(image, recording.models, cfg).instances,
                              run_bmp_dense(image, recording.replay(), cfg))
        boxes = np.array([[10, 20, 200, 500], [150, 40, 400, 600], [0, 0, 0, 0]], np.float32)
        recording = ModelRecording(build_fake_models())
        scores = np.array([0.9, 0.8, 0.7])
        got = run_bmp(image, recording.models, LoopConfig(), boxes_xyxy=boxes, box_scores=scores)
        want = run_bmp_dense(image, recording.replay(), LoopConfig(), boxes, scores)
        _assert_identical(got.instances, want)


def test_store_growth_and_removed_old_instances_equal_the_whole_image_loop() -> None:
    """A second pass with more people than the store has room for, and old people pose-NMS removes."""
    h, w = 300, 1200
    image = np.random.default_rng(3).integers(1, 256, (h, w, 3), dtype=np.uint8)
    first = [[30, 40, 90, 200], [400, 40, 460, 200]]
    grid = [[20 * k, 210, 20 * k + 14, 290] for k in range(58)]  # 58 small people: more than 2 * 2 + 40 rows
    dup = [[31, 41, 91, 201]]  # the first person again, more confident: replaces the old one
    boxes = first, dup + grid

    def dets(b: list[list[int]], scores: list[float]) -> Detections:
        arr = np.asarray(b, np.float32)
        return Detections(arr, np.asarray(scores, np.float32), np.zeros(len(arr), np.int64),
                          np.stack([_ellipse(h, w, x) for x in arr]))

    outputs = [[dets(boxes[0], [0.9, 0.8])], [dets(boxes[1], [0.95] + [0.7] * len(grid))]]

    class Pose(FakePoseEstimator):  # the duplicate has more confident keypoints than the original
        def estimate(self, images_bgr, boxes_xyxy, masks):
            out = super().estimate(images_bgr, boxes_xyxy, masks)
            for k, b in zip(out, boxes_xyxy, strict=True):
                k.keypoints_xys[:, :, 2] = np.where((b[:, :1] == 31)[:, :, None][:, :, 0], 0.99,
                                                    k.keypoints_xys[:, :, 2])
            return out

    def models() -> BmpModels:
        return BmpModels(ScriptedDetector(outputs), Pose(), FakeSegmenter())

    got = run_bmp(image, models(), LoopConfig()).instances
    assert len(got) >= 50 and got.iteration[0] == 0 and 31 in got.boxes_xyxy[:, 0]
    assert 30 not in got.boxes_xyxy[:, 0]  # the old instance was removed by pose-NMS
    _assert_identical(got, run_bmp_dense(image, models(), LoopConfig()))


def test_mask_store_spare_rows_are_bounded_for_huge_images(monkeypatch: pytest.MonkeyPatch) -> None:
    from bmp_core import mask_store

    assert len(mask_store.MaskStore.for_rows((1080, 1920), 20).masks) == 20 + 60  # room for RTMDet's 40 more
    assert len(mask_store.MaskStore.for_rows((10_000, 10_000), 20).masks) == 20 + 5  # 100 MP: ~512 MB of spare
    # with the minimum spare (4 rows) the second pass grows the store, and the results stay the same
    monkeypatch.setattr(mask_store, "SPARE_BYTES", 0)
    test_store_growth_and_removed_old_instances_equal_the_whole_image_loop()


# --- mask stores lent again to later images (mask_store.MaskStorePool) ---


def test_lent_mask_stores_give_identical_results_and_leave_live_results_alone(
        testdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images of several sizes through one pool, results dropped as a worker drops them: every result is
    byte-identical to the plain loop's, stores were lent again (also to another image size), and a
    result still held is never written into."""
    from bmp_core.mask_store import DEFAULT_POOL_BYTES, MaskStore, MaskStorePool

    pool = MaskStorePool(DEFAULT_POOL_BYTES)
    fresh, reshaped = [], []
    for_rows, reshape = MaskStore.for_rows, MaskStore.reshaped
    monkeypatch.setattr(MaskStore, "for_rows", staticmethod(lambda *a: fresh.append(a) or for_rows(*a)))
    monkeypatch.setattr(MaskStore, "reshaped", lambda self, hw: reshaped.append(hw) or reshape(self, hw))
    crowd = [np.random.default_rng(k).integers(1, 256, (540, 960, 3), dtype=np.uint8) for k in range(2)]
    photos = _images(testdata)
    cases = [(crowd[0], _crowd(12, 0)), (photos[0], build_fake_models()), (crowd[1], _crowd(8, 1)),
             (photos[1], build_fake_models()), (crowd[0], _crowd(12, 0)), (photos[0], build_fake_models())]
    cfg = LoopConfig()
    kept = run_bmp(crowd[1], _crowd(10, 1), cfg, mask_pool=pool).instances  # held to the end: its store is never lent
    snapshot = {name: getattr(kept, name).copy() for name in ("masks", "det_masks")}
    for image, models in cases:
        recording = ModelRecording(models)
        got = run_bmp(image, recording.models, cfg, mask_pool=pool).instances
        _assert_identical(got, run_bmp_dense(image, recording.replay(), cfg))
        del got
    for name, before in snapshot.items():
        assert getattr(kept, name).tobytes() == before.tobytes(), name
    with pytest.raises(ValueError, match="read-only"):
        kept.masks[0, 0, 0] = True  # the loop's results cannot be written into (their store may be lent)
    assert len(fresh) < 1 + len(cases)  # stores were lent again ...
    assert any(hw != crowd[0].shape[:2] for hw in reshaped)  # ... also to images of another size


def test_a_store_is_in_use_while_any_view_of_it_is_alive() -> None:
    from bmp_core.mask_store import MaskStore, MaskStorePool, refcounts_track_views, shared_pool

    assert refcounts_track_views() and shared_pool().enabled  # CPython: the pool is on
    store = MaskStore.for_rows((6, 7), 2)
    assert not store.in_use()
    view = store.det_masks[:1]
    assert store.in_use()
    row = view[0, 1:]  # a view of a view keeps the buffer alive too
    del view
    assert store.in_use()
    del row
    assert not store.in_use()
    other = store.reshaped((3, 5))
    assert len(other.masks) == len(store.masks) * 42 // 15 and other.masks.base is store.masks.base
    del store
    assert not other.in_use()
    # a pool that cannot see views lends nothing; a full pool forgets its oldest stores
    disabled = MaskStorePool(1 << 30, enabled=False)
    disabled.give(other)
    assert disabled.take((3, 5), 1) is not other
    small = MaskStorePool(max_bytes=100)
    stores = [MaskStore.for_rows((5, 5), 1) for _ in range(3)]
    for s in stores:
        s.note_written(1)  # 2 x 25 bytes each
        small.give(s)
    assert small.stores() == stores[1:]
