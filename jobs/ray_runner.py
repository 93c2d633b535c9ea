"""Run a job: plan on the driver, label shards on Ray actors, finish the output.

Local mode (no address, no ``RAY_ADDRESS``) starts an embedded Ray on this machine; on a cluster
(``ray job submit``, or ``--address``) the same code connects to it. One actor per GPU
(``num_gpus`` = ``job.gpus_per_worker``, 1; 0.5 puts two on each GPU so one's CPU work overlaps the
other's GPU work), or ``--num-workers`` CPU actors when there is no GPU. CPU actors share the
cluster's cores (``num_cpus`` = their share, so any number of them can start and one alone gets every
core); GPU actors get their node's cores split among its GPU workers (or ``job.gpu_worker_cpus``).
Either way torch's thread count is set to match. Each actor has up to
``job.queue_depth`` shards in flight and runs that many threads, so the next shard labels while the
previous one writes its parts and commit marker. A shard
whose attempt fails (the actor died, or the worker raised) is given to a fresh actor, up to
``job.max_attempts`` attempts; a shard commits at most one set of parts (commit.py), so a retried
or duplicated attempt never duplicates rows.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import platform
import sys
import time
import uuid
from collections import Counter, deque
from dataclasses import asdict, dataclass, replace
from typing import Any

from tqdm.auto import tqdm

from bmp_core.config import BmpConfig, config_to_dict, dump_config
from bmp_core.io.uris import describe_storage, list_input
from jobs.commit import OutputStore, committed_markers, freeze_plan
from jobs.finalize import finalize_output
from jobs.lock import OutputLock
from jobs.planner import Plan, file_digests, listing_table, make_plan, shard_uris
from jobs.worker import BmpWorker, ShardReport, ShardTask

logger = logging.getLogger(__name__)

# Non-secret AWS settings forwarded to actors on a cluster (credentials stay with the nodes).
_FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")


class JobError(RuntimeError):
    """The job cannot go on (a shard failed every attempt, workers could not start)."""


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


def prepare_output(cfg: BmpConfig, opts: RunOptions, store: OutputStore) -> tuple[Plan, Any]:
    """List the input, then freeze (or check) the plan in the output. Returns (plan, sorted URIs)."""
    logger.info("listing %s", describe_storage(opts.input_uri))
    uris = list_input(opts.input_uri, cfg.job.image_extensions)
    plan = make_plan(cfg, uris, file_digests(cfg))
    freeze_plan(store, plan, listing_table(uris), dump_config(cfg), config_to_dict(cfg), opts.force)
    return plan, uris


def run_job(cfg: BmpConfig, opts: RunOptions) -> dict[str, Any]:
    """Label ``opts.input_uri`` into ``opts.output_uri``; returns what run.json records.

    Raises:
        OutputStateError: the output is locked, or holds another plan (without ``force``).
        InputError: the input cannot be listed.
        JobError: a shard failed ``job.max_attempts`` times, or the workers could not start.
    """
    t_start = time.time()
    store = OutputStore(opts.output_uri)
    opts = replace(opts, output_uri=store.uri)  # a local output as an absolute path, for the workers
    lock = OutputLock(store, cfg.job.lock_ttl_s, opts.lock_settle_s)
    lock.acquire(opts.break_lock)
    try:
        t0 = time.perf_counter()
        plan, uris = prepare_output(cfg, opts, store)
        listing_s = time.perf_counter() - t0
        done = committed_markers(store, plan.plan_id)
        todo = [s for s in range(plan.num_shards) if s not in done]
        logger.info("%d images in %d shards; %d already committed, %d to do",
                    plan.num_images, plan.num_shards, len(done), len(todo))
        t0 = time.perf_counter()
        stats: dict[str, Any] = {"failed_attempts": 0, "workers": [], "labeling_s": 0.0, "workers_start_s": 0.0,
                                 "dispatch_unix": None}
        if todo:
            stats = _label_shards(cfg, opts, plan, uris, todo, lock)
        labeling_s = stats["labeling_s"]  # dispatch: workers ready -> last shard committed
        workers_start_s = stats["workers_start_s"]  # Ray start/connect + actors up (models built)
        labeling_wall_s = time.perf_counter() - t0  # the above + shutting the actors (and Ray) down
        t0 = time.perf_counter()
        counts = finalize_output(store, plan, cfg.job.coco_keypoint_thr)
        labeled_now = sum(plan.shard_range(s)[1] - plan.shard_range(s)[0] for s in todo)
        run = {
            "config": config_to_dict(cfg),
            "versions": _versions(),
            "input": opts.input_uri,
            "output": store.uri,
            "plan": plan.to_dict(),
            "counts": {**counts, "shards": plan.num_shards, "shards_skipped": len(done),
                       "shards_labeled": len(todo), "failed_attempts": stats["failed_attempts"]},
            "workers": stats["workers"],
            "timings_s": {"listing": listing_s, "workers_start": workers_start_s, "labeling": labeling_s,
                          "shutdown": labeling_wall_s - workers_start_s - labeling_s,
                          "finalize": time.perf_counter() - t0, "wall": time.time() - t_start},
            # Steady-state rate over the dispatch phase (what more images would cost per image) ...
            "throughput_images_per_s": labeled_now / labeling_s if labeled_now and labeling_s > 0 else None,
            # ... and end to end, listing, Ray and model start, finalize included.
            "throughput_images_per_s_wall": labeled_now / (time.time() - t_start) if labeled_now else None,
            "started_unix": t_start,
            "dispatch_unix": stats["dispatch_unix"],  # [start, end] of the labeling timing, wall clock
        }
        store.write_json("run.json", run)
        return run
    finally:
        lock.release()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("bmp-label", "numpy", "pyarrow", "fsspec", "s3fs", "ray", "pycocotools", "pillow",
                "torch", "mmdet", "mmpose", "sam2"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


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


class _ProgressCounter:
    """Images done per shard attempt, reported by workers as they go (a tiny Ray actor)."""

    def __init__(self) -> None:
        self.done: dict[int, int] = {}

    def add(self, shard: int, num_images: int) -> None:
        self.done[shard] = self.done.get(shard, 0) + num_images

    def reset(self, shard: int) -> None:
        self.done.pop(shard, None)  # a failed attempt's images will be done again

    def total(self) -> int:
        return sum(self.done.values())


class _RayWorker(BmpWorker):
    """``BmpWorker`` that reports per-image progress to the driver's counter."""

    def __init__(self, cfg: BmpConfig, counter: Any, num_threads: int | None = None) -> None:
        super().__init__(cfg)
        self._counter = counter
        self.num_threads = _set_torch_threads(num_threads)
        _warm_up_arrow()

    def info(self) -> dict[str, object]:
        return {**super().info(), "torch_threads": self.num_threads}

    def process_shard_reporting(self, task: ShardTask) -> ShardReport:
        return self.process_shard(task, lambda n: self._counter.add.remote(task.shard_id, n))


