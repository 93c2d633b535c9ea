"""Checkpoint resolution (path / s3:// / https:// / hf://) into a local cache, and strict loading.

``resolve_checkpoint`` turns a checkpoint reference into a local file, downloading a remote one once
per cache directory: concurrent actors on one node serialise on a file lock, the download goes to a
temporary name in the same directory and is renamed into place atomically (a reader never sees half a
file), and an optional sha256 is checked before the rename. With ``offline=True`` (or the environment
variable ``BMP_OFFLINE=1``) nothing is downloaded; a missing cache entry is one error that names the
file and says how to pre-stage it.

``load_state_dict`` reads the published formats (mmengine ``{'meta', 'state_dict', 'message_hub', ...}``,
sam2 ``{'model': ...}``, a bare state dict) with ``torch.load(weights_only=True)`` and a narrow allow-list
of exactly what mmengine's metadata holds: numpy arrays, dtypes and scalars, and mmengine's
``HistoryBuffer`` (besides the tensors and plain containers torch always accepts). Nothing on that list
runs code of the file's choosing. Anything else is refused, naming what the file asks for; a full
unpickle, which can execute code from the file, happens only when the user opts in
(``models.allow_pickle_checkpoints``), with a warning naming the file (docs/real-models.md#checkpoints).

``load_strict`` loads a state dict into a model and fails, naming the keys, on any missing, unexpected
or mis-shaped parameter: never a silently random layer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bmp_core.errors import UserError

log = logging.getLogger(__name__)

HF_ENDPOINT_DEFAULT = "https://huggingface.co"
_CHUNK_BYTES = 1 << 20
_MAX_KEYS_IN_MESSAGE = 12


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be resolved or does not fit the model; the message names the file."""

    default_hint = ("check models.*.checkpoint / sha256 in the config; 'bmp-label weights CONFIG --check' "
                    "checks every file (docs/clusters.md)")


# --------------------------------------------------------------------------------------------
# Resolving a reference to a local file


def hf_to_https(uri: str) -> str:
    """``hf://ORG/REPO/path/in/repo[@REVISION]`` -> the Hub's ``resolve`` URL (``HF_ENDPOINT`` honoured).

    Example: ``hf://vrg-prague/BBoxMaskPose/MaskPose/MaskPose-b-1.0.0.pth`` ->
    ``https://huggingface.co/vrg-prague/BBoxMaskPose/resolve/main/MaskPose/MaskPose-b-1.0.0.pth``.
    """
    rest = uri[len("hf://") :]
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise CheckpointError(
            f"{uri}: an hf:// reference must look like hf://ORG/REPO/path/to/file[@revision]"
        )
    org, repo, path = parts[0], parts[1], "/".join(parts[2:])
    revision = "main"
    if "@" in path:
        path, revision = path.rsplit("@", 1)
    base = os.environ.get("HF_ENDPOINT", HF_ENDPOINT_DEFAULT).rstrip("/")
    return f"{base}/{org}/{repo}/resolve/{urllib.parse.quote(revision)}/{urllib.parse.quote(path)}"


def cache_key(uri: str) -> str:
    """``<16 hex of sha256(uri)>/<file name>``: where ``uri`` lives inside a cache (or a staging prefix)."""
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(uri).path.rstrip("/"))) or "checkpoint"
    return f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}/{name}"


def cache_path_for(uri: str, cache_dir: str | os.PathLike[str]) -> Path:
    """Where ``uri`` is cached: ``CACHE/<16 hex of sha256(uri)>/<file name>`` (same name, no collisions)."""
    return Path(os.path.expanduser(str(cache_dir))) / cache_key(uri)


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_sha256(path: Path, expected: str | None, what: str) -> None:
    if expected is None:
        return
    actual = sha256_of(path)
    if actual.lower() != expected.lower():
        raise CheckpointError(f"{what}: sha256 mismatch: expected {expected.lower()}, got {actual}")


