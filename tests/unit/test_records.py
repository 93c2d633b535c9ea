from __future__ import annotations

import numpy as np
import pytest

from bmp_core.records import Detections, Instances


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