def _set_torch_threads(num_threads: int | None) -> int | None:
    """Match torch's intra-op threads to this actor's CPU share, when the models imported torch.

    Ray sets ``OMP_NUM_THREADS`` to floor(num_cpus) (at least 1) for a worker, but torch may have been
    imported, or its pool sized, before that mattered; set it explicitly. Never imports torch itself
    (fake models and the lite stack do not need it). Returns the thread count in effect, or None.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if num_threads:
        torch.set_num_threads(num_threads)
    return int(torch.get_num_threads())


def _warm_up_arrow() -> None:
    """Pay pyarrow's lazy pandas import (~1 s) while the worker starts, not in its first shard."""
    import numpy as np
    import pyarrow as pa

    pa.array(np.zeros(1, np.float32))


def cpu_share(node_cpus: list[float], num_workers: int) -> float:
    """CPUs per CPU actor so that ``num_workers`` actors fit on nodes with ``node_cpus`` cores.

    The largest share that packs, as Ray accepts it: a whole number when >= 1, else a fraction with at
    most 4 decimals (rounded down). One worker on one 2-core node gets 2; four get 0.5 each.
    """
    caps = [c for c in node_cpus if c > 0]
    if not caps or num_workers < 1:
        return 0.0
    best = 0.0
    for cap in caps:  # candidate shares: a node's cores split k ways
        for k in range(1, num_workers + 1):
            share = cap / k
            share = float(math.floor(share)) if share >= 1 else math.floor(share * 10_000) / 10_000
            if share > best and sum(math.floor(c / share + 1e-9) for c in caps) >= num_workers:
                best = share
                break  # larger k only gives smaller shares on this node
    return best


def gpu_worker_cpu_share(nodes: list[tuple[float, float]], gpus_per_worker: float) -> float:
    """CPUs per GPU worker when each node's cores are split among the GPU workers it can hold.

    Args:
        nodes: (CPUs, GPUs) of each node; nodes without a GPU hold no GPU worker.
        gpus_per_worker: GPU share of one worker (1: one per GPU, 0.5: two per GPU).

    Returns:
        The smallest node's share (so a worker fits wherever Ray puts it), rounded down as Ray accepts
        it (a whole number when >= 1, else 4 decimals); 0.0 when no node has a GPU and a CPU.
    """
    shares = []
    for cpus, gpus in nodes:
        workers = math.floor(gpus / gpus_per_worker + 1e-9)
        if workers >= 1 and cpus > 0:
            shares.append(cpu_share([cpus], workers))
    return min(shares) if shares else 0.0


