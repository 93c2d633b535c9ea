"""Weights before workers: the driver checks every checkpoint, and on a cluster copies each one once to
a place every node reads, before Ray starts a GPU actor (docs/clusters.md).

Without this, each actor fetched its checkpoints itself after Ray had placed it on a GPU: 100 nodes
meant 100 downloads from one hub (which rate-limits exactly that) while the GPUs idled, and a wrong or
truncated file was found by every actor, after ``job.max_attempts`` restarts. Now:

1. ``check_checkpoints`` on the driver: reachable, size, sha256 when given, keys and shapes against the
   model the config builds (on the meta device). A failure is one ``CheckpointError`` naming the file,
   raised before Ray starts.
2. Staging (a cluster, or ``models.stage_uri``): each file not already on S3 is copied from the driver's cache to
   ``STAGE/<hash of its URI>/<name>`` (the cache's own layout), where ``STAGE`` is
   ``models.stage_uri`` or ``OUT/_weights`` (s3:// or a local output, which a cluster's nodes must
   share anyway: ``jobs/path_probe.py``). A file already staged (an earlier run, or ``bmp-label weights
   --to STAGE``) is checked from there and the origin is not asked: a firewalled cluster pre-stages once.
   The workers get a config naming the staged copies (an s3:// copy with the sha256 checked here, so each
   node's download is checked too); each node fetches them
   into its own cache once (concurrent actors on a node share the cache's lock).

A local run (no cluster, no ``models.stage_uri``) keeps the driver's cache, which its workers share.
With ``models.offline`` nothing is staged: every node is expected to have its own copy (a baked image).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import uuid

from bmp_core.config import BmpConfig
from bmp_core.io.uris import filesystem, join_uri, protocol_of
from bmp_core.models.checkpoints import CheckpointError, cache_key
from bmp_core.models.weights import (
    CheckedCheckpoint,
    ModelLayouts,
    check_checkpoint,
    check_checkpoints,
    checkpoint_refs,
)
from bmp_core.output import layout
from bmp_core.output.store import OutputStore

logger = logging.getLogger(__name__)


def stage_location(cfg: BmpConfig, store: OutputStore, cluster: bool) -> str | None:
    """Where the driver stages the checkpoints for the workers; None: they use the driver's cache."""
    if cfg.models.offline:
        return None
    if cfg.models.stage_uri:
        stage = cfg.models.stage_uri
        return stage if protocol_of(stage) != "file" else os.path.abspath(os.path.expanduser(stage))
    return store.uri_of(layout.WEIGHTS_DIR) if cluster else None


def prepare_weights(cfg: BmpConfig, stage: str | None) -> BmpConfig:
    """Check every checkpoint of ``cfg`` on the driver, stage them under ``stage`` (when not None).

    Returns:
        The config the workers get: ``cfg`` itself, or with each checkpoint pointing at its staged
        copy (the run's record and plan keep ``cfg``).

    Raises:
        CheckpointError: a checkpoint is unreachable, has the wrong sha256 or does not fit its model,
            or cannot be staged; the message names the file.
    """
    if stage is None:
        check_checkpoints(cfg.models, on_file=_log_checked)
        return cfg
    layouts = ModelLayouts(cfg.models)
    models = cfg.models
    for ref in checkpoint_refs(cfg.models):
        if protocol_of(ref.uri) == "s3":  # already where every node reads it (and S3 takes the load)
            _log_checked(check_checkpoint(ref, layouts))
            continue
        staged = join_uri(stage, *cache_key(ref.uri).split("/"))
        if _exists(staged):  # staged before (an earlier run, `bmp-label weights --to`): the origin is not asked
            checked = check_checkpoint(dataclasses.replace(ref, uri=staged), layouts)
        else:
            checked = check_checkpoint(ref, layouts)
            stage_file(checked, staged)
        _log_checked(checked)
        # A remote copy is downloaded by each node: with the digest checked here, a node's copy is
        # checked too (a shared path is read in place, and hashing it on every worker would cost seconds).
        sha256 = checked.sha256 if protocol_of(staged) != "file" else ref.sha256
        section = dataclasses.replace(getattr(models, ref.role), checkpoint=staged, sha256=sha256)
        models = dataclasses.replace(models, **{ref.role: section})
    return dataclasses.replace(cfg, models=models)


def _exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return bool(fs.exists(path))
    except OSError as err:
        raise CheckpointError(f"cannot read the checkpoint stage {uri}: {type(err).__name__}: {err}",
                              hint="give a readable models.stage_uri, or check the output's permissions") from err


def stage_file(checked: CheckedCheckpoint, target_uri: str) -> str:
    """Copy a checked checkpoint to ``target_uri`` unless a file of its size is there; returns the URI."""
    fs, path = filesystem(target_uri)
    try:
        if fs.exists(path) and fs.size(path) == checked.size_bytes:
            logger.info("checkpoint %s already staged at %s", checked.ref.uri, target_uri)
            return target_uri
        logger.info("staging checkpoint %s (%.1f MiB) -> %s", checked.ref.uri, checked.size_bytes / (1 << 20),
                    target_uri)
        if protocol_of(target_uri) == "file":
            # Nodes may read while we write: the file appears complete, by a rename in its folder.
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.part-{uuid.uuid4().hex[:8]}"
            try:
                shutil.copyfile(checked.path, tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            fs.put_file(str(checked.path), path)  # an S3 object appears whole when its upload completes
    except OSError as err:
        raise CheckpointError(
            f"could not stage checkpoint {checked.ref.uri} to {target_uri}: {type(err).__name__}: {err}",
            hint="give a writable models.stage_uri (s3:// or a path every node mounts), or check the "
                 "output's permissions") from err
    return target_uri


def _log_checked(c: CheckedCheckpoint) -> None:
    layout = (f"{c.num_tensors} tensors fit models.{c.ref.role} ({c.ref.arch})" if c.layout_skipped is None
              else f"layout not checked: {c.layout_skipped}")
    logger.info("checkpoint %s: %s, %.1f MiB, sha256 %s, %s", c.ref.uri, c.path, c.size_bytes / (1 << 20),
                c.sha256[:16], layout)
