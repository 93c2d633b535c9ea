"""Shared fixtures: where the real test images are (../shared/testdata, else the demo set in examples/)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

_REPO = Path(__file__).resolve().parents[1]


def find_testdata() -> Path | None:
    """The shared real test images: $BMP_TESTDATA, else ../shared/testdata beside the checkout
    (the layout of our dev and CI machines; a clone made elsewhere sets BMP_TESTDATA).

    ``BMP_NO_SHARED_TESTDATA=1`` makes them absent wherever they are, to check that the unit tier
    runs on a bare clone (its tests that need real photos skip, the rest use synthetic images)."""
    if os.environ.get("BMP_NO_SHARED_TESTDATA") == "1":
        return None
    candidates = [os.environ.get("BMP_TESTDATA"), _REPO.parent / "shared" / "testdata"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "ochuman" / "004806.jpg").is_file():
            return Path(candidate)
    return None


EXAMPLES = _REPO / "examples"
# The demo set's files under the names the shared set uses (tests/*/ address both as testdata/coco/...).
_EXAMPLES_AS_COCO = {"ground_truth.json": "test_coco.json", "detections.json": "test_coco_det_AP_H_56.json"}


def examples_as_testdata(root: Path) -> Path:
    """Copy examples/ into ``root`` in the shared set's layout (``coco/`` with its file names) and return
    ``root``. Copies, not links: the job's listing and ``Path.rglob`` must see plain files."""
    coco = root / "coco"
    coco.mkdir(parents=True, exist_ok=True)
    for image in sorted((EXAMPLES / "images").glob("*.jpg")):
        shutil.copyfile(image, coco / image.name)
    for ours, shared_name in _EXAMPLES_AS_COCO.items():
        shutil.copyfile(EXAMPLES / ours, coco / shared_name)
    return root


@pytest.fixture(scope="session")
def testdata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared test images, or (a plain clone, or ``BMP_NO_SHARED_TESTDATA=1``) the demo set in examples/,
    which has only ``coco/``: tests that need the other folders ask for them through ``require_shared``."""
    path = find_testdata()
    if path is not None:
        return path
    if not (EXAMPLES / "images").is_dir():
        pytest.fail("test images not found: set BMP_TESTDATA to the shared/testdata folder")
    return examples_as_testdata(tmp_path_factory.mktemp("testdata"))


def require_shared(testdata: Path, folder: str) -> Path:
    """``testdata / folder``, or skip the test when it is absent: the repository's demo set has only the
    COCO images (the OCHuman images are not shipped: no licence for them is stated)."""
    path = testdata / folder
    if not path.is_dir():
        pytest.skip(f"needs the shared test images' {folder}/ (set BMP_TESTDATA; examples/ has only coco/)")
    return path


def read_bgr(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR, the layout every port takes."""
    from PIL import Image

    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])


@pytest.fixture(scope="session")
def image_004806(testdata: Path) -> np.ndarray:
    """OCHuman 004806 (the BMP paper's demo image); skips without the shared set."""
    return read_bgr(require_shared(testdata, "ochuman") / "004806.jpg")


@pytest.fixture()
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path, Any]]:
    """(base URL, served folder, handler class with .requests / .seen / .delay_s): a checkpoint host on
    127.0.0.1 serving an empty folder the test fills (tests/http_folder.py)."""
    from tests.http_folder import serve_folder

    root = tmp_path / "served"
    root.mkdir()
    with serve_folder(root) as (base, handler):
        yield base, root, handler
