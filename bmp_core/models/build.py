"""``build_bmp_models``: RTMDet-Ins + MaskPose (v1) or PMPose/MaskPose-1.1 (v2) + SAM 2.1 from a
``ModelsConfig``, weights resolved and loaded.

Each model is built on CPU, seeded with ``cfg.seed`` just before its own construction (so random
weights do not depend on which models are built before it), loaded strictly from its checkpoint when
one is named, then moved to the device (``auto`` = cuda when present, else cpu).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bmp_core.config import ModelsConfig
from bmp_core.models import _compat
from bmp_core.models.checkpoints import load_state_dict, resolve_checkpoint
from bmp_core.models.device import apply_speed_options, resolve_device
from bmp_core.ports import BmpModels

log = logging.getLogger(__name__)


def checkpoint_state_dict(
    uri: str | None, cfg: ModelsConfig, sha256: str | None = None
) -> dict[str, Any] | None:
    """Resolve ``uri`` into the cache and read its state dict; None for ``uri=None`` (random weights)."""
    if uri is None:
        return None
    path = resolve_checkpoint(uri, cfg.cache_dir, sha256=sha256, offline=True if cfg.offline else None)
    return load_state_dict(path, allow_pickle=cfg.allow_pickle_checkpoints)


def build_bmp_models(cfg: ModelsConfig) -> BmpModels:
    """Build the detector, pose estimator and segmenter that ``cfg`` names.

    Raises:
        CheckpointError: a checkpoint cannot be resolved or does not match its architecture.
        ValueError: ``device`` names CUDA on a machine without it.
    """
    import torch

    from bmp_core.models.detector_rtmdet import build_rtmdet
    from bmp_core.models.pose_maskpose import build_maskpose
    from bmp_core.models.pose_pmpose import V2_ARCHITECTURES, build_pose_v2
    from bmp_core.models.segmenter_sam2 import build_sam2_segmenter

    _compat.apply()
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    detector = build_rtmdet(
        cfg.detector,
        device,
        checkpoint_state_dict(cfg.detector.checkpoint, cfg, cfg.detector.sha256),
        cfg.precision,
    )
    torch.manual_seed(cfg.seed)
    build_pose = build_pose_v2 if cfg.pose.config in V2_ARCHITECTURES else build_maskpose  # v2: PMPose, MaskPose-1.1
    pose = build_pose(
        cfg.pose, device, checkpoint_state_dict(cfg.pose.checkpoint, cfg, cfg.pose.sha256), cfg.precision
    )
    torch.manual_seed(cfg.seed)
    segmenter = build_sam2_segmenter(
        cfg.segmenter,
        device,
        checkpoint_state_dict(cfg.segmenter.checkpoint, cfg, cfg.segmenter.sha256),
        cfg.precision,
    )
    applied = apply_speed_options(device, cfg.tf32, cfg.compile, segmenter, pose)
    log.info("built BMP models on %s in %.1f s%s", device, time.perf_counter() - t0,
             f" ({', '.join(applied)})" if applied else "")
    return BmpModels(detector=detector, pose=pose, segmenter=segmenter)
