"""Price a job before running it: label a seeded random sample on one worker, project the whole listing.

``bmp-label plan ... --sample N`` (``jobs/cli.py``) runs it; Ray is ``jobs/ray_runner.py``'s
(``measure_sample``). The projection, stated in ``bmp-label plan --help`` and
docs/running-jobs.md#price-a-job-first-plan-sample:

- the sample: N images drawn at random with ``--seed`` from the listing; for a tar input (read front
  to back, members unknown before) the first N image members met in tars taken in a seeded random
  order;
- one worker, with the resources one of the job's K workers would get (one GPU; or its share of the
  cores when there is no GPU), builds the models (``workers start``), labels the first
  ``job.batch_size`` images of the sample once untimed (the warm-up: lazy CUDA init, autotuning,
  first reads), then labels the whole sample timed: read, decode, the loop, RLE encoding, as in a
  shard, without writing the parts (a real worker writes them while its next shard labels);
- per-worker rate ``r`` = sample images / timed seconds (warm-up excluded);
- the plan's shards (``job.shard_size`` images, the last one shorter; for a tar input one per tar,
  of ``size x`` the sample's images per byte, an estimate) go to K workers as each frees up
  (``jobs/dispatch.py``), each taking ``images / r`` seconds: the labeling time is that schedule's
  makespan; the wall time adds the measured workers start and warm-up (all workers start together);
- GPU-hours = K x wall / 3600 (a worker holds its GPU from start to the job's end, idle tail
  included); cost = GPU-hours x ``--gpu-hour-price``. With CPU workers they are worker-hours.

Not included: listing and planning the input, finalize (coco.json), storage slower than the sample's,
and nodes that are still being added by an autoscaler.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from bmp_core.config import BmpConfig
from bmp_core.io.sources import Container, InputListing, RawImage, stream_tar
from bmp_core.io.tars import TAR_ID_STRIDE
from bmp_core.output.plan import Plan
from jobs.actor_pool import RayWorker


@dataclass(frozen=True)
class SampleTiming:
    """What the sample worker measured."""

    num_images: int  # timed (the whole sample)
    num_errors: int  # of those, images that could not be labeled (still read and counted)
    labeling_s: float  # the timed run
    num_warmup: int  # images of the untimed warm-up run
    warmup_s: float
    worker_start_s: float  # the actor's start: process, models built (measured on the driver)
    worker: str  # host:pid
    device: str  # "1 GPU" or "N CPU"
    bytes_read: int | None = None  # a tar input: bytes of the tars the timed sample streamed

    @property
    def images_per_byte(self) -> float | None:
        """A tar input: the sample's images per byte of tar (estimates the tars' image counts)."""
        return self.num_images / self.bytes_read if self.bytes_read else None

    @property
    def images_per_s(self) -> float:
        return self.num_images / self.labeling_s if self.labeling_s > 0 else float("inf")


@dataclass(frozen=True)
class Projection:
    """The whole listing on ``num_workers`` workers at the sample's rate."""

    num_images: int  # an estimate for a tar input (``estimated``)
    num_shards: int
    num_workers: int
    images_per_s_per_worker: float
    labeling_s: float  # makespan of the shards
    overhead_s: float  # workers start + warm-up, once (in parallel)
    wall_s: float
    gpu_hours: float  # num_workers x wall
    cost: float | None  # gpu_hours x price, when a price is given
    estimated: bool = False  # num_images is the tars' bytes x the sample's images per byte


def sample_ids(num_images: int, sample_size: int, seed: int) -> list[int]:
    """``sample_size`` distinct image ids (all of them if fewer), drawn with ``seed``, ascending."""
    n = min(sample_size, num_images)
    return sorted(int(i) for i in np.random.default_rng(seed).choice(num_images, size=n, replace=False))


def sample_tars(listing: InputListing, seed: int) -> list[tuple[Container, int]]:
    """A tar input's tars in a seeded random order, each with the id of its first image member
    (``SampleWorker.time_tar_sample`` streams them in this order until it has the sample)."""
    order = np.random.default_rng(seed).permutation(len(listing.tars))
    return [(listing.tars[int(t)], int(t) * TAR_ID_STRIDE) for t in order]


