"""Every workaround the model stack needs, in one place, each with the reason (docs/real-models.md#install).

Call ``apply()`` before importing mmdet / mmpose / mmpretrain models (the adapters do). It is idempotent.

1. mmcv-lite has no compiled ops (``mmcv._ext``), but ``mmdet.models`` / ``mmpose.models`` import
   ``mmcv.ops`` at module import time. RTMDet-Ins inference uses exactly one compiled op, ``nms`` (via
   ``mmcv.ops.batched_nms``); ViTPose uses none. We register a stand-in ``mmcv._ext`` whose ``nms``
   (and ``roi_align_forward`` for completeness) run on torchvision and whose other ops raise a clear error.
   It needs a ``__spec__``: mmengine's ``mmcv_full_available()`` calls ``pkgutil.find_loader`` on it.
   With a full mmcv build installed the real module is used and nothing is patched.
2. Checkpoint loading (torch >= 2.6 defaults to ``weights_only=True``; mmengine 0.10.7 does not pass it, and
   its checkpoints carry numpy/HistoryBuffer meta that the safe unpickler refuses) is handled in
   ``checkpoints.load_state_dict`` instead of patching mmengine: we load the file ourselves and hand the
   model a plain state dict.
3. sam2's low-res hole/sprinkle post-processing imports the CUDA extension ``sam2._C``, which the install
   does not build (nor did the reference's); sam2 then warns and silently skips it, so results would
   depend on the install. ``segmenter_sam2`` always builds sam2's predictor with both areas 0 and runs its
   own CPU implementation (cv2 connected components) when they are configured, with or without ``_C``.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Any

_APPLIED = False


def _nms(bboxes: Any, scores: Any, iou_threshold: float = 0.5, offset: int = 0) -> Any:
    """``mmcv._ext.nms`` signature on torchvision: (N,4) xyxy boxes, (N,) scores -> kept indices (int64)."""
    import torch
    import torchvision

    if bboxes.numel() == 0:
        return bboxes.new_zeros((0,), dtype=torch.long)
    boxes = bboxes.float()
    if offset:  # mmcv's legacy "+1" pixel convention
        boxes = boxes.clone()
        boxes[:, 2:] += offset
    return torchvision.ops.nms(boxes, scores.float(), float(iou_threshold))


def _roi_align_forward(
    input: Any,
    rois: Any,
    output: Any,
    argmax_y: Any,
    argmax_x: Any,
    aligned_height: int = 7,
    aligned_width: int = 7,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    pool_mode: int = 1,
    aligned: bool = True,
) -> None:
    """``mmcv._ext.roi_align_forward`` (avg mode only) on torchvision; not used by our models."""
    import torchvision

    if pool_mode != 1:
        raise NotImplementedError("mmcv-lite shim: roi_align max mode is not available")
    output.copy_(
        torchvision.ops.roi_align(
            input, rois, (aligned_height, aligned_width), spatial_scale, sampling_ratio, aligned
        )
    )


_IMPLEMENTED = {"nms": _nms, "roi_align_forward": _roi_align_forward}


def _missing(name: str) -> Any:
    def raise_missing(*args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"mmcv._ext.{name} is not available: mmcv-lite has no compiled ops and the bmp-label shim "
            "implements only nms/roi_align_forward. Install a full mmcv build for this op "
            "(docs/real-models.md#install)."
        )

    return raise_missing


class _ExtShim(types.ModuleType):
    """Module whose every attribute exists (mmcv's ``ext_loader.load_ext`` only checks ``hasattr``)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _IMPLEMENTED.get(name) or _missing(name)


def install_mmcv_ext_shim() -> bool:
    """Register the ``mmcv._ext`` stand-in unless a real one imports. Returns True when the shim is in use."""
    existing = sys.modules.get("mmcv._ext")
    if existing is not None:
        return isinstance(existing, _ExtShim)
    try:
        import mmcv._ext

        return False
    except ImportError:
        pass
    shim = _ExtShim("mmcv._ext")
    shim.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
    sys.modules["mmcv._ext"] = shim
    import mmcv

    mmcv._ext = shim  # type: ignore[attr-defined]
    return True


def apply() -> None:
    """Apply every workaround above (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    install_mmcv_ext_shim()
    _APPLIED = True
