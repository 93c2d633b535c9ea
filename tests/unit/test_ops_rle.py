from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from bmp_core.ops.rle import decode_rle, encode_rle, rle_area, rle_to_bbox_xywh


@pytest.mark.parametrize("shape", [(3, 17, 23), (1, 1, 1), (2, 64, 48)])
def test_round_trip_and_area(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    masks = rng.uniform(size=shape) > 0.5
    masks[0] = False  # an empty mask survives too
    rles = encode_rle(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == list(shape[1:]) for r in rles)
    np.testing.assert_array_equal(decode_rle(rles), masks)
    np.testing.assert_array_equal(rle_area(rles), masks.reshape(len(masks), -1).sum(1))


def test_rle_read_back_by_pycocotools_from_json() -> None:
    """What we encode is what a COCO consumer decodes from a JSON file."""
    rng = np.random.default_rng(5)
    masks = np.zeros((2, 40, 50), bool)
    masks[0, 5:20, 10:30] = True
    masks[1] = rng.uniform(size=(40, 50)) > 0.7
    rles = json.loads(json.dumps(encode_rle(masks)))
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 50, "height": 40}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": r, "iscrowd": 0,
                         "area": 0, "bbox": [0, 0, 1, 1]} for i, r in enumerate(rles)],
    }
    coco.createIndex()
    for i in range(2):
        np.testing.assert_array_equal(coco.annToMask(coco.anns[i + 1]).astype(bool), masks[i])
    np.testing.assert_allclose(rle_to_bbox_xywh(rles)[0], [10, 5, 20, 15])


def test_empty_inputs() -> None:
    assert encode_rle(np.zeros((0, 4, 5), bool)) == []
    assert decode_rle([], 4, 5).shape == (0, 4, 5)
    with pytest.raises(ValueError):
        decode_rle([])
    with pytest.raises(ValueError):
        encode_rle(np.zeros((4, 5), bool))


def _mask_cases() -> list[np.ndarray]:
    """Random masks, including the edge cases of a bounding-box encoder: empty, full, one pixel,
    runs wrapping from a column's bottom into the next column's top, masks touching every border."""
    rng = np.random.default_rng(17)
    cases = [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.ones((1, 1), bool), np.zeros((1, 1), bool)]
    for _ in range(1500):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        kind = int(rng.integers(0, 4))
        if kind == 0:  # noise of any density
            m = rng.random((h, w)) < rng.random()
        elif kind == 1:  # a lower band cut at the left: runs wrap across columns
            m = np.zeros((h, w), bool)
            m[rng.integers(0, h):, :] = True
            m[:, : rng.integers(0, w)] = False
        elif kind == 2:  # one pixel
            m = np.zeros((h, w), bool)
            m[rng.integers(0, h), rng.integers(0, w)] = True
        else:  # touches top and bottom
            m = rng.random((h, w)) < 0.5
            m[0], m[-1] = True, True
        cases.append(m)
    return cases


def test_encode_equals_pycocotools_encode_byte_for_byte() -> None:
    from pycocotools import mask as mask_utils

    for m in _mask_cases():
        expected = mask_utils.encode(np.asfortranarray(m[:, :, None].astype(np.uint8)))[0]
        (mine,) = encode_rle(m[None])
        assert mine["counts"] == expected["counts"].decode("ascii"), m.astype(int)
        assert mine["size"] == [int(v) for v in expected["size"]]


def test_encode_inside_given_windows_equals_pycocotools() -> None:
    """Run lengths built from each window (tight, loose, the whole image) are pycocotools' own, on masks
    whose runs wrap from one column into the next, touch every border, fill the image or are empty."""
    from pycocotools import mask as mask_utils

    from bmp_core.ops.masks import mask_windows

    rng = np.random.default_rng(21)
    cases = _mask_cases()
    h, w = 120, 90
    full, band, blob = np.ones((h, w), bool), np.zeros((h, w), bool), np.zeros((h, w), bool)
    band[:, 10:30] = True  # full-height columns: one run through ten columns
    band[:5, 30] = True
    blob[40:100, 20:70] = rng.random((60, 50)) < 0.8
    cases += [full, band, blob, np.zeros((h, w), bool)]
    for m in cases:
        hh, ww = m.shape
        expected = mask_utils.encode(np.asfortranarray(m[:, :, None].astype(np.uint8)))[0]["counts"].decode()
        tight = mask_windows(m[None])
        grown = np.clip(tight + rng.integers(0, 3, (1, 4)) * [-1, -1, 1, 1], 0, [ww, hh, ww, hh])
        if tight[0, 2] <= tight[0, 0]:
            grown = np.array([[0, 0, ww, hh]])
        for windows in (tight, grown, np.array([[0, 0, ww, hh]])):
            (mine,) = encode_rle(m[None], windows)
            assert mine["counts"] == expected, (m.astype(int), windows)


def test_the_instances_table_searches_masks_whose_box_is_unknown() -> None:
    """The table trusts a mask's tight box and reads only inside it; a NaN box (empty by the records'
    contract, or unknown in Instances made elsewhere) is searched whole, never taken as empty."""
    from pycocotools import mask as mask_utils

    from bmp_core.output.tables import _rle_windows

    masks = np.zeros((2, 30, 40), bool)
    masks[0, 5:9, 6:20] = True
    masks[1, 20:25, 30:38] = True
    boxes = np.array([[6, 5, 20, 9], [np.nan] * 4], np.float32)
    windows = _rle_windows(masks, boxes)
    assert windows.tolist() == [[6, 5, 20, 9], [30, 20, 38, 25]]
    got = encode_rle(masks, windows)
    want = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert [g["counts"] for g in got] == [w["counts"].decode() for w in want]
