"""One download per job (jobs/staging.py): a 2-worker job fetches its checkpoint from the origin once,
on the driver, stages it to ``models.stage_uri`` (S3 on the moto server), and the workers read it from
there. The tiny real models on CPU (configs/tiny_random.yaml) with a synthetic RTMDet-Ins tiny file."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from bmp_core.config import load_config
from bmp_core.models.checkpoints import cache_key, cache_path_for
from bmp_core.testing.images import synthetic_people_bgr
from jobs.ray_runner import RunOptions, run_job

from .conftest import BUCKET

pytestmark = [pytest.mark.integration, pytest.mark.models]
torch = pytest.importorskip("torch")
pytest.importorskip("mmdet")
pytest.importorskip("sam2")

REPO = Path(__file__).resolve().parents[2]


def test_two_workers_stage_each_checkpoint_once(ray_cluster: object, http_folder: Any, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import cv2
    import fsspec

    from bmp_core.models.detector_rtmdet import build_rtmdet

    base, root, handler = http_folder
    tiny = REPO / "configs" / "tiny_random.yaml"
    torch.manual_seed(1)
    detector = build_rtmdet(load_config(tiny).models.detector, torch.device("cpu"), None, "fp32")
    torch.save({"state_dict": detector.model.state_dict()}, root / "rtmdet-tiny.pth")
    url = f"{base}/rtmdet-tiny.pth"
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        cv2.imwrite(str(src / f"{i}.jpg"), synthetic_people_bgr(96, 128, 1, seed=i))

    stage = f"s3://{BUCKET}/stage-{uuid.uuid4().hex[:8]}"
    cache = tmp_path / "cache"  # the driver's and (one node) the workers' cache
    cfg = load_config(tiny, [f"models.detector.checkpoint={url}", f"models.stage_uri={stage}",
                             f"models.cache_dir={cache}", "job.shard_size=1",
                             # the least CPU work that still runs all three models (fast on 2 cores)
                             "loop.iterations=1", "models.segmenter.image_size=512"])
    run = run_job(cfg, RunOptions(str(src), str(tmp_path / "out"), num_workers=2, progress=False,
                                  lock_settle_s=0.05))

    assert run.counts.images_ok == 2 and len({w.pid for w in run.workers}) == 2
    loads = run.to_dict()["worker_loads"]  # each worker's models time and how much of it waited for input
    assert sum(x["images"] for x in loads) == 2  # (queue_depth 2: one worker may take both shards)
    assert all(0.0 <= x["input_wait_s"] < x["models_s"] and 0.0 <= x["input_wait_share"] < 1.0 for x in loads)
    assert handler.requests == ["/rtmdet-tiny.pth"]  # the origin was asked once, for 2 workers
    staged = f"{stage}/{cache_key(url)}"
    with fsspec.open(staged, "rb", skip_instance_cache=True) as f:
        staged_digest = hashlib.sha256(f.read()).hexdigest()
    assert staged_digest == hashlib.sha256((root / "rtmdet-tiny.pth").read_bytes()).hexdigest()
    # The workers fetched the staged copy (into the node's cache, under the staged URI), not the origin.
    assert cache_path_for(staged, cache).is_file() and cache_path_for(url, cache).is_file()
    assert run.config["models"]["detector"]["checkpoint"] == url  # the record keeps the user's config

    # A later job finds the file staged: the origin is not asked again, even with an empty driver cache.
    from jobs.staging import prepare_weights

    for leftover in cache.rglob("*"):
        if leftover.is_file():
            leftover.unlink()
    workers_cfg = prepare_weights(cfg, stage)
    assert workers_cfg.models.detector.checkpoint == staged and workers_cfg.models.detector.sha256 == staged_digest
    assert handler.requests == ["/rtmdet-tiny.pth"]

    # `bmp-label weights --to STAGE --check` checks what the stage holds (fetched from there, not the origin).
    from jobs.cli import main

    assert main(["weights", str(tiny), f"models.detector.checkpoint={url}", f"models.cache_dir={cache}",
                 "--to", stage, "--check"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"ok     detector {staged} -> ") and f"sha256 {staged_digest}, layout ok (" in line
    assert handler.requests == ["/rtmdet-tiny.pth"]