def sample_inputs(listing: InputListing, image_ids: Sequence[int]) -> tuple[list[str], list[tuple[int, int]]]:
    """(URIs, spans) of the sampled ids, in id order, as ``SampleWorker.time_sample`` takes them."""
    uris = listing.uris.take(list(image_ids)).to_pylist()
    if listing.spans_start is None or listing.spans_end is None:
        return uris, []
    starts = listing.spans_start.take(list(image_ids)).to_pylist()
    ends = listing.spans_end.take(list(image_ids)).to_pylist()
    return uris, list(zip(starts, ends, strict=True))


def makespan_s(shard_sizes: Sequence[float], num_workers: int, images_per_s: float) -> float:
    """Seconds until the last shard is done when each free worker takes the next shard in order."""
    free_at = [0.0] * max(1, num_workers)
    for size in shard_sizes:
        heapq.heappush(free_at, heapq.heappop(free_at) + size / images_per_s)
    return max(free_at)


def project(timing: SampleTiming, plan: Plan, num_workers: int, gpu_hour_price: float | None,
            tar_bytes: Sequence[int] = ()) -> Projection:
    """The projection of the module doc for ``plan``'s shards (``tar_bytes``: a tar input's tar
    sizes, in shard order)."""
    if plan.is_tar:
        per_byte = timing.images_per_byte or 0.0
        sizes: list[float] = [size * per_byte for size in tar_bytes]
    else:
        sizes = [float(plan.shard_num_images(s) or 0) for s in range(plan.num_shards)]
    num_images = round(sum(sizes))
    rate = timing.images_per_s
    labeling = makespan_s(sizes, num_workers, rate) if sizes else 0.0
    overhead = timing.worker_start_s + timing.warmup_s
    wall = overhead + labeling
    gpu_hours = num_workers * wall / 3600.0
    return Projection(num_images, plan.num_shards, num_workers, rate, labeling, overhead, wall, gpu_hours,
                      None if gpu_hour_price is None else gpu_hours * gpu_hour_price, estimated=plan.is_tar)


def format_duration(seconds: float) -> str:
    """``1 h 05 min``, ``4 min 12 s``, ``37.2 s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"


class SampleWorker(RayWorker):
    """A ``RayWorker`` that times a sample instead of committing shards (no progress counter)."""

    def __init__(self, cfg: BmpConfig, num_threads: int | None = None, gpu_assigned: bool = False) -> None:
        super().__init__(cfg, None, num_threads, gpu_assigned)

    def time_sample(self, image_ids: Sequence[int], uris: Sequence[str], kind: str,
                    spans: Sequence[tuple[int, int]], num_warmup: int) -> tuple[int, float, int, float]:
        """Label the first ``num_warmup`` images untimed, then all of them timed.

        Returns:
            (images timed, seconds, of them errors, warm-up seconds).
        """
        t0 = time.perf_counter()
        self.label(image_ids[:num_warmup], uris[:num_warmup], kind=kind, spans=spans[:num_warmup])
        warmup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows, _ = self.label(image_ids, uris, kind=kind, spans=spans)
        return len(rows), time.perf_counter() - t0, sum(r.error is not None for r in rows), warmup_s

    def time_tar_sample(self, tars: Sequence[tuple[Container, int]], sample_size: int,
                        num_warmup: int) -> tuple[int, float, int, float, int]:
        """A tar input's sample: the first ``sample_size`` image members met streaming ``tars`` in
        order, the first ``num_warmup`` of them labeled once untimed first.

        Returns:
            (images timed, seconds, of them errors, warm-up seconds, bytes of tar they span).
        """
        exts = self.cfg.job.image_extensions
        t0 = time.perf_counter()
        self.label_stream(itertools.islice(_stream_all(tars, exts, {}), num_warmup))
        warmup_s = time.perf_counter() - t0
        reached: dict[str, int] = {}
        t0 = time.perf_counter()
        rows, _ = self.label_stream(itertools.islice(_stream_all(tars, exts, reached), sample_size))
        return (len(rows), time.perf_counter() - t0, sum(r.error is not None for r in rows), warmup_s,
                sum(reached.values()))


def _stream_all(tars: Sequence[tuple[Container, int]], extensions: Sequence[str],
                reached: dict[str, int]) -> Iterator[RawImage]:
    """The tars' images in order; ``reached[tar]`` follows the byte each tar has been read up to."""
    for tar, first in tars:
        for raw in stream_tar(tar, extensions, first):
            reached[tar.uri] = raw.end_offset or tar.size  # a tar that is not one: all of it was looked at
            yield raw
