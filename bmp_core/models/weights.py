"""The checkpoints a config names, checked before any model is built for real (docs/clusters.md).

``check_checkpoints`` resolves each file (``checkpoints.resolve_checkpoint``: download once into a
cache, or only look there), checks its size, its sha256 when the config gives one, and its layout:
every key and shape of the file against the model the config builds. The model is built by its own
builder (``build_rtmdet``, ``build_maskpose``, ``build_sam2_segmenter``) on the ``meta`` device, so
any architecture the config can name is checked the same way, without a table of layouts per model
and without allocating its weights; the file is read with ``torch.load(mmap=True)`` through the
safe loader, so a 1 GB checkpoint costs page-ins of its headers, not 1 GB of memory. The job's driver
runs it before Ray starts a worker (``jobs/staging.py``), and ``bmp-label weights`` prints it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmp_core.config import ModelsConfig
from bmp_core.models.checkpoints import (
    CheckpointError,
    check_layout,
    load_state_dict,
    resolve_checkpoint,
    sha256_of,
)

log = logging.getLogger(__name__)

ROLES = ("detector", "pose", "segmenter")  # the models.<role> sections that name a checkpoint


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint a config names: ``models.<role>.checkpoint`` (and its ``sha256``)."""

    role: str  # "detector" | "pose" | "segmenter"
    arch: str  # models.<role>.config: what the file must fit
    uri: str
    sha256: str | None


@dataclass(frozen=True)
class CheckedCheckpoint:
    """A checkpoint that was found and fits its model."""

    ref: CheckpointRef
    path: Path  # the local file checked (in the cache, or the configured path)
    size_bytes: int
    sha256: str  # of the file, computed here
    num_tensors: int
    layout_skipped: str | None = None  # why the layout was not checked here (no model packages), else None


def checkpoint_refs(cfg: ModelsConfig) -> tuple[CheckpointRef, ...]:
    """The checkpoints ``cfg`` loads (none for the fake and lite backends or ``checkpoint: null``)."""
    if cfg.kind != "bmp":
        return ()
    out = []
    for role in ROLES:
        section = getattr(cfg, role)
        if section.checkpoint is not None:
            out.append(CheckpointRef(role, section.config, section.checkpoint, section.sha256))
    return tuple(out)


def check_checkpoints(cfg: ModelsConfig, fetch: bool = True, cache_dir: str | os.PathLike[str] | None = None,
                      on_file: Callable[[CheckedCheckpoint], None] | None = None) -> list[CheckedCheckpoint]:
    """Resolve and check every checkpoint of ``cfg``; the first failure raises.

    Args:
        cfg: the models config.
        fetch: download a missing file (False: only look in the cache; ``cfg.offline`` also forbids it).
        cache_dir: the cache to resolve into (default ``cfg.cache_dir``).
        on_file: called with each file once it passed (the driver logs a line).

    Raises:
        CheckpointError: naming the file: unreachable, not cached, wrong sha256, unreadable, or keys
            or shapes that differ from the model the config builds.
    """
    layouts = ModelLayouts(cfg)
    out = []
    for ref in checkpoint_refs(cfg):
        checked = check_checkpoint(ref, layouts, fetch, cache_dir)
        if on_file is not None:
            on_file(checked)
        out.append(checked)
    return out


class ModelLayouts:
    """The layouts of the models ``cfg`` builds, each built (on meta) the first time it is asked for:
    a file that cannot be found needs no model, nor torch.

    A driver without the model packages (a thin submitting machine) cannot build them: ``of`` then
    returns None and ``missing`` says why; the workers still load every file strictly.
    """

    def __init__(self, cfg: ModelsConfig) -> None:
        self.cfg = cfg
        self._built: dict[str, dict[str, tuple[int, ...]]] = {}
        self.missing: str | None = None

    def of(self, role: str) -> dict[str, tuple[int, ...]] | None:
        if role not in self._built and self.missing is None:
            try:
                self._built.update(expected_layouts(self.cfg, {role}))
            except ImportError as err:
                self.missing = f"the model packages are not installed here ({err})"
                log.warning("checkpoint layouts not checked on this machine: %s; the workers check them", self.missing)
        return self._built.get(role)


