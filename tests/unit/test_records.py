from __future__ import annotations

import numpy as np
import pytest

from bmp_core.records import Detections, Instances, SegmentOutput


def test_detections_reject_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="scores has 1 rows, expected 2"):
        Detections(np.zeros((2, 4), np.float32), np.zeros(1, np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        Detections(np.zeros((2, 5), np.float32), np.zeros(2, np.float32), np.zeros(2, np.int64))


def test_instances_take_and_concat_keep_rows_aligned() -> None:
    a = Instances.empty(4, 5, 6)
    assert len(a) == 0 and a.masks.shape == (0, 4, 5) and a.prompts.shape == (0, 6, 3)
    rows = Instances(
        boxes_xyxy=np.arange(8, dtype=np.float32).reshape(2, 4),
        det_scores=np.array([0.5, 0.9], np.float32),
        keypoints=np.zeros((2, 17, 3), np.float32),
        pose_scores=np.zeros(2, np.float32),
        sam_scores=np.zeros(2, np.float32),
        masks=np.zeros((2, 4, 5), bool),
        det_masks=np.zeros((2, 4, 5), bool),
        det_mask_iou=np.zeros(2, np.float32),
        iteration=np.array([0, 1], np.int32),
        mask_boxes_xyxy=np.zeros((2, 4), np.float32),
        prompts=np.zeros((2, 6, 3), np.float32),
        prompted=np.array([True, False]),
    )
    both = Instances.concat(a, rows)
    assert len(both) == 2
    flipped = both.take(np.array([1, 0]))
    assert flipped.det_scores.tolist() == [pytest.approx(0.9), 0.5]
    assert flipped.iteration.tolist() == [1, 0] and flipped.prompted.tolist() == [False, True]
    with pytest.raises(ValueError, match="keypoints"):
        Instances(**{**{k: getattr(rows, k) for k in rows.__dataclass_fields__},
                     "keypoints": np.zeros((2, 21, 3), np.float32)})


def test_mask_windows_are_checked_and_taken_with_their_rows() -> None:
    boxes, scores, labels = np.zeros((2, 4), np.float32), np.zeros(2, np.float32), np.zeros(2, np.int64)
    masks = np.zeros((2, 4, 5), bool)
    windows = np.array([[0, 0, 5, 4], [1, 2, 3, 3]], np.int64)
    dets = Detections(boxes, scores, labels, masks, windows)
    np.testing.assert_array_equal(dets.take(np.array([1])).mask_windows_xyxy, windows[1:])
    assert Detections.empty(4, 5).mask_windows_xyxy.shape == (0, 4)
    for bad, match in [(windows[:1], "int64"), (windows.astype(np.int32), "int64"),
                       (windows + [0, 0, 1, 0], "inside"), (windows - [1, 0, 0, 0], "inside"),
                       (windows + [0, 0, 0, 1], "inside")]:
        with pytest.raises(ValueError, match=match):
            Detections(boxes, scores, labels, masks, bad)
    with pytest.raises(ValueError, match="without masks"):
        Detections(boxes, scores, labels, None, windows)
    with pytest.raises(ValueError, match="inside"):
        SegmentOutput(masks, np.zeros(2, np.float32), windows + [0, 0, 0, 1])
    assert SegmentOutput(masks, np.zeros(2, np.float32), windows).mask_windows_xyxy is windows


def test_pose_output_shapes_and_instances_per_keypoint_defaults() -> None:
    from bmp_core.records import PoseOutput

    kpts = np.zeros((2, 17, 3), np.float32)
    assert PoseOutput(kpts).visibility is None and PoseOutput(kpts).presence is None
    PoseOutput(kpts, np.ones((2, 17), np.float32), np.ones((2, 17), np.float32))
    with pytest.raises(ValueError, match="keypoints_xys"):
        PoseOutput(np.zeros((2, 21, 3), np.float32))
    with pytest.raises(ValueError, match="visibility"):
        PoseOutput(kpts, None, np.ones((3, 17), np.float32))
    empty = Instances.empty(4, 5, 3)
    assert empty.keypoint_visibility.shape == (0, 17)
    one = Instances.concat(empty, Instances.empty(4, 5, 3))
    assert one.keypoint_presence.shape == (0, 17)
    # built without them (a model that predicts neither): NaN rows, and take/concat keep them
    fields = {name: getattr(empty, name) for name in empty.__dataclass_fields__
              if name not in ("keypoint_presence", "keypoint_visibility")}
    fields = {k: np.concatenate([v, np.zeros((1, *v.shape[1:]), v.dtype)]) for k, v in fields.items()}
    row = Instances(**fields)
    assert np.isnan(row.keypoint_visibility).all() and row.keypoint_visibility.shape == (1, 17)
    assert np.isnan(Instances.concat(row, row).take(np.array([1])).keypoint_presence).all()
    with pytest.raises(ValueError, match="keypoint_visibility"):
        Instances(**fields, keypoint_visibility=np.zeros((2, 17), np.float32))


def test_pose_output_checks_its_shapes() -> None:
    from bmp_core.records import PoseOutput

    kps = np.zeros((2, 17, 3), np.float32)
    assert PoseOutput(kps).presence is None
    PoseOutput(kps, np.zeros((2, 17), np.float32), np.ones((2, 17), np.float32))
    with pytest.raises(ValueError, match=r"keypoints_xys must be \(N, 17, 3\)"):
        PoseOutput(np.zeros((2, 23, 3), np.float32))
    with pytest.raises(ValueError, match=r"visibility must be \(2, 17\)"):
        PoseOutput(kps, None, np.zeros((2, 23), np.float32))
    # take: the chosen people of every array, an absent one stays absent
    both = PoseOutput(np.arange(102, dtype=np.float32).reshape(2, 17, 3), np.zeros((2, 17), np.float32),
                      np.arange(34, dtype=np.float32).reshape(2, 17))
    second = both.take(np.array([1]))
    assert np.array_equal(second.keypoints_xys, both.keypoints_xys[1:])
    assert np.array_equal(second.visibility, both.visibility[1:]) and second.presence.shape == (1, 17)
    assert PoseOutput(kps).take(np.array([False, True])).visibility is None


def test_flip_indices_mirror_the_keypoint_names_and_keep_extra_channels() -> None:
    """coco_meta.flip_indices(K): channel k's mirror by name (left <-> right), extras past 17 unmoved."""
    from bmp_core.coco_meta import KEYPOINT_NAMES, flip_indices

    def mirror(name: str) -> str:
        return name.replace("left", "@").replace("right", "left").replace("@", "right")

    for k in (17, 21, 23):
        idx = flip_indices(k)
        assert [KEYPOINT_NAMES[i] for i in idx[:17]] == [mirror(n) for n in KEYPOINT_NAMES]
        assert idx[17:] == list(range(17, k)) and sorted(idx) == list(range(k))
    with pytest.raises(ValueError, match=">= 17"):
        flip_indices(16)