def _is_offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get("BMP_OFFLINE", "").lower() in ("1", "true", "yes") or os.environ.get(
        "HF_HUB_OFFLINE", ""
    ).lower() in ("1", "true", "yes")


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive advisory lock (``flock``) shared by every process on this node using the same cache."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _download_http(url: str, out: Any, timeout_s: float) -> None:
    headers = {"User-Agent": "bmp-label"}
    token = os.environ.get("HF_TOKEN")
    if (
        token
        and urllib.parse.urlparse(url).hostname
        == urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", HF_ENDPOINT_DEFAULT)).hostname
    ):
        headers["Authorization"] = f"Bearer {token}"  # gated/private Hub repos only
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        shutil.copyfileobj(response, out, _CHUNK_BYTES)


def _download_fsspec(uri: str, out: Any, storage_options: Mapping[str, Any] | None) -> None:
    import fsspec  # s3:// needs s3fs; credentials/endpoint from the environment or storage_options

    # A fresh filesystem object: fsspec caches instances by their arguments, and a cached one keeps
    # the endpoint/credentials of the environment it was created in (a downloaded-once file needs no reuse).
    options = {"skip_instance_cache": True, **dict(storage_options or {})}
    with fsspec.open(uri, "rb", **options) as src:
        shutil.copyfileobj(src, out, _CHUNK_BYTES)


