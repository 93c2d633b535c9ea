"""The sample run's arithmetic (``jobs/pricing.py``): the sample, the schedule, the projection."""

from __future__ import annotations

import math

import pytest

from bmp_core.output.plan import Plan
from jobs.pricing import SampleTiming, format_duration, makespan_s, project, sample_ids


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
    assert len(set(a)) == 50 and a == sorted(a) and 0 <= a[0] and a[-1] < 1000
    assert sample_ids(5, 50, seed=0) == [0, 1, 2, 3, 4]


def test_format_duration() -> None:
    assert format_duration(37.21) == "37.2 s"
    assert format_duration(252) == "4 min 12 s"
    assert format_duration(3600 + 5 * 60 + 59) == "1 h 05 min"
