"""Model builders: the only part of bmp_core that imports torch / mmdet / mmpose / sam2.

``build_models(cfg)`` picks the implementation by ``cfg.kind`` and imports heavy packages only
inside the branch that needs them, so ``import bmp_core.models`` itself stays light.
"""

from __future__ import annotations

from bmp_core.config import ModelsConfig
from bmp_core.ports import BmpModels


def build_models(cfg: ModelsConfig) -> BmpModels:
    """Build the detector, pose estimator and segmenter that ``cfg`` names (weights loaded)."""
    if cfg.kind == "fake":
        from bmp_core.testing.fakes import build_fake_models

        return build_fake_models(cfg.fake)
    if cfg.kind == "bmp":
        from bmp_core.models.build import build_bmp_models  # torch, mmdet, mmpose, sam2

        return build_bmp_models(cfg)
    if cfg.kind == "lite":
        from bmp_core.models.lite import build_lite_models  # mediapipe (the lite extra)

        return build_lite_models(cfg)
    raise ValueError(f"unknown models.kind {cfg.kind!r}")