def resolve_checkpoint(
    uri: str,
    cache_dir: str | os.PathLike[str],
    sha256: str | None = None,
    offline: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Return a local file for ``uri``, downloading it into ``cache_dir`` once.

    Args:
        uri: a local path (``~`` expanded, or ``file://``), ``s3://bucket/key``, ``http(s)://...`` or
            ``hf://ORG/REPO/path[@revision]``.
        cache_dir: cache root; entries are ``<16 hex of sha256(uri)>/<file name>``.
        sha256: expected hex digest; checked on download and for local paths (not on every cache hit).
        offline: never download; None = the ``BMP_OFFLINE`` / ``HF_HUB_OFFLINE`` environment variables.
        storage_options: fsspec options for ``s3://`` (e.g. ``{"endpoint_url": ...}``).
        timeout_s: socket timeout of an http(s) download.

    Returns:
        Path of a complete local file.

    Raises:
        CheckpointError: the file is missing, offline without a cached copy, the download failed, or the
            sha256 does not match (the bad download is deleted).
    """
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("", "file"):
        path = Path(os.path.expanduser(urllib.parse.urlparse(uri).path if scheme == "file" else uri))
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        _check_sha256(path, sha256, str(path))
        return path
    if scheme not in ("http", "https", "s3", "hf"):
        raise CheckpointError(
            f"{uri}: unsupported checkpoint scheme {scheme!r} (use a path, s3://, https://, hf://)"
        )

    target = cache_path_for(uri, cache_dir)
    if target.is_file():
        return target  # cache hit; a complete file only ever appears through the atomic rename
    if _is_offline(offline):
        raise CheckpointError(
            f"offline and checkpoint {uri} is not cached at {target}. Pre-stage it: download the file on a "
            f"machine with network access and copy it to exactly {target} (same cache_dir), or point the "
            "config at a local path or an s3:// copy the cluster can read."
        )
    with _file_lock(target.with_name(target.name + ".lock")):
        if target.is_file():  # another actor finished it while we waited for the lock
            return target
        url = hf_to_https(uri) if scheme == "hf" else uri
        log.info("downloading checkpoint %s -> %s", url, target)
        fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                if scheme == "s3":
                    _download_fsspec(uri, out, storage_options)
                else:
                    _download_http(url, out, timeout_s)
            _check_sha256(tmp, sha256, uri)
            os.replace(tmp, target)  # atomic within one directory
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(
                f"could not download checkpoint {url}: {type(err).__name__}: {err}"
            ) from err
        finally:
            tmp.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------------------------
# Reading and strict loading


# What mmengine checkpoints pickle besides tensors (checked on the published files' formats): numpy
# arrays (``_reconstruct`` + ``ndarray`` + a dtype), numpy scalars (``scalar``), and the message hub's
# ``HistoryBuffer``s, whose pickled state names their statistics methods as ``getattr(HistoryBuffer,
# 'mean')`` etc. Files written under numpy 1.x name ``numpy.core.multiarray``; numpy 2 renamed it
# ``numpy._core.multiarray`` (the old name is an alias): both spellings map to the same functions.
_NUMPY_DTYPE_CODES = "?bBhHiIlLqQefdgFDGSU"  # bool, ints, floats, complex, bytes, str: no object or void
_HISTORY_BUFFER = "mmengine.logging.history_buffer.HistoryBuffer"
_HISTORY_BUFFER_METHODS = frozenset({"min", "max", "current", "mean"})
_SAFE_GLOBALS_LOCK = threading.Lock()  # torch's allow-list is process-wide; one load edits it at a time


class _InertHistoryBuffer:
    """Stands in for mmengine's ``HistoryBuffer`` while a checkpoint is read: its state is kept as data.

    Why not the real class: its ``__setstate__`` registers the file's ``statistics_methods`` in a
    class-level registry that mmengine later calls. We only need the file's ``state_dict``, so the message
    hub's buffers are read into this inert object and dropped.
    """

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _history_buffer_method(owner: Any, name: str) -> str:
    """``getattr`` as the allow-list offers it: only ``HistoryBuffer.{min,max,current,mean}``, as a name."""
    import pickle

    if owner is _InertHistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return f"HistoryBuffer.{name}"
    raise pickle.UnpicklingError(f"getattr({owner!r}, {name!r}) is not on the allow-list")


def _safe_globals() -> list[Any]:
    """The allow-list for ``torch.serialization.safe_globals`` (see the comment above)."""
    import importlib

    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed: list[Any] = [np.ndarray, np.dtype]
    allowed += sorted({type(np.dtype(code)) for code in _NUMPY_DTYPE_CODES}, key=str)  # BUILD of a dtype
    for name in ("_reconstruct", "scalar"):
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed.append((getattr(multiarray, name), f"{module}.{name}"))
    allowed += [(_InertHistoryBuffer, _HISTORY_BUFFER), (_history_buffer_method, "builtins.getattr")]
    return allowed


def load_state_dict(path: str | os.PathLike[str], allow_pickle: bool = False, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint file and return its parameter state dict (CPU tensors).

    Accepts ``{'state_dict': sd}`` (mmengine/mmdet/mmpose), ``{'model': sd}`` (sam2) or a bare ``sd``.
    A leading ``module.`` (DataParallel) is stripped.

    Args:
        path: local checkpoint file.
        allow_pickle: when the safe loader refuses the file, unpickle it fully instead of failing (with a
            warning naming the file). Full unpickling runs code from the file: only for files you trust.
        mmap: map the file's tensors instead of reading them (``torch.load(mmap=True)``): the driver's
            layout check (``bmp_core/models/weights.py``) reads only the keys and shapes of a 1 GB file.
            A file in torch's legacy (non-zip) format cannot be mapped and is read whole.

    Raises:
        CheckpointError: unreadable, refused by the safe loader while ``allow_pickle`` is False (naming
            what the file asks for), or no state dict inside.
    """
    import pickle

    import torch

    try:
        with _SAFE_GLOBALS_LOCK, torch.serialization.safe_globals(_safe_globals()):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as err:
                if not (mmap and "mmap" in str(err)):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format: no mmap
    except pickle.UnpicklingError as err:
        needs = _unsafe_globals(path)
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: refused by the safe loader (torch.load weights_only=True plus numpy arrays/scalars "
                f"and mmengine's HistoryBuffer): the file asks for {needs or _refusal(err)}, "
                "which unpickling would import or call, and that can run code of the file's choosing. "
                "If you trust where the file comes from, set models.allow_pickle_checkpoints: true "
                "(full unpickling), or convert it once, where you trust it, to a plain state dict: "
                "torch.save(torch.load(path, weights_only=False)['state_dict'], new_path)."
            ) from err
        log.warning(
            "%s: the safe loader refused it (it asks for %s); unpickling it FULLY because "
            "models.allow_pickle_checkpoints is true: this runs any code the file contains",
            path,
            needs or _refusal(err),
        )
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint: {type(err).__name__}: {err}"
        ) from err

    state = obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                state = obj[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = sorted(obj)[:_MAX_KEYS_IN_MESSAGE] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: no state dict of tensors found (top level: {keys})")
    return {(k.removeprefix("module.")): v for k, v in state.items()}


def _refusal(err: Exception) -> str:
    """The line of torch's weights-only message that says what was refused."""
    text = str(err)
    if "WeightsUnpickler error:" in text:  # torch: "...WeightsUnpickler error: <reason>\n\nCheck the..."
        reason = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        if reason.strip():
            return " ".join(reason.split())
    # A global of a blocked module (os, posix, subprocess...) in a file whose globals torch cannot list (the
    # legacy format): the reason is a paragraph of its own between torch's preamble and its pointer to the docs.
    reasons = [" ".join(p.split()) for p in text.split("\n\n")
               if p.strip() and not p.lstrip().startswith(("Weights only load failed", "Check the documentation"))]
    if reasons:
        return reasons[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _unsafe_globals(path: str | os.PathLike[str]) -> str:
    """The globals ``path``'s pickle names beyond the allow-list, read without executing anything."""
    import torch

    try:
        with _SAFE_GLOBALS_LOCK, torch.serialization.safe_globals(_safe_globals()):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a malformed file: the caller reports torch's own error
        return ""
    return ", ".join(sorted(names))


def _name_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return shown + (f" (+{more} more)" if more > 0 else "")


def load_strict(model: Any, state_dict: Mapping[str, Any], what: str) -> None:
    """Load ``state_dict`` into ``model`` (a torch Module); every key and shape must match.

    Raises:
        CheckpointError: naming the missing keys, unexpected keys and shape mismatches (first 12 of each).
    """
    check_layout({k: tuple(v.shape) for k, v in model.state_dict().items()},
                 {k: tuple(v.shape) for k, v in state_dict.items()}, what)
    model.load_state_dict(dict(state_dict), strict=True)


def check_layout(own: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Compare a model's parameter layout (key -> shape) with a checkpoint's; every key and shape must match.

    Raises:
        CheckpointError: naming the missing keys, unexpected keys and shape mismatches (first 12 of each).
    """
    missing = sorted(set(own) - set(found))
    unexpected = sorted(set(found) - set(own))
    mis_shaped = sorted(
        f"{k} {found[k]} vs model {own[k]}" for k in set(own) & set(found) if own[k] != found[k]
    )
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_name_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_name_keys(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatches ({len(mis_shaped)}): {_name_keys(mis_shaped)}")
    if problems:
        raise CheckpointError(
            f"{what}: checkpoint does not match the model architecture; "
            + "; ".join(problems)
            + ". "
            + _class_count_hint(own, found)
            + "Check that the config names the architecture this checkpoint was trained with.",
            hint="point the models section at the checkpoint of the configured architecture (or the "
                 "architecture of this checkpoint); 'bmp-label weights CONFIG --check' checks every file",
        )


def _class_count_hint(own: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, tuple[int, ...]]) -> str:
    """For an RTMDet(-Ins) head trained with another class count (e.g. person-only): the setting to use.

    The classification convs ``bbox_head.rtm_cls.<level>.weight`` are (num_classes, C, 1, 1), so their
    first dimension in the checkpoint is the class count it was trained with.
    """
    counts = {
        int(state_dict[k][0])
        for k in set(own) & set(state_dict)
        if k.startswith("bbox_head.rtm_cls.")
        and k.endswith(".weight")
        and len(state_dict[k]) == 4
        and state_dict[k] != own[k]
    }
    if len(counts) != 1:
        return ""
    (count,) = counts
    return f"The checkpoint's detector head has {count} classes: set models.detector.num_classes: {count}. "
