"""Synthetic checkpoints with the published files' layouts and file formats (no real weights).

The layouts (key -> shape) are ``tests/models/checkpoint_layouts/*.json`` (copied from the shared test
data, so a plain clone has them; their README says where each comes from). The file format is what the
published files hold: mmengine checkpoints (RTMDet-Ins, MaskPose, ViTPose) are ``{'meta', 'state_dict',
'message_hub'}`` with numpy arrays and scalars in the metadata and mmengine ``HistoryBuffer``s in the
message hub, pickled under numpy 1.x (so the pickle names ``numpy.core.multiarray``); sam2 files are
``{'model': state_dict}``.

Every tensor of a synthetic state dict is a view of one shared storage, so a file with hundreds of
millions of parameters' worth of keys and shapes costs only the largest tensor on disk (torch saves a
shared storage once); loading reads it back as views, which ``load_state_dict`` copies like any tensor.
"""

from __future__ import annotations

import json
import math
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

LAYOUT_FILES = {
    "maskpose": "MaskPose-b.json",
    "vitpose": "ViTPose-b-multi_mmpose20.json",
    "rtmdet": "rtmdet-ins-l-mask.json",
    "sam2": "sam2.1_hiera_base_plus.json",
    # BMP v2: the v2/ folder (described in tests/models/checkpoint_layouts/README.md)
    **{f"pmpose-{size}": f"v2/PMPose-{size}-1.0.0.json" for size in "sblh"},
    **{f"maskpose-{size}-1.1": f"v2/MaskPose-{size}-1.1.0.json" for size in "sblh"},
    "maskpose-b-1.0.0": "v2/MaskPose-b-1.0.0.json",
    "sam-pose2seg": "v2/SAM-pose2seg_hiera_b+.json",
}


LAYOUT_DIR = Path(__file__).resolve().parent / "checkpoint_layouts"


def layout(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a published checkpoint (``name`` one of ``LAYOUT_FILES``)."""
    raw = json.loads((LAYOUT_DIR / LAYOUT_FILES[name]).read_text())
    return {key: tuple(shape) for key, shape in raw.items()}


def synthetic_state_dict(shapes: dict[str, tuple[int, ...]]) -> OrderedDict[str, Any]:
    """A state dict with exactly ``shapes``: float32 views of one storage; BatchNorm's
    ``num_batches_tracked`` counters are int64 scalars, as mmengine saves them."""
    import torch

    largest = max(math.prod(shape) for shape in shapes.values())
    storage = (torch.arange(largest, dtype=torch.float32) % 997) / 997.0  # not zeros: a copy is visible
    out: OrderedDict[str, Any] = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(300, dtype=torch.int64).reshape(shape)
        else:
            out[key] = storage[: math.prod(shape)].view(shape)
    return out


class _Numpy1Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Names numpy's functions as numpy 1.x did (``numpy.core.multiarray``), like the published files."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "") or ""
        if module.startswith("numpy._core"):
            qualname = name or obj.__qualname__
            numpy1_module = module.replace("numpy._core", "numpy.core")
            self.write(pickle.GLOBAL + f"{numpy1_module}\n{qualname}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


class _Numpy1PickleModule:
    Pickler = _Numpy1Pickler


def mmengine_checkpoint(state_dict: dict[str, Any], num_keypoints: int | None = None) -> dict[str, Any]:
    """The published mmengine checkpoint structure around ``state_dict`` (what mmengine's Runner saves)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    loss = HistoryBuffer(max_length=10)
    for value in (0.0021, 0.0019, 0.0018):
        loss.update(value)
    dataset_meta: dict[str, Any] = {"dataset_name": "coco", "classes": ("person",)}
    if num_keypoints is not None:
        dataset_meta.update(
            num_keypoints=num_keypoints,
            flip_indices=list(range(num_keypoints)),
            keypoint_colors=np.zeros((num_keypoints, 3), np.uint8),
            sigmas=np.full(num_keypoints, 0.05, np.float32),
            dataset_keypoint_weights=np.ones(num_keypoints, np.float32),
        )
    meta = {
        "mmengine_version": "0.10.3",
        "epoch": 210,
        "iter": np.int64(100170),
        "seed": np.int64(0),
        "time": "20240301_120000",
        "cfg": "model = dict(...)",
        "best_score": np.float64(0.753),
        "dataset_meta": dataset_meta,
        "hook_msgs": {"last_ckpt": "work_dirs/epoch_210.pth"},
    }
    message_hub = {
        "log_scalars": OrderedDict({"train/loss": loss}),
        "runtime_info": OrderedDict(
            {"epoch": 210, "iter": 100170, "max_epochs": 210, "lr": np.float64(5e-6)}
        ),
        "resumed_keys": OrderedDict({"train/loss": True, "epoch": True, "iter": True}),
    }
    return {"meta": meta, "state_dict": state_dict, "message_hub": message_hub}


def save_mmengine(path: Path, checkpoint: dict[str, Any]) -> Path:
    """``torch.save`` as mmengine does (zip format, pickle protocol 2), numpy named as numpy 1.x names it."""
    import torch

    torch.save(checkpoint, path, pickle_module=_Numpy1PickleModule)
    return path


def save_sam2(path: Path, state_dict: dict[str, Any]) -> Path:
    """sam2's published format: ``{'model': state_dict}``."""
    import torch

    torch.save({"model": state_dict}, path)
    return path
