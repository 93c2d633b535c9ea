from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from bmp_core.ops.boxes import box_iou, box_nms, xywh_to_xyxy, xyxy_to_xywh


def test_iou_hand_computed() -> None:
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    # overlap 5x5 = 25, union 100 + 100 - 25 = 175
    np.testing.assert_allclose(box_iou(a, b), [[25 / 175, 0.0, 1.0]])
    # "+1 pixel" convention (mmpose nms): 6x6 = 36 over 121 + 121 - 36
    np.testing.assert_allclose(box_iou(a, b[:1], pixel_offset=1.0), [[36 / 206]])


def test_iou_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (30, 2))
    wh = rng.uniform(1, 60, (30, 2))
    boxes_xywh = np.concatenate([xy, wh], 1)
    ours = box_iou(xywh_to_xyxy(boxes_xywh), xywh_to_xyxy(boxes_xywh[:12]))
    theirs = mask_utils.iou(boxes_xywh.tolist(), boxes_xywh[:12].tolist(), [0] * 12)
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(xyxy_to_xywh(xywh_to_xyxy(boxes_xywh)), boxes_xywh, atol=1e-9)


def test_nms_keeps_highest_and_suppresses_only_above_threshold() -> None:
    boxes = np.array(
        [[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10], [5, 0, 15, 10]], float
    )  # IoU(0,1)=0.818, IoU(0,3)=0.333, IoU(1,3)=0.538
    scores = np.array([0.5, 0.9, 0.8, 0.4])
    assert box_nms(boxes, scores, iou_thr=0.3).tolist() == [1, 2]
    # with a 0.6 threshold box 3 survives box 1 (0.538) and box 0 (its suppressor 1 is kept)
    assert box_nms(boxes, scores, iou_thr=0.6).tolist() == [1, 2, 3]
    # IoU exactly at the threshold is kept (suppress only when IoU > thr)
    pair = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], float)
    assert box_nms(pair, np.array([0.9, 0.8]), iou_thr=1 / 3).tolist() == [0, 1]
    assert box_nms(np.zeros((0, 4)), np.zeros(0), 0.3).tolist() == []


@pytest.mark.parametrize("seed", range(5))
def test_nms_is_idempotent_and_kept_boxes_do_not_overlap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (40, 2))], 1)
    scores = rng.uniform(0, 1, 40)
    keep = box_nms(boxes, scores, 0.3)
    iou = box_iou(boxes[keep], boxes[keep])
    np.fill_diagonal(iou, 0)
    assert iou.max() <= 0.3
    assert np.all(np.diff(scores[keep]) <= 0)
    assert box_nms(boxes[keep], scores[keep], 0.3).tolist() == list(range(len(keep)))
