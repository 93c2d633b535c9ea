"""`ray job submit` of `bmp-label run` to a real `ray start --head` cluster on 127.0.0.1.

This is the path a cluster user takes (README "Running on a cluster"): the code travels as the
runtime env's working_dir (infra/runtime_env.yaml), the driver runs under the job supervisor with
RAY_ADDRESS set by Ray, and the outputs are read back with plain pyarrow / pycocotools, not with the
job's own reader.
"""

from __future__ import annotations

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ray 2.60 turns token auth on by itself once ~/.ray/auth_token exists (any earlier local ray.init()
# writes one), so the cluster's mode would depend on the machine's history. Pin it: token auth with a
# token of this test run only, given to `ray start` and `ray job submit` alike, as on a real cluster.
_TOKEN = secrets.token_hex(32)


def _env() -> dict[str, str]:
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps every listener on 127.0.0.1 (shared/docs/install.md,
    # item 10); the job's entrypoint finds bmp-label on the PATH the cluster was started with.
    return dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
                RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=_TOKEN,
                PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


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
    """Stop this test's cluster only.

    Not `ray stop`: it kills every Ray process of the machine, including clusters of other test runs
    sharing it. Every Ray daemon stays in the process group of our `ray start` (Ray does not setsid),
    and every worker names our temp dir on its command line; those are the processes we end.
    """
    for sig, grace_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        for pid in _processes_mentioning(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
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
    """A one-node Ray cluster with its dashboard (the job API) on 127.0.0.1; yields the address."""
    # A short temp dir: Ray's unix socket paths must stay under ~107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="bmp-ray-", dir="/tmp")
    dashboard = _free_port()
    # Free ports rather than the defaults, so that this cluster can share the machine with another.
    cmd = [
        str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
        "--num-cpus=2", "--num-gpus=0", "--object-store-memory=300000000", "--include-dashboard=true",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    start = subprocess.Popen(cmd, env=_env(), start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = start.communicate(timeout=120)
        assert start.returncode == 0, f"ray start failed:\n{out}"
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 60
        while True:  # `ray start` returns before the dashboard's job API answers
            try:
                request = urllib.request.Request(f"{address}/api/version",
                                                 headers={"Authorization": f"Bearer {_TOKEN}"})
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


def test_ray_job_submit_labels_the_folder(ray_head: str, testdata: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    from pycocotools.coco import COCO

    from bmp_core.config import load_config

    output = tmp_path / "out"
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", ray_head,
        "--runtime-env", str(REPO / "infra" / "runtime_env.yaml"), "--working-dir", str(REPO),
        "--", "bmp-label", "run", "--config", "configs/fake.yaml", "--input", str(testdata), "--output", str(output),
    ]
    done = subprocess.run(submit, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=420)
    log = done.stdout[-4000:] + done.stderr[-4000:]
    assert done.returncode == 0 and "succeeded" in done.stdout, f"ray job submit failed:\n{log}"

    # Every image file under the input is one row, whatever its fate (status ok or error).
    extensions = load_config(REPO / "configs" / "fake.yaml").job.image_extensions
    expected = sorted(str(p) for p in testdata.rglob("*") if p.suffix.lower() in extensions)
    images = pq.read_table(output / "images").to_pylist()
    assert sorted(row["uri"].removeprefix("file://") for row in images) == expected, log
    assert len({row["image_id"] for row in images}) == len(expected)

    # coco.json is a dataset pycocotools loads, with one COCO image per labeled row.
    coco = COCO(str(output / "coco.json"))
    assert len(coco.getImgIds()) == sum(row["status"] == "ok" for row in images) > 0
    assert len(coco.getAnnIds()) == pq.read_table(output / "instances").num_rows > 0