class _ActorPool:
    """Slots of actors; a slot's actor is replaced when one of its shards fails."""

    def __init__(self, ray: Any, cfg: BmpConfig, num_workers: int, num_gpus: float, cluster: bool,
                 num_cpus: float = 1.0) -> None:
        self.ray, self.cfg = ray, cfg
        self.run_token = uuid.uuid4().hex[:8]
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        # GPU workers too get CPUs and as many torch threads: their decoding, pre/post-processing and the
        # loop's own work run on the CPU between GPU calls, and with num_cpus=0 Ray would pin them to one.
        self.num_threads = max(1, math.floor(num_cpus)) if num_cpus > 0 else None
        # max_concurrency: the queued shard starts labeling while the previous one commits (the
        # worker serialises the models itself, see jobs/worker.py).
        options: dict[str, Any] = {"num_gpus": num_gpus, "num_cpus": num_cpus, "max_restarts": 0,
                                   "max_concurrency": max(1, cfg.job.queue_depth)}
        if cluster and env:
            options["runtime_env"] = {"env_vars": env}
        self.remote_cls = ray.remote(_RayWorker)
        self.counter = ray.remote(num_cpus=0)(_ProgressCounter).remote()
        self.options = options
        self.generation: Counter[int] = Counter()
        self.actors = {slot: self._new_actor(slot) for slot in range(num_workers)}

    def _new_actor(self, slot: int) -> Any:
        self.generation[slot] += 1
        name = f"bmp-worker-{self.run_token}-{slot}-{self.generation[slot]}"
        return self.remote_cls.options(name=name, **self.options).remote(self.cfg, self.counter, self.num_threads)

    def wait_ready(self) -> list[dict[str, Any]]:
        try:
            return self.ray.get([a.info.remote() for a in self.actors.values()])
        except self.ray.exceptions.RayError as err:  # the constructor raised: models could not be built
            lines = [line for line in str(err).splitlines() if line.strip()]
            cause = lines[-1] if lines else type(err).__name__  # the original exception's own line
            raise JobError(f"workers could not start, building the models failed: {cause}\n"
                           "Check the models section of the config (checkpoints, device) and that the "
                           f"model packages are installed (pip install 'bmp-label[models]').\n\n{err}") from err

    def replace(self, slot: int) -> None:
        self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._new_actor(slot)

    def shutdown(self) -> None:
        for actor in [*self.actors.values(), self.counter]:
            self.ray.kill(actor, no_restart=True)


def _label_shards(cfg: BmpConfig, opts: RunOptions, plan: Plan, uris: Any, todo: list[int],
                  lock: OutputLock) -> dict[str, Any]:
    t_start = time.perf_counter()
    ray, started = _init_ray(opts)
    try:
        num_gpus_total = int(ray.cluster_resources().get("GPU", 0))
        use_gpu = num_gpus_total > 0 and cfg.models.device != "cpu"
        gpu_share = cfg.job.gpus_per_worker
        num_workers = opts.num_workers or (math.floor(num_gpus_total / gpu_share + 1e-9) if use_gpu else 1)
        if use_gpu:
            num_cpus = cfg.job.gpu_worker_cpus or _gpu_cpu_share(ray, gpu_share)
        else:
            num_cpus = _cpu_share(ray, num_workers)
        pool = _ActorPool(ray, cfg, num_workers, gpu_share if use_gpu else 0,
                          cluster=bool(opts.address or os.environ.get("RAY_ADDRESS")), num_cpus=num_cpus)
        try:
            workers = pool.wait_ready()
            workers_start_s = time.perf_counter() - t_start
            logger.info("%d worker(s) ready in %.1f s (%s): %s", num_workers, workers_start_s,
                        f"{gpu_share:g} GPU + {num_cpus:g} CPU each" if use_gpu else f"{num_cpus:g} CPU each",
                        workers)
            t0, dispatch_start_unix = time.perf_counter(), time.time()
            failed = _dispatch(ray, pool, cfg, opts, plan, uris, todo, lock)
            labeling_s = time.perf_counter() - t0
        finally:
            pool.shutdown()
        return {"failed_attempts": failed, "workers": workers, "labeling_s": labeling_s,
                "dispatch_unix": [dispatch_start_unix, dispatch_start_unix + labeling_s],
                "workers_start_s": workers_start_s}
    finally:
        if started:
            ray.shutdown()


