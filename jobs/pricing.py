"""Price a job before running it: label a seeded random sample on one worker, project the whole listing.

``bmp-label plan ... --sample N`` (``jobs/cli.py``) runs it; Ray is ``jobs/ray_runner.py``'s
(``measure_sample``). The projection, stated in ``bmp-label plan --help`` and the README:

- one worker, with the resources one of the job's K workers would get (one GPU; or its share of the
  cores when there is no GPU), builds the models (``workers start``), labels the first
  ``job.batch_size`` images of the sample once untimed (the warm-up: lazy CUDA init, autotuning,
  first reads), then labels the whole sample timed: read, decode, the loop, RLE encoding, as in a
  shard, without writing the parts (a real worker writes them while its next shard labels);
- per-worker rate ``r`` = sample images / timed seconds (warm-up excluded);
- the plan's shards (``job.shard_size`` images, the last one shorter) go to K workers as each frees
  up (``jobs/dispatch.py``), each taking ``images / r`` seconds: the labeling time is that schedule's
  makespan; the wall time adds the measured workers start and warm-up (all workers start together);
- GPU-hours = K x wall / 3600 (a worker holds its GPU from start to the job's end, idle tail
  included); cost = GPU-hours x ``--gpu-hour-price``. With CPU workers they are worker-hours.

Not included: listing and planning the input, finalize (coco.json), storage slower than the sample's,
and nodes that are still being added by an autoscaler.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bmp_core.config import BmpConfig
from bmp_core.io.sources import InputListing
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

    @property
    def images_per_s(self) -> float:
        return self.num_images / self.labeling_s if self.labeling_s > 0 else float("inf")


@dataclass(frozen=True)
class Projection:
    """The whole listing on ``num_workers`` workers at the sample's rate."""

    num_images: int
    num_shards: int
    num_workers: int
    images_per_s_per_worker: float
    labeling_s: float  # makespan of the shards
    overhead_s: float  # workers start + warm-up, once (in parallel)
    wall_s: float
    gpu_hours: float  # num_workers x wall
    cost: float | None  # gpu_hours x price, when a price is given


def sample_ids(num_images: int, sample_size: int, seed: int) -> list[int]:
    """``sample_size`` distinct image ids (all of them if fewer), drawn with ``seed``, ascending."""
    n = min(sample_size, num_images)
    return sorted(int(i) for i in np.random.default_rng(seed).choice(num_images, size=n, replace=False))


def sample_inputs(listing: InputListing, image_ids: Sequence[int]) -> tuple[list[str], list[tuple[int, int]]]:
    """(URIs, spans) of the sampled ids, in id order, as ``SampleWorker.time_sample`` takes them."""
    uris = listing.uris.take(list(image_ids)).to_pylist()
    if listing.spans_start is None or listing.spans_end is None:
        return uris, []
    starts = listing.spans_start.take(list(image_ids)).to_pylist()
    ends = listing.spans_end.take(list(image_ids)).to_pylist()
    return uris, list(zip(starts, ends, strict=True))


def makespan_s(shard_sizes: Sequence[int], num_workers: int, images_per_s: float) -> float:
    """Seconds until the last shard is done when each free worker takes the next shard in order."""
    free_at = [0.0] * max(1, num_workers)
    for size in shard_sizes:
        heapq.heappush(free_at, heapq.heappop(free_at) + size / images_per_s)
    return max(free_at)


def project(timing: SampleTiming, plan: Plan, num_workers: int,
            gpu_hour_price: float | None) -> Projection:
    """The projection of the module doc for ``plan``'s shards."""
    sizes = [stop - start for start, stop in (plan.shard_range(s) for s in range(plan.num_shards))]
    rate = timing.images_per_s
    labeling = makespan_s(sizes, num_workers, rate) if sizes else 0.0
    overhead = timing.worker_start_s + timing.warmup_s
    wall = overhead + labeling
    gpu_hours = num_workers * wall / 3600.0
    return Projection(plan.num_images, plan.num_shards, num_workers, rate, labeling, overhead, wall,
                      gpu_hours,
                      None if gpu_hour_price is None else gpu_hours * gpu_hour_price)


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
