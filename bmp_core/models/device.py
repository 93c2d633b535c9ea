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
