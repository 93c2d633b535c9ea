"""`ray job submit` of `bmp-label run` to a real `ray start --head` cluster on 127.0.0.1.

This is the path a cluster user takes (docs/clusters.md): infra/submit.sh runs
`ray job submit --runtime-env infra/runtime_env.yaml`, so the code travels as that runtime env's
working_dir and the driver runs under Ray's job supervisor on the head. The outputs are read back
with plain pyarrow / pycocotools, as a user would, not with the job's own reader.

The cluster is this module's own, on purpose: a private --temp-dir (so no `ray.init("auto")` of a
concurrent test run finds it through /tmp/ray), free ports, and pinned token auth.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
pytest.importorskip("jobs.cli", reason="jobs.cli not available yet")

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # ray and bmp-label of the venv running the tests

# Ray 2.60 turns token auth on by itself when ~/.ray/auth_token exists (any earlier local ray.init()
# writes one), and a client that does not know it then cannot connect. Pin the mode: token auth with
# a token of this run only, given to `ray start` and `ray job submit` alike, as on a real cluster.
_TOKEN = secrets.token_hex(32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps every listener on 127.0.0.1 (tests/integration/conftest.py);
    # the job's entrypoint finds bmp-label on the PATH the cluster was started with.
    env = dict(
        os.environ,
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=_TOKEN,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("RAY_ADDRESS", None)
    return env


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _stop_cluster(pgid: int, temp_dir: str) -> None:
    """Stop this module's cluster only.

    Not `ray stop`: it kills every Ray process of the machine, including clusters of other test runs
    sharing it. Ray's daemons stay in the process group of our `ray start` (Ray does not setsid), and
    its workers name our temp dir on their command line; those are the processes we end. SIGTERM
    alone can leave gcs_server running for minutes, hence the SIGKILL round.
    """
    for sig, grace_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for kill, target in [(os.killpg, pgid)] + [(os.kill, pid) for pid in _processes_mentioning(temp_dir)]:
            with contextlib.suppress(ProcessLookupError):
                kill(target, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                if not _processes_mentioning(temp_dir):
                    return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A one-node Ray cluster with its dashboard (the job API) on 127.0.0.1; yields its address."""
    temp_dir = tempfile.mkdtemp(prefix="bmp-ray-", dir="/tmp")  # short: socket paths must stay < 107 bytes
    dashboard = _free_port()
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={_free_port()}",
        "--num-cpus=2",
        "--num-gpus=0",
        "--object-store-memory=300000000",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    start = subprocess.Popen(
        cmd, env=_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out, _ = start.communicate(timeout=180)
        assert start.returncode == 0, f"ray start failed:\n{out}"
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 90
        while True:  # `ray start` returns before the dashboard's job API answers
            try:
                request = urllib.request.Request(
                    f"{address}/api/version", headers={"Authorization": f"Bearer {_TOKEN}"}
                )
                with urllib.request.urlopen(request, timeout=2) as response:
                    json.load(response)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        if start.poll() is None:
            start.kill()
        _stop_cluster(start.pid, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_sh_labels_the_folder_on_a_cluster(ray_head: str, testdata: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    from pycocotools.coco import COCO

    from bmp_core.config import load_config

    output = tmp_path / "out"
    # Run from elsewhere: submit.sh must find the repository (the runtime env's working_dir) itself.
    # RAY_ADDRESS is the dashboard URL, as on a real cluster; Ray sets the GCS address for the driver.
    done = subprocess.run(
        ["bash", str(REPO / "infra" / "submit.sh"), str(testdata), str(output), "configs/fake.yaml"],
        env={**_env(), "RAY_ADDRESS": ray_head},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=420,
    )
    log = done.stdout[-4000:] + done.stderr[-4000:]
    assert done.returncode == 0 and "succeeded" in done.stdout, f"submit failed:\n{log}"

    # Every image file under the input is exactly one row, labeled or failed.
    extensions = load_config(REPO / "configs" / "fake.yaml").job.image_extensions
    expected = sorted(str(p) for p in testdata.rglob("*") if p.suffix.lower() in extensions)
    images = pq.read_table(output / "images").to_pylist()
    assert sorted(row["uri"] for row in images) == expected, log
    assert len({row["image_id"] for row in images}) == len(expected)

    # coco.json is a dataset pycocotools loads: one COCO image per labeled row, one annotation per person.
    coco = COCO(str(output / "coco.json"))
    assert len(coco.getImgIds()) == sum(row["status"] == "ok" for row in images) > 0
    assert len(coco.getAnnIds()) == pq.read_table(output / "instances").num_rows > 0
