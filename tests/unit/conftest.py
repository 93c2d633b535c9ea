"""Unit tests: no Ray, no torch, no network (Ray Data's tests/unit discipline)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"


def _testdata_dir() -> Path:
    # The shared test images live beside the checkout (../shared/testdata); BMP_TESTDATA overrides.
    import os

    return Path(os.environ.get("BMP_TESTDATA", TESTDATA))


@pytest.fixture(autouse=True)
def _no_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests must not start Ray; integration tests do that."""
    if "ray" in sys.modules:

        def refuse(*args: object, **kwargs: object) -> None:
            raise RuntimeError("ray.init() called in a unit test; put it in tests/integration")

        monkeypatch.setattr(sys.modules["ray"], "init", refuse)


@pytest.fixture(scope="session")
def testdata() -> Path:
    path = _testdata_dir()
    if not path.is_dir():
        pytest.fail(f"test data not found at {path}; set BMP_TESTDATA to the shared/testdata folder")
    return path


def read_bgr(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR, the layout every port takes."""
    from PIL import Image

    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])


@pytest.fixture(scope="session")
def image_004806(testdata: Path) -> np.ndarray:
    return read_bgr(testdata / "ochuman" / "004806.jpg")
