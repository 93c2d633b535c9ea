"""The sample run's arithmetic (``jobs/pricing.py``): the sample, the schedule, the projection."""

from __future__ import annotations

import math
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bmp_core.config import config_from_dict
from bmp_core.io.sources import list_source
from bmp_core.io.tars import TAR_ID_STRIDE
from bmp_core.output.plan import Plan
from jobs.pricing import (
    SampleTiming,
    SampleWorker,
    format_duration,
    makespan_s,
    project,
    sample_ids,
    sample_inputs,
    sample_tars,
)
from tests.tar_files import write_tar


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


def test_sample_worker_times_scattered_parquet_rows(testdata: Path, tmp_path: Path) -> None:
    """The sample's ids are scattered over the listing: rows of different row groups."""
    photos = sorted(testdata.rglob("*.jpg"))
    images = [p.read_bytes() for p in photos] + [b"corrupt: not a jpeg"]
    pq.write_table(pa.table({"image": images}), tmp_path / "t.parquet", row_group_size=2)
    listing = list_source(str(tmp_path / "t.parquet"), (".jpg",), "image")
    ids = [0, 3, len(photos) - 1, len(photos)]  # the last row is the corrupt one
    uris, spans = sample_inputs(listing, ids)
    assert uris == [listing.uris[i].as_py() for i in ids] and len(spans) == len(ids)
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}},
                           ["job.batch_size=2", "job.image_column=image"])
    n, seconds, errors, warmup_s = SampleWorker(cfg).time_sample(ids, uris, listing.kind, spans, 2)
    assert (n, errors) == (4, 1) and seconds > 0 and warmup_s > 0


def test_a_tar_sample_streams_seeded_tars_and_counts_the_bytes_it_spans(tmp_path: Path) -> None:
    from bmp_core.testing.images import SyntheticImage, write_synthetic_images

    photos = write_synthetic_images(tmp_path / "photos", tuple(SyntheticImage(f"p{i}.jpg", 160 + 8 * i, 120, 1, i)
                                                                for i in range(4)))
    for t in range(3):
        write_tar(tmp_path / f"s-{t}.tar", [(f"{t}{i}.jpg", p.read_bytes()) for i, p in enumerate(photos)] +
                   [(f"{t}9.jpg", b"corrupt: not a jpeg")])
    listing = list_source(str(tmp_path / "s-{0..2}.tar"), (".jpg",))
    order = sample_tars(listing, seed=3)
    assert order == sample_tars(listing, seed=3) and sorted(t.uri for t, _ in order) == listing.uris.to_pylist()
    assert all(first == listing.uris.to_pylist().index(t.uri) * TAR_ID_STRIDE for t, first in order)
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}}, ["job.batch_size=2"])
    n, seconds, errors, warmup_s, bytes_read = SampleWorker(cfg).time_tar_sample(order, 7, 2)
    # 7 images: the first tar's 5 (its corrupt member included), then 2 of the second tar's.
    assert (n, errors) == (7, 1) and seconds > 0 and warmup_s > 0
    with tarfile.open(order[0][0].uri) as tar:
        last = tar.getmembers()[-1]
        first_whole = last.offset_data + last.size
    with tarfile.open(order[1][0].uri) as tar:
        second = tar.getmembers()[1]
        second_part = second.offset_data + second.size
    assert bytes_read == first_whole + second_part


def test_a_tar_projection_estimates_each_tar_from_its_size() -> None:
    timing = SampleTiming(num_images=50, num_errors=0, labeling_s=25.0, num_warmup=8, warmup_s=5.0,
                          worker_start_s=30.0, worker="h:1", device="1 GPU", bytes_read=50 * 100_000)
    plan = Plan(None, 256, "l", "c", num_tars=3)
    p = project(timing, plan, 2, None, tar_bytes=[100_000_000, 100_000_000, 50_000_000])
    assert p.estimated and p.num_images == 2500 and p.num_shards == 3  # 1000 + 1000 + 500
    assert p.labeling_s == pytest.approx(makespan_s([1000, 1000, 500], 2, 2.0)) == pytest.approx(750.0)
