from __future__ import annotations

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bmp_core.coco_meta import SIGMAS as COCO_SIGMAS
from bmp_core.ops.oks import oks_matrix


def _random_instances(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    centers = rng.uniform(50, 250, (n, 2))
    boxes = np.concatenate([centers - rng.uniform(20, 60, (n, 2)), centers + rng.uniform(20, 60, (n, 2))], 1)
    kpts = np.zeros((n, 17, 3))
    kpts[:, :, :2] = centers[:, None] + rng.normal(0, 15, (n, 17, 2))
    kpts[:, :, 2] = rng.uniform(0, 1, (n, 17))
    # near-duplicates so some OKS values are high
    kpts[1, :, :2] = kpts[0, :, :2] + rng.normal(0, 2, (17, 2))
    boxes[1] = boxes[0] + 1
    kpts[2, :, 2] = 0.1  # no visible keypoint: COCO's box fallback
    return kpts, boxes


def test_oks_hand_computed_single_keypoint_offset() -> None:
    kpts = np.zeros((2, 17, 3))
    kpts[:, :, 2] = 0.9
    kpts[1, 0, 0] = 3.0  # only the nose moves, by 3 px
    boxes = np.array([[0, 0, 10, 20], [0, 0, 10, 20]], float)  # area 200 (xyxy, not x2*y2)
    var = (2 * COCO_SIGMAS[0]) ** 2
    expected = (16 + np.exp(-9 / var / (200 + np.spacing(1)) / 2)) / 17
    oks = oks_matrix(kpts, boxes, visibility_thr=0.3)
    np.testing.assert_allclose(oks[0, 1], expected)
    np.testing.assert_allclose(oks[1, 1], 1.0)


def test_oks_matches_pycocotools_compute_oks() -> None:
    rng = np.random.default_rng(1)
    kpts, boxes = _random_instances(rng, 6)
    thr = 0.3
    gt = COCO()
    anns, results = [], []
    for i, (k, b) in enumerate(zip(kpts, boxes, strict=True)):
        visible = k[:, 2] > thr
        flat = np.stack([k[:, 0], k[:, 1], np.where(visible, 2, 0)], 1).reshape(-1).tolist()
        w, h = b[2] - b[0], b[3] - b[1]
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "keypoints": flat,
                     "num_keypoints": int(visible.sum()), "bbox": [b[0], b[1], w, h], "area": w * h})
        # descending scores keep pycocotools' score sort equal to our order
        results.append({"image_id": 1, "category_id": 1, "score": 1.0 - i * 0.1,
                        "keypoints": np.stack([k[:, 0], k[:, 1], np.ones(17)], 1).reshape(-1).tolist()})
    gt.dataset = {"images": [{"id": 1, "width": 400, "height": 400}], "annotations": anns,
                  "categories": [{"id": 1, "name": "person"}]}
    gt.createIndex()
    dt = gt.loadRes(results)
    ev = COCOeval(gt, dt, "keypoints")
    ev.params.imgIds = [1]
    ev._prepare()
    theirs = ev.computeOks(1, 1)  # (num_dt, num_gt)
    ours = oks_matrix(kpts, boxes, visibility_thr=thr)  # [gt, dt]
    np.testing.assert_allclose(ours, np.asarray(theirs).T, rtol=1e-6, atol=1e-9)
    assert ours[0, 1] > 0.8  # the near-duplicate pair really is similar
