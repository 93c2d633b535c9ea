"""What a run did: the typed record ``run_job`` returns and writes as ``OUT/run.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bmp_core.output.plan import Plan
from jobs.finalize import FinalCounts
from jobs.worker import ShardReport, WorkerInfo


@dataclass(frozen=True)
class WorkerLoad:
    """How busy one worker's models were: the share of their time spent waiting for decoded input is
    the proxy for an idle GPU (decoding or reading too slow for the models; docs/performance.md)."""

    worker: str  # host:pid
    shards: int
    images: int
    models_s: float  # time its shards held the models
    input_wait_s: float  # of which waiting for the next decoded image

    @property
    def input_wait_share(self) -> float:
        return self.input_wait_s / self.models_s if self.models_s > 0 else 0.0


def worker_loads(reports: list[ShardReport]) -> tuple[WorkerLoad, ...]:
    """Per worker (in first-report order), the sums of its committed shards' reports."""
    by_worker: dict[str, list[ShardReport]] = {}
    for r in reports:
        by_worker.setdefault(r.worker, []).append(r)
    return tuple(WorkerLoad(w, len(rs), sum(r.num_images for r in rs), sum(r.models_s for r in rs),
                            sum(r.input_wait_s for r in rs)) for w, rs in by_worker.items())


@dataclass(frozen=True)
class LabelingStats:
    """The labeling phase of a run (all zero / empty when every shard was already committed).

    Attributes:
        failed_attempts: shard attempts that failed and were retried.
        workers: each worker's ``info()``.
        workers_start_s: Ray start/connect + actors up (models built).
        labeling_s: dispatch: workers ready -> last shard committed.
        dispatch_unix: [start, end] of ``labeling_s``, wall clock; None when nothing was labeled.
        worker_loads: per worker, its models' time and how much of it they waited for input.
    """

    failed_attempts: int = 0
    workers: tuple[WorkerInfo, ...] = ()
    workers_start_s: float = 0.0
    labeling_s: float = 0.0
    dispatch_unix: tuple[float, float] | None = None
    worker_loads: tuple[WorkerLoad, ...] = ()


@dataclass(frozen=True)
class RunCounts(FinalCounts):
    """``FinalCounts`` of the output plus what this run did with the shards."""

    shards: int = 0
    shards_skipped: int = 0  # already committed by an earlier run
    shards_labeled: int = 0
    failed_attempts: int = 0


@dataclass(frozen=True)
class RunTimings:
    """Seconds spent in each phase of a run."""

    listing: float
    workers_start: float
    labeling: float
    shutdown: float  # shutting the actors (and an embedded Ray) down
    finalize: float
    wall: float


@dataclass(frozen=True)
class RunRecord:
    """``OUT/run.json``.

    Attributes:
        throughput_images_per_s: steady-state rate over the dispatch phase (what more images would
            cost per image); None when nothing was labeled.
        throughput_images_per_s_wall: end to end, listing, Ray and model start, finalize included.
        worker_loads: per worker of this run, its models' time and input wait (``WorkerLoad``).
    """

    config: dict[str, Any]
    versions: dict[str, str]
    input: str
    output: str
    plan: Plan
    counts: RunCounts
    workers: tuple[WorkerInfo, ...]
    timings_s: RunTimings
    throughput_images_per_s: float | None
    throughput_images_per_s_wall: float | None
    started_unix: float
    dispatch_unix: tuple[float, float] | None = field(default=None)
    worker_loads: tuple[WorkerLoad, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``run.json``; ``plan`` as in ``plan.json``)."""
        out = asdict(self)
        out["plan"] = self.plan.to_dict()
        out["workers"] = [asdict(w) for w in self.workers]
        out["dispatch_unix"] = None if self.dispatch_unix is None else list(self.dispatch_unix)
        out["worker_loads"] = [{**asdict(w), "input_wait_share": w.input_wait_share} for w in self.worker_loads]
        return out
