"""Faults: a worker killed mid-shard, a driver killed mid-run and resumed, a second job on the same output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jobs.cli import main
from jobs.ray_runner import RunOptions, run_job

from ._helpers import (
    FAKE_CONFIG,
    REPO,
    assert_one_row_per_image,
    fake_config,
    keypoints_by_uri,
    read_output,
    reference_keypoints,
)

pytestmark = pytest.mark.integration

# Slow fake models (2 passes x 150 ms per image) and one image per shard: a run lasts seconds.
SLOW = ("models.fake.latency_ms=150", "job.shard_size=1")


def _wait_for_commits(out: Path, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(list((out / "_commits").glob("shard-*.json"))) >= count:
            return
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {count} shards committed in {timeout_s} s")


def _assert_same_labels_as_reference(out: Path, testdata: Path) -> None:
    images, instances = read_output(str(out))
    uris = sorted(testdata.rglob("*.jpg"))
    assert_one_row_per_image(images, len(uris))
    got = keypoints_by_uri(images, instances)
    cfg = fake_config(*SLOW)
    for path in uris:
        np.testing.assert_array_equal(got[str(path)], reference_keypoints(path, cfg))
    # After the job, only the committed attempt of each shard is left in the folders.
    assert len(list((out / "images").iterdir())) == len(list((out / "_commits").iterdir())) == len(uris)


def _kill_a_worker() -> str:
    import ray
    from ray.util.state import list_actors

    named = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("bmp-worker-")]
    assert named, "no worker actor found"
    name = named[0]["name"]
    alive = list_actors(filters=[("name", "=", name), ("state", "=", "ALIVE")])
    if alive and alive[0].pid:
        os.kill(alive[0].pid, signal.SIGKILL)  # what the OOM killer or a CUDA fault looks like
    else:
        ray.kill(ray.get_actor(name, namespace=named[0]["namespace"]), no_restart=True)
    return name


def test_worker_killed_mid_shard_is_replaced(ray_cluster: object, testdata: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result: dict[str, object] = {}

    def job() -> None:
        try:
            result["run"] = run_job(fake_config(*SLOW), RunOptions(str(testdata), str(out), num_workers=1,
                                                                    progress=False, lock_settle_s=0.05))
        except Exception as err:  # noqa: BLE001 - re-raised in the main thread below
            result["error"] = err

    thread = threading.Thread(target=job)
    thread.start()
    _wait_for_commits(out, 1)
    _kill_a_worker()  # it is now inside its second shard, with a third queued behind it
    thread.join(timeout=300)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    run = result["run"]
    assert run.counts.failed_attempts >= 1
    _assert_same_labels_as_reference(out, testdata)


def test_driver_killed_then_resumed(ray_cluster: object, testdata: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    num_images = len(list(testdata.rglob("*.jpg")))
    if num_images < 8:  # e.g. examples/ (4 images): the driver could finish before it is killed
        pytest.skip(f"needs at least 8 images to kill the driver mid-job, the test images have {num_images}")
    out = tmp_path / "out"
    args = ["run", "--config", str(FAKE_CONFIG), "--input", str(testdata), "--output", str(out), "--no-progress",
            *SLOW]
    driver = subprocess.Popen([sys.executable, "-m", "jobs.cli", *args, "--address", ray_cluster.gcs_address],
                              cwd=REPO, env=ray_cluster.env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_commits(out, 3)
        # While it runs, a second job on the same output is refused.
        assert main([*args, "--address", ray_cluster.gcs_address]) == 2
        assert "being written by another job" in capsys.readouterr().err
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert not (out / "run.json").exists(), "the driver finished before it was killed"
    committed_before = len(list((out / "_commits").glob("*.json")))

    rerun = run_job(fake_config(*SLOW), RunOptions(str(testdata), str(out), num_workers=2, progress=False,
                                                    lock_settle_s=0.05))
    assert rerun.counts.shards_skipped >= committed_before >= 3
    assert rerun.counts.shards_labeled == num_images - rerun.counts.shards_skipped  # 1 per shard
    _assert_same_labels_as_reference(out, testdata)


def test_shard_failing_every_attempt_stops_the_job(ray_cluster: object, testdata: Path, tmp_path: Path) -> None:
    from jobs.ray_runner import JobError

    out = tmp_path / "out"
    out.mkdir()
    (out / "images").write_text("a file where the parts folder should be")  # every part write fails
    cfg = fake_config("job.shard_size=2", "job.max_attempts=2")
    with pytest.raises(JobError, match=r"shard \d+ failed 2 time\(s\) \(job.max_attempts\)"):
        run_job(cfg, RunOptions(str(testdata / "coco"), str(out), num_workers=1, progress=False, lock_settle_s=0.05))
    assert not (out / "_lock.json").exists() and not (out / "run.json").exists()
