"""Device and precision selection shared by the adapters."""

from __future__ import annotations

import contextlib
from typing import Any

_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def resolve_device(device: str) -> Any:
    """``"auto"`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as torch spells it.

    Raises:
        ValueError: a CUDA device was asked for on a machine without CUDA.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"models.device={device!r} but CUDA is not available here (use 'auto' or 'cpu')")
    return resolved


def autocast(device: Any, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed-precision context: ``torch.autocast`` on CUDA for bf16/fp16, a no-op otherwise.

    Why CUDA only: CPU autocast changes numerics without a speed-up on the CPUs this runs on, and fp32
    on CPU keeps results identical to the reference path.
    """
    import torch

    if precision == "fp32" or getattr(device, "type", str(device)) != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, _DTYPES[precision]))


def apply_speed_options(device: Any, tf32: bool, compile_modules: bool, segmenter: Any, pose: Any) -> list[str]:
    """``models.tf32`` and ``models.compile``, on CUDA only (no-ops on CPU). Returns what was applied.

    tf32: TF32 for matmuls and cuDNN convolutions, or neither (process-wide). Set explicitly both ways:
    torch's own default runs cuDNN convolutions in TF32 even under "fp32" (only matmuls default to
    IEEE fp32), so ``tf32: false`` would otherwise still round every convolution's inputs to 10 bits.
    compile: ``torch.compile`` of the SAM 2 image encoder and the pose backbone, the two big forwards;
    the first batch of each new input shape pays the compilation.
    """
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return []
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    applied = []
    if tf32:
        applied.append("tf32")
    if compile_modules:
        sam = segmenter.predictor.model
        sam.image_encoder = torch.compile(sam.image_encoder)
        pose.model.backbone = torch.compile(pose.model.backbone)
        applied.append("compile")
    return applied
