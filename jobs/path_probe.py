"""Before any labeling: does every worker see the driver's local paths, with the same bytes?

A local ``--output /data/labels`` on a cluster where ``/data`` is not shared labels fine: each node
writes its shards to its own disk, and only finalize notices that rows are missing, after all the
work. So the driver writes a fresh token into a local output (``layout.PATH_PROBE``) and hashes the
first bytes of the input's first readable local file; each worker reads both at the same paths
before it takes a shard (``jobs/actor_pool.py``), and a mismatch stops the job with the node and the
path (``PathProbeError``). S3 URIs need no probe: every node sees the same bucket.

No Ray here: the node's name comes from the Ray already loaded in a worker process, when there is one.
"""

from __future__ import annotations

import hashlib
import secrets
import socket
import sys
from dataclasses import dataclass

from bmp_core.io.sources import InputListing, split_member_uri
from bmp_core.io.uris import InputError, protocol_of
from bmp_core.output import layout
from bmp_core.output.store import OutputStore

PROBE_BYTES = 64 * 1024  # of an input file: enough to tell two files apart, cheap on any disk
PROBE_CANDIDATES = 8  # listed inputs tried, in order, for one the driver can read


class PathProbeError(InputError):
    """A worker does not see a local path as the driver does (the message names node and path)."""


@dataclass(frozen=True)
class PathProbe:
    """A local file every worker must read identically: its first ``num_bytes`` hash to ``sha256``."""

    role: str  # "output" | "input": which argument the path comes from
    path: str  # absolute, as the driver sees it
    sha256: str
    num_bytes: int


@dataclass(frozen=True)
class PathMismatch:
    """What one worker saw differently."""

    node: str  # "IP (node <id>, host <name>)"
    role: str
    path: str
    reason: str  # "missing", "different content", "unreadable: ..."


def write_probes(store: OutputStore, listing: InputListing) -> tuple[PathProbe, ...]:
    """Write the output's token (a local output only) and hash the input's first readable local file.

    Returns:
        The probes for the workers; empty when both input and output are on S3.
    """
    probes = []
    if store.is_local:
        token = f"bmp-label path probe {secrets.token_hex(16)}\n".encode()
        store.write_bytes(layout.PATH_PROBE, token)
        probes.append(PathProbe("output", store.path(layout.PATH_PROBE), hashlib.sha256(token).hexdigest(),
                                len(token)))
    for uri in listing.uris.slice(0, PROBE_CANDIDATES).to_pylist():
        split = split_member_uri(uri)
        path = split[0] if split else uri  # a tar member / Parquet row: its container file
        if protocol_of(path) != "file":
            break  # an S3 input: every node sees the same bucket
        path = path.removeprefix("file://")
        try:
            digest = _sha256_head(path, PROBE_BYTES)
        except OSError:
            continue  # a missing or unreadable input is that image's error row, not the probe's business
        probes.append(PathProbe("input", path, digest, PROBE_BYTES))
        break
    return tuple(probes)


def check_probes(probes: tuple[PathProbe, ...]) -> tuple[PathMismatch, ...]:
    """Read every probe here (on a worker); the mismatches, empty when all agree."""
    out = []
    for probe in probes:
        try:
            digest = _sha256_head(probe.path, probe.num_bytes)
        except FileNotFoundError:
            reason = "missing"
        except OSError as err:
            reason = f"unreadable: {err}"
        else:
            if digest == probe.sha256:
                continue
            reason = "different content"
        out.append(PathMismatch(node_name(), probe.role, probe.path, reason))
    return tuple(out)


def probe_error(mismatches: list[PathMismatch]) -> PathProbeError:
    """One message for every mismatch: which node, which path, what to do."""
    lines = [f"  node {m.node}: {m.role} {m.path}: {m.reason} there" for m in mismatches]
    return PathProbeError(
        "a worker does not see the same local files as the driver, so its results would land on its own "
        "disk (or it would read other images):\n" + "\n".join(lines) + "\n"
        "Local --input / --output paths must be on storage every node mounts at the same path (NFS, "
        "a shared volume), or use s3:// URIs. Nothing was labeled.")


def node_name() -> str:
    """This process's node: Ray's node IP and id when Ray runs it, and the host name."""
    host = socket.gethostname()
    ray = sys.modules.get("ray")  # loaded by Ray in its worker processes; never imported here
    if ray is None or not ray.is_initialized():
        return host
    try:
        node_id = ray.get_runtime_context().get_node_id()[:12]
        return f"{ray.util.get_node_ip_address()} (node {node_id}, host {host})"
    except Exception:  # noqa: BLE001 - a name is only for the message
        return host


def _sha256_head(path: str, num_bytes: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(num_bytes)).hexdigest()
