"""Shared fixtures: where the real test images are."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

_REPO = Path(__file__).resolve().parents[1]


def find_testdata() -> Path | None:
    """The shared real test images: $BMP_TESTDATA, else ../shared/testdata beside the checkout
    (the layout of our dev and CI machines), else /work/shared/testdata (a clone made elsewhere).

    ``BMP_NO_SHARED_TESTDATA=1`` makes them absent wherever they are, to check that the unit tier
    runs on a bare clone (its tests that need real photos skip, the rest use synthetic images)."""
    if os.environ.get("BMP_NO_SHARED_TESTDATA") == "1":
        return None
    candidates = [os.environ.get("BMP_TESTDATA"), _REPO.parent / "shared" / "testdata", "/work/shared/testdata"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "ochuman" / "004806.jpg").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def testdata() -> Path:
    path = find_testdata()
    if path is None:
        pytest.fail("test images not found: set BMP_TESTDATA to the shared/testdata folder")
    return path


def read_bgr(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR, the layout every port takes."""
    from PIL import Image

    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])


@pytest.fixture(scope="session")
def image_004806(testdata: Path) -> np.ndarray:
    return read_bgr(testdata / "ochuman" / "004806.jpg")
