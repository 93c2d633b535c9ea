"""The sample run's edges that mutation testing (scripts/mutation.sh) found unchecked: durations at the
unit boundaries, an empty listing and a tar sample that read no bytes, the projection's worker count,
the measured seconds bounded by the wall clock around the call, and the GPU flag reaching the worker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bmp_core.config import config_from_dict
from bmp_core.io.sources import list_source
from bmp_core.output.plan import Plan
from bmp_core.testing.images import SyntheticImage, write_synthetic_images
from jobs.pricing import SampleTiming, SampleWorker, format_duration, project, sample_ids, sample_inputs, sample_tars
from tests.tar_files import write_tar

TIMING = SampleTiming(num_images=40, num_errors=0, labeling_s=20.0, num_warmup=8, warmup_s=5.0,
                      worker_start_s=30.0, worker="h:1", device="1 GPU")


@pytest.mark.parametrize(("seconds", "text"), [
    (59.94, "59.9 s"), (60, "1 min 00 s"), (1800, "30 min 00 s"), (3599, "59 min 59 s"),
    (3600, "1 h 00 min"), (7140, "1 h 59 min"), (7200, "2 h 00 min"), (18000, "5 h 00 min"),
])
def test_durations_at_the_unit_boundaries(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_an_empty_listing_projects_only_the_overhead() -> None:
    p = project(TIMING, Plan(0, 256, "l", "c"), 4, 2.0)
    assert (p.num_images, p.num_shards, p.num_workers, p.labeling_s) == (0, 0, 4, 0.0)
    assert p.wall_s == 35.0 and p.cost == pytest.approx(4 * 35.0 / 3600 * 2.0)


def test_a_tar_sample_without_bytes_read_estimates_no_images() -> None:
    # bytes_read None: nothing to scale the tars' sizes by; the tars' bytes are not images.
    p = project(TIMING, Plan(None, 256, "l", "c", num_tars=2), 3, None, tar_bytes=[10**9, 10**9])
    assert p.estimated and p.num_images == 0 and p.labeling_s == 0.0 and p.num_workers == 3


def test_the_gpu_flag_reaches_the_worker() -> None:
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}})
    assert SampleWorker(cfg).gpu_assigned is False
    assert SampleWorker(cfg, gpu_assigned=True).gpu_assigned is True


def test_the_measured_seconds_are_within_the_call(tmp_path: Path) -> None:
    photos = write_synthetic_images(tmp_path / "photos", tuple(SyntheticImage(f"p{i}.jpg", 96, 80, 1, i)
                                                                for i in range(3)))
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}}, ["job.batch_size=2"])
    worker = SampleWorker(cfg)
    listing = list_source(str(tmp_path / "photos"), (".jpg",))
    ids = sample_ids(len(listing.uris), 3, seed=0)
    uris, spans = sample_inputs(listing, ids)
    t0 = time.perf_counter()
    _, seconds, _, warmup_s = worker.time_sample(ids, uris, listing.kind, spans, 1)
    wall = time.perf_counter() - t0
    assert 0 < seconds <= wall and 0 < warmup_s <= wall and seconds + warmup_s <= wall

    write_tar(tmp_path / "s-0.tar", [(p.name, p.read_bytes()) for p in photos])
    tars = sample_tars(list_source(str(tmp_path / "s-0.tar"), (".jpg",)), seed=0)
    t0 = time.perf_counter()
    n, seconds, _, warmup_s, _ = worker.time_tar_sample(tars, 3, 1)
    wall = time.perf_counter() - t0
    assert n == 3 and 0 < seconds <= wall and 0 < warmup_s <= wall and seconds + warmup_s <= wall
