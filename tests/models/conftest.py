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


@pytest.fixture(scope="session")
def published_layout_models(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``configs/bmp_d3.yaml``'s models (real sizes, CPU here) built by ``build_bmp_models`` from synthetic
    checkpoints with the published layouts and file formats, with the default loading settings.

    Returns an object with ``models`` (BmpModels), ``cfg`` (the ModelsConfig used), ``files`` (name ->
    path), ``state_dicts`` (name -> the synthetic state dict written) and ``load_calls`` (the
    ``weights_only`` argument of every ``torch.load`` made while building). Built once per session
    (~10 s, ~2 GB).
    """
    import dataclasses
    from types import SimpleNamespace
    from unittest import mock

    import torch

    from bmp_core.config import load_config
    from bmp_core.models.build import build_bmp_models
    from tests.models import published_format as pf

    folder = tmp_path_factory.mktemp("published_layouts")
    state_dicts = {
        name: pf.synthetic_state_dict(pf.layout(name)) for name in ("rtmdet", "maskpose", "sam2")
    }
    files = {
        "rtmdet": pf.save_mmengine(
            folder / "rtmdet-ins-l-mask.pth", pf.mmengine_checkpoint(state_dicts["rtmdet"])
        ),
        "maskpose": pf.save_mmengine(
            folder / "MaskPose-b-1.0.0.pth", pf.mmengine_checkpoint(state_dicts["maskpose"], num_keypoints=21)
        ),
        "sam2": pf.save_sam2(folder / "sam2.1_hiera_base_plus.pt", state_dicts["sam2"]),
    }
    m = load_config(REPO / "configs" / "bmp_d3.yaml").models
    cfg = dataclasses.replace(
        m,
        cache_dir=str(folder / "cache"),
        detector=dataclasses.replace(m.detector, checkpoint=str(files["rtmdet"])),
        pose=dataclasses.replace(m.pose, checkpoint=str(files["maskpose"])),
        segmenter=dataclasses.replace(m.segmenter, checkpoint=str(files["sam2"])),
    )
    load_calls: list[Any] = []
    real_load = torch.load

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        load_calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    with mock.patch.object(torch, "load", recording_load):
        models = build_bmp_models(cfg)
    return SimpleNamespace(
        models=models, cfg=cfg, files=files, state_dicts=state_dicts, load_calls=load_calls
    )
