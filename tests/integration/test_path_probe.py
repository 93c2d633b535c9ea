"""A second Ray node that sees another filesystem at the job's local paths (the multi-node mistake
``--output /data/labels`` with ``/data`` not shared): the job must stop before labeling, naming the
node and the paths.

The second node is a real raylet joined to the session's cluster, started by ``unshare -m`` in a
private mount namespace with a tmpfs over the folder holding the input and the output, so its
workers see an empty folder where the driver sees the photos and the output. Needs root and
util-linux ``unshare`` (skipped otherwise).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bmp_core.output import layout
from jobs.path_probe import PathProbeError
from jobs.ray_runner import RunOptions, run_job

from ._helpers import fake_config
from .conftest import VENV_BIN, Cluster, free_port

pytestmark = pytest.mark.integration

RAY_CURRENT_CLUSTER = "/tmp/ray/ray_current_cluster"  # Ray's default temp dir


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


@pytest.fixture
def node_with_other_disk(ray_cluster: Cluster, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(the folder the second node does not share, that node's id); the node leaves at teardown."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    hidden = tmp_path / "data"
    hidden.mkdir()
    before = {n["NodeID"] for n in _alive_nodes()}
    # Ray replaces a loopback address by the machine's routable one once multi-node is allowed
    # (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, which `ray start` of a second node needs): so the head is
    # named by a host name that the namespace's own /etc/hosts maps to 127.0.0.1, and the node takes
    # 127.0.0.2 (loopback too, and not rewritten).
    hosts = tmp_path / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() + "\n127.0.0.1 bmp-probe-head\n")
    port = ray_cluster.gcs_address.rsplit(":", 1)[1]
    ray_start = [f"{VENV_BIN}/ray", "start", f"--address=bmp-probe-head:{port}", "--block",
                 "--node-ip-address=127.0.0.2", "--num-cpus=2", "--num-gpus=0", "--memory=2000000000",
                 "--object-store-memory=100000000", f"--dashboard-agent-listen-port={free_port()}",
                 f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats"]
    # `ray start` records its address in /tmp/ray/ray_current_cluster, which later ray.init() and
    # state-API calls read; the node's own record must not replace the head's (bmp-probe-head
    # resolves only in here), so it writes into a scratch file bound over that one.
    current = shlex.quote(RAY_CURRENT_CLUSTER)
    scratch = shlex.quote(str(tmp_path / "ray_current_cluster"))
    script = (f"mount -t tmpfs bmp-other-disk {shlex.quote(str(hidden))} && "
              f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && "
              f"if [ -e {current} ]; then cp {current} {scratch} && mount --bind {scratch} {current}; fi && "
              f"exec {shlex.join(ray_start)}")
    log = open(tmp_path / "node2.log", "wb")  # noqa: SIM115 - closed at teardown
    # The variable keeps a one-node Ray on 127.0.0.1 (conftest); a node joining needs it on.
    env = {**ray_cluster.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        new: set[str] = set()
        while not new:
            if proc.poll() is not None:
                pytest.skip(f"the second node did not start (rc {proc.returncode}): "
                            f"{(tmp_path / 'node2.log').read_text()[-500:]}")
            assert time.monotonic() < deadline, "the second node did not join the cluster"
            time.sleep(0.5)
            new = {n["NodeID"] for n in _alive_nodes()} - before
        yield hidden, new.pop()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # our own process group: `ray start --block` leaves
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while {n["NodeID"] for n in _alive_nodes()} - before and time.monotonic() < deadline:
            time.sleep(0.5)  # later tests must not place workers on a node that is going away
        log.close()


def test_a_node_with_another_disk_stops_the_job_before_labeling(node_with_other_disk: tuple[Path, str],
                                                                 testdata: Path) -> None:
    hidden, node_id = node_with_other_disk
    src, out = hidden / "photos", hidden / "labels"
    src.mkdir()
    for p in sorted(testdata.rglob("*.jpg"))[:4]:
        shutil.copy(p, src / p.name)
    # 4 one-core workers on two 2-core nodes: two of them run on the node with the other disk.
    opts = RunOptions(str(src), str(out), num_workers=4, progress=False, lock_settle_s=0.05)
    with pytest.raises(PathProbeError) as err:
        run_job(fake_config("job.shard_size=1"), opts)
    text = str(err.value)
    assert f"127.0.0.2 (node {node_id[:12]}" in text  # the node, by IP and Ray node id
    assert f"output {out / layout.PATH_PROBE}: missing there" in text
    assert f"input {min(src.iterdir())}: missing there" in text
    assert "shared" in text and "s3://" in text
    # Nothing was labeled: no commit marker, no part, on the driver's disk.
    assert not (out / layout.COMMITS_DIR).exists() and not (out / layout.IMAGES_DIR).exists()
    assert not (out / layout.LOCK_JSON).exists()  # and the lock is released
    # (The same job with every worker on one disk: every other integration test, the probe included.)