def _cpu_share(ray: Any, num_workers: int) -> float:
    """``cpu_share`` over the alive nodes' CPUs (the cluster total when nodes cannot be listed)."""
    try:
        caps = [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    except Exception:  # noqa: BLE001 - an old/odd Ray: fall back to the total
        caps = []
    if not any(caps):
        caps = [float(ray.cluster_resources().get("CPU", 1))]
    share = cpu_share(caps, num_workers)
    if share <= 0:
        raise JobError(f"no CPUs in the Ray cluster for {num_workers} CPU worker(s)")
    return share


def _gpu_cpu_share(ray: Any, gpus_per_worker: float) -> float:
    """``gpu_worker_cpu_share`` over the alive nodes (the cluster totals when nodes cannot be listed)."""
    try:
        nodes = [(float(n.get("Resources", {}).get("CPU", 0)), float(n.get("Resources", {}).get("GPU", 0)))
                 for n in ray.nodes() if n.get("Alive")]
    except Exception:  # noqa: BLE001 - an old/odd Ray: fall back to the totals
        nodes = []
    if not any(g for _, g in nodes):
        totals = ray.cluster_resources()
        nodes = [(float(totals.get("CPU", 0)), float(totals.get("GPU", 0)))]
    # No CPU to reserve (a GPU-only node?): 0 keeps the old behaviour rather than refusing to start.
    return gpu_worker_cpu_share(nodes, gpus_per_worker)


def _dispatch(ray: Any, pool: _ActorPool, cfg: BmpConfig, opts: RunOptions, plan: Plan, uris: Any,
              todo: list[int], lock: OutputLock) -> int:
    """Keep every actor's queue full until all shards commit. Returns the number of failed attempts."""
    pending = deque(todo)
    attempts: Counter[int] = Counter()
    inflight: dict[Any, tuple[int, int]] = {}  # ref -> (slot, shard)
    failed = errors = 0
    total = sum(plan.shard_range(s)[1] - plan.shard_range(s)[0] for s in todo)
    bar = tqdm(total=total, unit="img", desc="labeling", disable=not opts.progress, smoothing=0.1)

    def submit(slot: int, shard: int) -> None:
        attempts[shard] += 1
        start, _ = plan.shard_range(shard)
        task = ShardTask(opts.output_uri, plan.plan_id, shard, start, tuple(shard_uris(uris, plan, shard)),
                         attempts[shard])
        inflight[pool.actors[slot].process_shard_reporting.remote(task)] = (slot, shard)

    try:
        while pending or inflight:
            for slot in pool.actors:
                while pending and sum(1 for s, _ in inflight.values() if s == slot) < cfg.job.queue_depth:
                    submit(slot, pending.popleft())
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            if lock.lost.is_set():
                raise JobError("lost the output lock to another job; stopping")
            bar.update(min(ray.get(pool.counter.total.remote()), total) - bar.n)
            for ref in ready:
                if ref not in inflight:
                    continue  # dropped when its actor was replaced
                slot, shard = inflight.pop(ref)
                try:
                    report: ShardReport = ray.get(ref)
                except ray.exceptions.RayError as err:  # actor died (killed, OOM) or the worker raised
                    failed += 1
                    requeued = _retry_slot(pool, inflight, pending, attempts, slot, shard, err, cfg.job.max_attempts)
                    ray.get([pool.counter.reset.remote(s) for s in requeued])
                    continue
                errors += report.num_errors
                bar.set_postfix(errors=errors, retries=failed, refresh=False)
                logger.debug("committed %s", asdict(report))
        bar.update(total - bar.n)
    finally:
        bar.close()
    return failed


def _retry_slot(pool: _ActorPool, inflight: dict[Any, tuple[int, int]], pending: deque[int],
                attempts: Counter[int], slot: int, shard: int, err: Exception, max_attempts: int) -> list[int]:
    """Requeue a failed shard (and the shards queued behind it on that actor) on a fresh actor.

    Returns:
        The requeued shards.
    """
    if attempts[shard] >= max_attempts:
        raise JobError(f"shard {shard} failed {attempts[shard]} time(s) (job.max_attempts); last error:\n{err}")
    logger.warning("shard %d attempt %d failed, retrying on a new worker: %s", shard, attempts[shard],
                   str(err).splitlines()[0] if str(err) else type(err).__name__)
    # The shards queued on the same actor never ran (or died with it): requeue them without
    # charging an attempt, ahead of new work so the retried shards finish first.
    queued = [ref for ref, (s, _) in inflight.items() if s == slot]
    requeued = [shard]
    for ref in queued:
        _, other = inflight.pop(ref)
        attempts[other] -= 1
        pending.appendleft(other)
        requeued.append(other)
    pending.appendleft(shard)
    pool.replace(slot)
    return requeued
