"""The sample run's arithmetic (``jobs/pricing.py``): the sample, the schedule, the projection."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import pytest

from bmp_core.config import config_from_dict
from bmp_core.io.sources import list_source
from bmp_core.output.plan import Plan
from jobs.pricing import (
    SampleTiming,
    SampleWorker,
    format_duration,
    makespan_s,
    project,
    sample_ids,
    sample_inputs,
)


def _closed_form_makespan(num_images: int, shard_size: int, num_workers: int, rate: float) -> float:
    """Full shards go round-robin (equal times), the short last one to worker (S - 1) % K."""
    num_shards = -(-num_images // shard_size)
    last = num_images - (num_shards - 1) * shard_size
    busiest_full = math.ceil((num_shards - 1) / num_workers)
    before_last = (num_shards - 1) // num_workers
    return max(busiest_full * shard_size / rate, (before_last * shard_size + last) / rate)


@pytest.mark.parametrize(("num_images", "shard_size", "num_workers"),
                         [(10, 2, 3), (1000, 256, 8), (1000, 256, 1), (7, 10, 4), (2049, 256, 8),
                          (5000, 7, 13)])
def test_makespan_matches_the_closed_form_for_equal_shards(num_images: int, shard_size: int,
                                                           num_workers: int) -> None:
    plan = Plan(num_images, shard_size, "l", "c")
    sizes = [b - a for a, b in (plan.shard_range(s) for s in range(plan.num_shards))]
    assert makespan_s(sizes, num_workers, 3.0) == pytest.approx(
        _closed_form_makespan(num_images, shard_size, num_workers, 3.0))


def test_projection_is_consistent() -> None:
    timing = SampleTiming(num_images=40, num_errors=1, labeling_s=20.0, num_warmup=8, warmup_s=5.0,
                          worker_start_s=30.0, worker="h:1", device="1 GPU")
    plan = Plan(100_000, 256, "l", "c")
    p = project(timing, plan, 8, 2.5)
    assert p.images_per_s_per_worker == 2.0
    assert p.labeling_s == pytest.approx(_closed_form_makespan(100_000, 256, 8, 2.0))
    assert p.overhead_s == 35.0 and p.wall_s == pytest.approx(p.labeling_s + 35.0)
    assert p.gpu_hours == pytest.approx(8 * p.wall_s / 3600) and p.cost == pytest.approx(2.5 * p.gpu_hours)
    # More workers: faster, about in proportion while there are shards for all (whole rounds of shards).
    p16 = project(timing, plan, 16, None)
    assert p16.labeling_s < p.labeling_s and p16.labeling_s == pytest.approx(p.labeling_s / 2, rel=0.05)
    assert p16.cost is None


def test_sample_is_seeded_distinct_and_capped() -> None:
    a = sample_ids(1000, 50, seed=0)
    assert a == sample_ids(1000, 50, seed=0) and a != sample_ids(1000, 50, seed=1)
    assert len(set(a)) == 50 and a == sorted(a) and a[0] >= 0 and a[-1] < 1000
    assert sample_ids(5, 50, seed=0) == [0, 1, 2, 3, 4]


def test_format_duration() -> None:
    assert format_duration(37.21) == "37.2 s"
    assert format_duration(252) == "4 min 12 s"
    assert format_duration(3600 + 5 * 60 + 59) == "1 h 05 min"


def test_sample_worker_times_scattered_tar_members(testdata: Path, tmp_path: Path) -> None:
    """The sample's ids are scattered over the listing: members of a tar read out of their runs."""
    photos = sorted(testdata.rglob("*.jpg"))
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for i, data in enumerate([p.read_bytes() for p in photos] + [b"corrupt: not a jpeg"]):
            info = tarfile.TarInfo(f"{i:04d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    listing = list_source(str(tmp_path / "shard-0.tar"), (".jpg",))
    ids = [0, 3, len(photos) - 1, len(photos)]  # the last member is the corrupt one
    uris, spans = sample_inputs(listing, ids)
    assert uris == [listing.uris[i].as_py() for i in ids] and len(spans) == len(ids)
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}}, ["job.batch_size=2"])
    n, seconds, errors, warmup_s = SampleWorker(cfg).time_sample(ids, uris, listing.kind, spans, 2)
    assert (n, errors) == (4, 1) and seconds > 0 and warmup_s > 0
