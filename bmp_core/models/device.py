"""Device and precision selection shared by the adapters."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any

from bmp_core.errors import UserError

_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


class DeviceError(UserError, ValueError):
    """``models.device`` cannot be used in this process; the message gives torch's reason and what to set."""

    default_hint = "use models.device=auto (or cpu), or a torch build that matches the GPU driver (docs/real-models.md)"


def construction_device(device: Any) -> str:
    """Where a builder constructs its model: on the CPU (weights are loaded there, then it moves to
    ``device``), or on the meta device when ``device`` is meta (the layout check of
    ``bmp_core/models/weights.py``: parameters without storage, so a CPU ``.to`` would fail)."""
    return "meta" if str(device) == "meta" else "cpu"


def cuda_unavailable_reason() -> str | None:
    """Why torch cannot use CUDA in this process, in torch's own words; None when it can.

    ``torch.cuda.is_available()`` only says False; the reason (no driver, a driver too old for this
    torch's CUDA, no visible device, a CPU-only build) is what ``torch.cuda.init()`` raises.
    """
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a build without CUDA"
    try:
        torch.cuda.init()
    except Exception as err:  # noqa: BLE001 - any failure here is the reason we report
        return (f"{type(err).__name__}: {str(err).strip()} "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"torch sees no CUDA device (CUDA_VISIBLE_DEVICES={visible!r}, torch {torch.__version__})"


def resolve_device(device: str, gpu_assigned: bool = False) -> Any:
    """The ``torch.device`` that ``models.device`` names in this process.

    Args:
        device: ``"auto"`` (cuda when torch can use it, else cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        gpu_assigned: this process was given a GPU (a Ray actor with ``num_gpus=1``): ``"auto"``
            must then resolve to it. Falling back to the CPU there would run the models on a CPU
            share sized for a GPU worker, about 100x slower, while the job looks healthy.

    Raises:
        DeviceError: ``auto`` with a GPU assigned, or ``cuda[:N]``, where torch cannot use CUDA
            (with torch's reason); ``cuda:N`` beyond the devices this process sees (under Ray each
            actor sees its own GPU as ``cuda:0``); a string torch does not know.
    """
    import torch

    if device == "auto":
        reason = cuda_unavailable_reason()
        if reason is None:
            return torch.device("cuda")
        if gpu_assigned:
            raise DeviceError(
                f"models.device='auto' and this worker was given a GPU, but torch cannot use CUDA: {reason}. "
                "Install the torch build that matches this node's NVIDIA driver "
                "(docs/real-models.md#device-and-precision), "
                "or set models.device: cpu to label on CPUs on purpose"
            )
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"models.device={device!r} is not a device torch knows ({err})") from err
    if resolved.type != "cuda":
        return resolved
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise DeviceError(f"models.device={device!r} but CUDA is not available here: {reason} "
                          "(use 'auto' or 'cpu')")
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise DeviceError(
            f"models.device={device!r} but this process sees {count} CUDA device(s) "
            f"(cuda:0 to cuda:{count - 1}); "
            "under Ray each worker sees only the GPU it was given, as cuda:0: use 'cuda' or 'auto'"
        )
    return resolved


@dataclass(frozen=True)
class DeviceInfo:
    """What a worker runs on, for its start line (``summary``) and run.json."""

    device: str  # the resolved torch device, e.g. "cuda:0" or "cpu"
    torch_version: str
    torch_cuda: str | None  # the CUDA version torch was built for; None for a CPU-only build
    driver_version: str | None  # the NVIDIA kernel driver, when it can be read
    gpu_name: str | None
    gpu_memory_gib: float | None
    torch_threads: int  # intra-op CPU threads (what CPU work, and CPU-only models, run on)

    def summary(self) -> str:
        gpu = f" ({self.gpu_name}, {self.gpu_memory_gib:.1f} GiB)" if self.gpu_name else ""
        return (f"device {self.device}{gpu}, torch {self.torch_version} "
                f"built for CUDA {self.torch_cuda or 'none'}, driver {self.driver_version or 'n/a'}, "
                f"{self.torch_threads} torch threads")


def describe_device(device: Any) -> DeviceInfo:
    """``DeviceInfo`` of a resolved device (from ``resolve_device``)."""
    import torch

    device = torch.device(device)
    name = memory_gib = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        device = torch.device("cuda", index)
        name = torch.cuda.get_device_name(index)
        memory_gib = torch.cuda.get_device_properties(index).total_memory / 2**30
    return DeviceInfo(str(device), torch.__version__, torch.version.cuda, nvidia_driver_version(), name,
                      memory_gib, int(torch.get_num_threads()))


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver version (NVML when its Python binding is installed, else Linux's /proc); None
    without one. The driver bounds the CUDA versions torch can use: R580+ for CUDA 13, R525+ for 12.x."""
    with contextlib.suppress(Exception):  # not installed, or no driver: try the next source
        import pynvml  # nvidia-ml-py, often installed next to the CUDA wheels

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
    except OSError:
        return None
    # "NVRM version: NVIDIA UNIX [Open ]Kernel Module [for x86_64]  575.57.08  Release Build ..."
    match = re.search(r"Kernel Module(?: for \w+)?\s+(\d+(?:\.\d+)+)", first)
    return match.group(1) if match else first.strip() or None


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
