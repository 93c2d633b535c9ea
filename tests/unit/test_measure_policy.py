"""scripts/measure_policy.py: its precision / recall / ignore counts on a scripted output whose truth is known.

Ground truth: two people. The output: the first of them posed right (pose score 0.9), the second
posed right but unsure (pose score 0.4), and a false positive elsewhere (pose score 0.2). The
numbers per setting follow from that by hand; the matching itself is pycocotools'.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from bmp_core.output.export.policy import ExportPolicy
from tests.export_fixtures import Image, Person, box_mask, write_output

REPO = Path(__file__).resolve().parents[2]
H, W = 200, 300
BOXES = [(20, 20, 90, 190), (110, 20, 180, 190), (200, 20, 270, 190)]


def _keypoints(box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = np.linspace(x0 + 5, x1 - 5, 17)
    kp[:, 1] = np.linspace(y0 + 5, y1 - 5, 17)
    kp[:, 2] = 0.9
    return kp


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("measure")
    people = [Person(box_mask(H, W, *b), pose_score=s, keypoints=_keypoints(b))
              for b, s in zip(BOXES, (0.9, 0.4, 0.2), strict=True)]
    out = write_output(str(root / "out"), [Image(str(root / "a.jpg"), W, H, people=people)])
    anns = []
    for k, box in enumerate(BOXES[:2]):
        rle = mask_utils.encode(np.asfortranarray(box_mask(H, W, *box).astype(np.uint8)))
        kp = _keypoints(box)
        kp[:, 2] = 2
        x0, y0, x1, y1 = box
        anns.append({"id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": float((x1 - x0) * (y1 - y0)),
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": {**rle, "counts": rle["counts"].decode()},
                     "keypoints": kp.reshape(-1).tolist(), "num_keypoints": 17})
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": W, "height": H}], "annotations": anns,
          "categories": [{"id": 1, "name": "person"}]}
    (root / "gt.json").write_text(json.dumps(gt))
    return out, str(root / "gt.json")


def _script():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import measure_policy
    finally:
        sys.path.pop(0)
    return measure_policy


def test_precision_recall_and_lost_people_per_setting(case: tuple[str, str]) -> None:
    mp = _script()
    c = mp.load_case("t", *case)
    everyone, _ = mp.coco_matches(c, np.arange(3), "keypoints")
    assert sorted(everyone) == [0, 1]  # the two real people match, the third does not
    open_ = mp.measure(c, ExportPolicy(), everyone)
    assert (open_["kept"], open_["P_kpt"], open_["R_kpt"], open_["lost"]) == (3, 2 / 3, 1.0, 0)
    strict = mp.measure(c, ExportPolicy(min_pose_score=0.3), everyone)
    assert (strict["kept"], strict["ignored"], strict["P_kpt"], strict["R_kpt"]) == (2, 1, 1.0, 1.0)
    too_strict = mp.measure(c, ExportPolicy(min_pose_score=0.5), everyone)
    assert (too_strict["P_mask"], too_strict["R_mask"], too_strict["lost"]) == (1.0, 0.5, 1)
    assert too_strict["bg"] == 0  # the unsure real person is an ignore region, not background


def test_the_script_prints_a_row_per_setting(case: tuple[str, str]) -> None:
    mp = _script()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert mp.main(["--case", "t", *case, "--keypoints", "--policy", '{"min_pose_score": 0.3}']) == 0
    text = buf.getvalue()
    assert sum(len(v) for v in mp.SWEEPS.values()) + 1 == text.count("\n| min_") + text.count("\n| chosen")
    assert "| chosen | all | 2 | 1 | 0 | 1.00 | 1.00 |" in text