def check_checkpoint(ref: CheckpointRef, layouts: ModelLayouts, fetch: bool = True,
                     cache_dir: str | os.PathLike[str] | None = None) -> CheckedCheckpoint:
    """Resolve one checkpoint (``fetch`` and ``cache_dir`` as in ``check_checkpoints``) and check it.

    Raises:
        CheckpointError: as ``check_checkpoints``, naming this file.
    """
    cfg = layouts.cfg
    # A download is checked by the resolver before it enters the cache; a local file or a cache hit is
    # hashed once, here (a truncated copy in the cache shows too).
    local = urllib.parse.urlparse(ref.uri).scheme in ("", "file")
    path = resolve_checkpoint(ref.uri, cache_dir or cfg.cache_dir, sha256=None if local else ref.sha256,
                              offline=True if (cfg.offline or not fetch) else None)
    digest = sha256_of(path)
    if ref.sha256 is not None and digest != ref.sha256.lower():
        raise CheckpointError(f"{ref.uri} ({path}): sha256 mismatch: expected {ref.sha256.lower()}, got {digest}",
                              hint=f"delete {path} to fetch it again, or correct models.{ref.role}.sha256")
    expected = layouts.of(ref.role)
    if expected is None:
        return CheckedCheckpoint(ref, path, path.stat().st_size, digest, 0, layouts.missing)
    found = file_layout(path, cfg.allow_pickle_checkpoints)
    check_layout(expected, found, f"{ref.uri} ({path}), models.{ref.role} ({ref.arch})")
    return CheckedCheckpoint(ref, path, path.stat().st_size, digest, len(found))


def file_layout(path: str | os.PathLike[str], allow_pickle: bool = False) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a checkpoint file's state dict, its tensors memory-mapped (not read)."""
    return {k: tuple(v.shape) for k, v in load_state_dict(path, allow_pickle, mmap=True).items()}


def expected_layouts(cfg: ModelsConfig, roles: set[str]) -> dict[str, dict[str, tuple[int, ...]]]:
    """Key -> shape of the parameters and buffers of each model ``cfg`` builds (``roles`` of them),
    built by the real builders on the meta device (no weights allocated, nothing initialised)."""
    import torch

    from bmp_core.models import _compat
    from bmp_core.models.detector_rtmdet import build_rtmdet
    from bmp_core.models.pose_maskpose import build_maskpose
    from bmp_core.models.segmenter_sam2 import build_sam2_segmenter

    _compat.apply()
    meta = torch.device("meta")
    builders: dict[str, Callable[[], Any]] = {
        "detector": lambda: build_rtmdet(cfg.detector, meta, None, cfg.precision).model,
        "pose": lambda: build_maskpose(cfg.pose, meta, None, cfg.precision).model,
        "segmenter": lambda: build_sam2_segmenter(cfg.segmenter, meta, None, cfg.precision).predictor.model,
    }
    out = {}
    for role in ROLES:
        if role in roles:
            with parameters_on_meta():
                module = builders[role]()
            out[role] = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    return out


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered meanwhile moves to the meta device as it is registered.

    Why not ``with torch.device("meta")``: SAM 2's Hiera computes its drop-path rates with ``.item()``
    on a ``linspace`` while it is constructed, which a meta tensor cannot give. Here only parameters
    (the big part: the initialisers then run on meta, as no-ops) leave the CPU; small buffers and the
    constructors' own arithmetic stay real. The builders construct on meta when their device is meta
    (``device.construction_device``), so their final ``.to`` moves nothing.
    """
    import torch

    register = torch.nn.Module.register_parameter

    def register_on_meta(module: Any, name: str, param: Any) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
