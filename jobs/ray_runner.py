"""Run a job: plan on the driver, label shards on Ray actors, finish the output.

Local mode (no address, no ``RAY_ADDRESS``) starts an embedded Ray on this machine; on a cluster
(``ray job submit``, or ``--address``) the same code connects to it: one actor per GPU (or two with
``job.gpus_per_worker: 0.5``, so one's CPU work overlaps the other's GPU work), or ``--num-workers``
CPU actors when there is no GPU (``jobs/actor_pool.py``: CPU shares, torch threads), fed and retried
by ``jobs/dispatch.py``. This is the one module of ``jobs/`` that imports Ray.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from bmp_core.config import BmpConfig, config_to_dict
from bmp_core.io.given_boxes import with_absolute_paths
from bmp_core.io.sources import Container, InputListing
from bmp_core.io.uris import describe_storage
from bmp_core.output import layout
from bmp_core.output.commits import committed_markers
from bmp_core.output.plan import Plan, freeze_plan
from bmp_core.output.store import OutputStore
from jobs.actor_pool import (
    FORWARDED_ENV,
    ActorPool,
    GpuUnavailableError,
    JobError,
    node_cpu_share,
    node_gpu_cpu_share,
    startup_error,
)
from jobs.dispatch import dispatch
from jobs.finalize import finalize_output
from jobs.lock import OutputLock
from jobs.path_probe import PathProbe, write_probes
from jobs.planner import file_digests, list_job_input, listing_table, make_plan
from jobs.pricing import SampleTiming, SampleWorker, sample_inputs
from jobs.run_record import LabelingStats, RunCounts, RunRecord, RunTimings, worker_loads
from jobs.staging import prepare_weights, stage_location
from jobs.worker import ShardReport

logger = logging.getLogger(__name__)

__all__ = ["JobError", "RunOptions", "measure_sample", "prepare_output", "run_job"]


@dataclass(frozen=True)
class RunOptions:
    input_uri: str
    output_uri: str
    num_workers: int | None = None  # None: one per GPU, else one
    force: bool = False
    break_lock: bool = False
    address: str | None = None  # None: RAY_ADDRESS, else an embedded local Ray
    progress: bool = True
    lock_settle_s: float = 1.0


def prepare_output(cfg: BmpConfig, opts: RunOptions, store: OutputStore) -> tuple[Plan, InputListing]:
    """List the input, then freeze (or check) the plan in the output. Returns (plan, sorted listing)."""
    logger.info("listing %s", describe_storage(opts.input_uri))
    files = file_digests(cfg)
    listing = list_job_input(cfg, opts.input_uri, store, files)
    plan = make_plan(cfg, listing, files)
    freeze_plan(store, plan, listing_table(listing), cfg, opts.force)
    return plan, listing


def run_job(cfg: BmpConfig, opts: RunOptions) -> RunRecord:
    """Label ``opts.input_uri`` into ``opts.output_uri``; returns what run.json records.

    Raises:
        CheckpointError: a checkpoint is unreachable, has the wrong sha256 or does not fit its model
            (before any worker starts: ``jobs/staging.py``).
        OutputStateError: the output is locked, or holds another plan (without ``force``).
        InputError: the input cannot be listed.
        JobError: a shard failed ``job.max_attempts`` times, or the workers could not start.
    """
    t_start = time.time()
    cfg = with_absolute_paths(cfg)  # the given boxes the workers read, wherever they run
    store = OutputStore(opts.output_uri)
    opts = replace(opts, output_uri=store.uri)  # a local output as an absolute path, for the workers
    lock = OutputLock(store, cfg.job.lock_ttl_s, opts.lock_settle_s)
    lock.acquire(opts.break_lock)
    try:
        # Weights before workers (jobs/staging.py): a bad checkpoint stops the job here, before Ray
        # starts and before the plan is frozen (a fixed checkpoint URL is then not "another config").
        worker_cfg = prepare_weights(cfg, stage_location(cfg, store, _is_cluster(opts.address)))
        t0 = time.perf_counter()
        plan, uris = prepare_output(cfg, opts, store)
        listing_s = time.perf_counter() - t0
        done = committed_markers(store, plan.plan_id)
        todo = [s for s in range(plan.num_shards) if s not in done]
        logger.info("%s in %d shards; %d already committed, %d to do",
                    f"{plan.num_tars} tar file(s)" if plan.is_tar else f"{plan.num_images} images",
                    plan.num_shards, len(done), len(todo))
        t0 = time.perf_counter()
        # Before any worker starts: the token a local output's workers must find (jobs/path_probe.py).
        probes = write_probes(store, uris) if todo else ()
        stats = _label_shards(worker_cfg, opts, plan, uris, todo, lock, probes) if todo else LabelingStats()
        labeling_wall_s = time.perf_counter() - t0  # workers start + labeling + shutting them down
        t0 = time.perf_counter()
        final = finalize_output(store, plan, cfg.job.coco_keypoint_thr)
        finalize_s = time.perf_counter() - t0
        labeled_now = final.images - sum(m.num_images for m in done.values())
        wall_s = time.time() - t_start
        run = RunRecord(
            config=config_to_dict(cfg),
            versions=_versions(),
            input=opts.input_uri,
            output=store.uri,
            plan=plan,
            counts=RunCounts(**asdict(final), shards=plan.num_shards, shards_skipped=len(done),
                             shards_labeled=len(todo), failed_attempts=stats.failed_attempts),
            workers=stats.workers,
            timings_s=RunTimings(listing=listing_s, workers_start=stats.workers_start_s, labeling=stats.labeling_s,
                                 shutdown=labeling_wall_s - stats.workers_start_s - stats.labeling_s,
                                 finalize=finalize_s, wall=wall_s),
            throughput_images_per_s=(labeled_now / stats.labeling_s
                                     if labeled_now and stats.labeling_s > 0 else None),
            throughput_images_per_s_wall=labeled_now / wall_s if labeled_now else None,
            started_unix=t_start,
            dispatch_unix=stats.dispatch_unix,
            worker_loads=stats.worker_loads,
        )
        store.write_json(layout.RUN_JSON, run.to_dict())
        return run
    finally:
        lock.release()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("bmp-label", "numpy", "pyarrow", "fsspec", "s3fs", "ray", "pycocotools", "pillow",
                "torch", "mmdet", "mmpose", "sam2"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    return out


def _is_cluster(address: str | None) -> bool:
    """Whether the job runs on a Ray cluster (an address given or in ``RAY_ADDRESS``), not a local Ray."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def _init_ray(opts: RunOptions) -> tuple[Any, bool]:
    """Connect to (or start) Ray. Returns (ray, whether this call started it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep an embedded Ray on 127.0.0.1
    import ray

    if ray.is_initialized():
        return ray, False
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # "local" starts a fresh embedded Ray: a bare ray.init() would join whatever cluster
        # /tmp/ray/ray_current_cluster names, even a dead one left by `ray start`.
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    return ray, True


def _label_shards(cfg: BmpConfig, opts: RunOptions, plan: Plan, uris: Any, todo: list[int],
                  lock: OutputLock, probes: tuple[PathProbe, ...] = ()) -> LabelingStats:
    t_start = time.perf_counter()
    ray, started = _init_ray(opts)
    try:
        res = worker_resources(ray, cfg, opts.num_workers)
        num_workers = res.num_workers
        pool = ActorPool(ray, cfg, num_workers, res.num_gpus, cluster=_is_cluster(opts.address),
                         num_cpus=res.num_cpus)
        try:
            workers = pool.wait_ready()
            pool.check_paths(probes)  # every worker sees the local output / input, or nothing is labeled
            workers_start_s = time.perf_counter() - t_start
            logger.info("%d worker(s) ready in %.1f s (%s each): %s", num_workers, workers_start_s,
                        res.describe(), "; ".join(w.summary for w in workers))
            t0, dispatch_start_unix = time.perf_counter(), time.time()
            reports: list[ShardReport] = []
            failed = dispatch(ray, pool, cfg, opts.output_uri, plan, uris, todo, lock, opts.progress, reports)
            labeling_s = time.perf_counter() - t0
        finally:
            pool.shutdown()
        return LabelingStats(failed_attempts=failed, workers=tuple(workers), workers_start_s=workers_start_s,
                             labeling_s=labeling_s,
                             dispatch_unix=(dispatch_start_unix, dispatch_start_unix + labeling_s),
                             worker_loads=worker_loads(reports))
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class WorkerResources:
    """What each job worker gets from Ray, and how many there are."""

    num_workers: int
    num_gpus: float  # per worker: job.gpus_per_worker, or 0 for CPU workers
    num_cpus: float  # per worker: its share of its node's cores (or job.gpu_worker_cpus)

    def describe(self) -> str:
        return f"{self.num_gpus:g} GPU + {self.num_cpus:g} CPU" if self.num_gpus else f"{self.num_cpus:g} CPU"


def worker_resources(ray: Any, cfg: BmpConfig, num_workers: int | None) -> WorkerResources:
    """The job's workers on this cluster: one per ``job.gpus_per_worker`` of GPU when it has GPUs (and
    ``models.device`` is not cpu), else ``num_workers`` (default 1) CPU workers sharing the cores.

    Raises:
        GpuUnavailableError: ``models.device`` cannot work on these workers (``check_device_for_workers``).
    """
    num_gpus_total = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = num_gpus_total > 0 and cfg.models.device != "cpu"
    check_device_for_workers(cfg, use_gpu)
    if not use_gpu:
        workers = num_workers or 1
        return WorkerResources(workers, 0.0, node_cpu_share(ray, workers))
    share = cfg.job.gpus_per_worker
    workers = num_workers or math.floor(num_gpus_total / share + 1e-9)
    return WorkerResources(workers, share, cfg.job.gpu_worker_cpus or node_gpu_cpu_share(ray, share))


def check_device_for_workers(cfg: BmpConfig, use_gpu: bool) -> None:
    """Refuse, before any worker starts, a ``models.device`` that every worker would refuse.

    Ray gives each GPU actor one GPU and makes it the only one the actor sees (``CUDA_VISIBLE_DEVICES``),
    as ``cuda:0``: ``cuda:1`` would fail on every worker, and ``cuda`` without a GPU in the cluster
    would too.
    """
    device = cfg.models.device
    if not cfg.models.uses_torch_device or not device.startswith("cuda"):
        return
    if not use_gpu:
        raise GpuUnavailableError(f"models.device={device!r} but the Ray cluster has no GPU",
                          hint="use models.device=auto or cpu, or a cluster whose nodes have GPUs")
    if device not in ("cuda", "cuda:0"):
        raise GpuUnavailableError(f"models.device={device!r}: under Ray each worker sees only the GPU it was given, "
                          "as cuda:0", hint="use models.device=auto or cuda (one worker per GPU is started for you)")


def measure_sample(cfg: BmpConfig, listing: InputListing, image_ids: list[int], num_workers: int | None,
                   address: str | None = None, tar_sample: tuple[list[tuple[Container, int]], int] | None = None
                   ) -> tuple[SampleTiming, int]:
    """Time one worker on ``image_ids`` (``jobs/pricing.py``): the resources one of ``num_workers``
    job workers would get (one GPU each when the cluster has GPUs, else their share of the cores).
    A tar input: ``tar_sample`` = (the tars in sample order, the sample size) instead of ids.

    Returns:
        (the timing, the number of workers the projection is for: ``num_workers`` or the job's default).
    """
    prepare_weights(cfg, None)  # checked on the driver before the sample worker starts; nothing staged
    ray, started = _init_ray(RunOptions("", "", address=address))
    try:
        res = worker_resources(ray, cfg, num_workers)
        num_workers = res.num_workers
        uris, spans = sample_inputs(listing, image_ids) if tar_sample is None else ([], [])
        t0 = time.perf_counter()
        options: dict[str, Any] = {"num_gpus": res.num_gpus, "num_cpus": res.num_cpus, "max_restarts": 0}
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        if env and (address or os.environ.get("RAY_ADDRESS")):
            options["runtime_env"] = {"env_vars": env}  # as the job's workers get them (actor_pool.py)
        num_threads = max(1, math.floor(res.num_cpus)) if res.num_cpus > 0 else None
        actor = ray.remote(SampleWorker).options(**options).remote(cfg, num_threads, res.num_gpus > 0)
        try:
            try:
                info = ray.get(actor.info.remote())
            except ray.exceptions.RayError as err:
                raise startup_error(err, "the sample worker") from err
            start_s = time.perf_counter() - t0
            bytes_read = None
            if tar_sample is not None:
                num_warmup = min(cfg.job.batch_size, tar_sample[1])
                timed = actor.time_tar_sample.remote(tar_sample[0], tar_sample[1], num_warmup)
                n, seconds, errors, warmup_s, bytes_read = ray.get(timed)
                num_warmup = min(num_warmup, n)
            else:
                num_warmup = min(cfg.job.batch_size, len(image_ids))
                timed = actor.time_sample.remote(image_ids, uris, listing.kind, spans, num_warmup)
                n, seconds, errors, warmup_s = ray.get(timed)
        finally:
            ray.kill(actor, no_restart=True)
        return SampleTiming(n, errors, seconds, num_warmup, warmup_s, start_s,
                            f"{info.host}:{info.pid}", res.describe(), bytes_read), num_workers
    finally:
        if started:
            ray.shutdown()
