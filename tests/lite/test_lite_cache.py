"""Prompt -> posed person matching of the BlazePose segmenter's cache (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from bmp_core.models.lite.cache import CachedPerson, PersonCache, image_key

pytestmark = pytest.mark.lite


def _person(x0: float, y0: float) -> CachedPerson:
    kpts = np.zeros((17, 3), np.float32)
    kpts[:, 0] = x0 + np.arange(17) * 2.0
    kpts[:, 1] = y0 + np.arange(17) * 5.0
    kpts[:, 2] = 0.9
    box = np.array([x0, y0, x0 + 40, y0 + 90], np.float32)
    return CachedPerson(kpts, box, box.astype(np.int64), None)


def test_image_key_is_content_not_identity() -> None:
    image = np.zeros((4, 5, 3), np.uint8)
    assert image_key(image) == image_key(image.copy())
    other = image.copy()
    other[0, 0, 0] = 1
    assert image_key(other) != image_key(image)
    assert image_key(np.zeros((5, 4, 3), np.uint8)) != image_key(image)  # same bytes, other shape


def test_prompt_matches_the_person_it_came_from() -> None:
    cache = PersonCache(max_images=2)
    a, b = _person(0, 0), _person(100, 10)
    cache.add("img", [a, b])
    assert cache.match("img", b.keypoints[[5, 6, 11]][:, :2], 0.05) is b
    assert cache.match("img", a.keypoints[[0]][:, :2] + 1.0, 0.05) is a  # near, not exact
    assert cache.match("img", np.array([[500.0, 500.0]]), 0.05) is None  # nobody there
    assert cache.match("other", a.keypoints[:2, :2], 0.05) is None  # other image


def test_later_pass_wins_ties_and_old_images_are_evicted() -> None:
    cache = PersonCache(max_images=2)
    first, again = _person(0, 0), _person(0, 0)
    cache.add("img", [first])
    cache.add("img", [again])
    assert cache.match("img", first.keypoints[:3, :2], 0.05) is again
    cache.add("b", [_person(0, 0)])
    cache.add("c", [_person(0, 0)])
    assert cache.people("img") == [] and len(cache.people("c")) == 1
    with pytest.raises(ValueError):
        PersonCache(max_images=0)
