"""Fixtures for the real-model tests: tiny random-weight models built once per session.

Every test module here starts with ``pytest.importorskip`` for the stack, so in an environment without
torch/mmdet/mmpose/sam2 the whole folder is skipped; this conftest imports none of them at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import read_bgr, require_shared

REPO = Path(__file__).resolve().parents[2]
OCHUMAN = ("004806", "000817", "003799", "003896")


@pytest.fixture(scope="session")
def tiny_cfg() -> Any:
    """The whole ``BmpConfig`` of configs/tiny_random.yaml (CPU, random weights)."""
    from bmp_core.config import load_config

    return load_config(REPO / "configs" / "tiny_random.yaml")


@pytest.fixture(scope="session")
def tiny_models(tiny_cfg: Any) -> Any:
    """``BmpModels`` (RTMDet-Ins tiny, ViTPose-s with 21 channels, SAM 2.1 hiera-t), built once."""
    from bmp_core.models import build_models

    return build_models(tiny_cfg.models)


@pytest.fixture(scope="session")
def ochuman_images(testdata: Path) -> dict[str, np.ndarray]:
    """The four OCHuman test images, (H, W, 3) uint8 BGR, keyed by id."""
    return {name: read_bgr(require_shared(testdata, "ochuman") / f"{name}.jpg") for name in OCHUMAN}


@pytest.fixture(scope="session")
def sam_prepared_004806(tiny_models: Any, ochuman_images: dict[str, np.ndarray]) -> Any:
    """SAM's embedding of 004806 (the most expensive step on CPU), computed once."""
    return tiny_models.segmenter.prepare(ochuman_images["004806"])
