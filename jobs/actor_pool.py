"""The actors that label shards: one slot per worker, a fresh actor when a slot's shard fails.

Ray itself is passed in (``ray_runner`` is the only module of ``jobs/`` that imports it). CPU actors
share the cluster's cores: ``num_cpus`` = their share (``cpu_share``), so any number of them can start
and one alone gets every core, with torch's thread count set to match. GPU actors take
``num_gpus`` = ``job.gpus_per_worker`` (1; 0.5 puts two on a GPU) and their node's cores split among its
GPU workers (or ``job.gpu_worker_cpus``), with torch threads to match: their decoding, pre- and
post-processing run on the CPU between GPU calls. Each actor runs ``job.queue_depth`` threads
(``max_concurrency``), so the next shard labels while the previous one writes its parts and commit
marker (the worker serialises the models itself, see ``jobs/worker.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import uuid
from collections import Counter
from typing import Any

from bmp_core.config import BmpConfig
from bmp_core.errors import UserError
from jobs.path_probe import PathMismatch, PathProbe, check_probes, probe_error
from jobs.worker import BmpWorker, ShardReport, ShardTask, WorkerInfo

logger = logging.getLogger(__name__)

# Non-secret AWS settings forwarded to actors on a cluster (credentials stay with the nodes).
_FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")
FORWARDED_ENV = _FORWARDED_ENV  # also for the sample worker (ray_runner.measure_sample)


class JobError(RuntimeError):
    """The job cannot go on (a shard failed every attempt, workers could not start)."""


class GpuUnavailableError(UserError, JobError):
    """``models.device`` asks for a GPU the Ray cluster cannot give its workers (the message says which)."""

    default_hint = "use models.device=auto (one worker per GPU, CPU workers without GPUs) or cpu"


def user_cause(err: BaseException) -> UserError | None:
    """The ``UserError`` a Ray error carries (an actor's constructor or a task raised it), if any.

    Ray wraps a remote exception in ``RayTaskError`` (``.cause``: the original), and an actor whose
    ``__init__`` raised answers every call with ``ActorDiedError`` whose ``.cause`` is that
    ``RayTaskError``; their text is Ray's traceback, which a user's mistake must not print.
    (``ActorDiedError.cause`` of a crashed process is a context record, not an exception: None.)
    """
    for _ in range(4):  # ActorDiedError -> RayTaskError -> the original
        inner = getattr(err, "cause", None)
        if not isinstance(inner, BaseException):
            break
        err = inner
    # The innermost, not the wrapper: Ray's RayTaskError is also an instance of its cause's class.
    return err if isinstance(err, UserError) and getattr(err, "cause", None) is None else None


def startup_error(err: BaseException, who: str = "workers") -> Exception:
    """What to raise when ``who`` could not start: the user's mistake itself (one line, no Ray
    traceback), or a ``JobError`` with the worker's traceback (a bug: it is needed to fix it)."""
    cause = user_cause(err)
    if cause is not None:
        return cause
    lines = [line for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__  # the original exception's own line
    return JobError(f"{who} could not start, building the models failed: {last}\n"
                    "Check the models section of the config (checkpoints, device) and that the "
                    f"model packages are installed (pip install 'bmp-label[models]').\n\n{err}")


class ProgressCounter:
    """Images done per shard attempt, reported by workers as they go (a tiny Ray actor)."""

    def __init__(self) -> None:
        self.done: dict[int, int] = {}

    def add(self, shard: int, num_images: int) -> None:
        self.done[shard] = self.done.get(shard, 0) + num_images

    def reset(self, shard: int) -> None:
        self.done.pop(shard, None)  # a failed attempt's images will be done again

    def total(self) -> int:
        return sum(self.done.values())


class RayWorker(BmpWorker):
    """``BmpWorker`` that reports per-image progress to the driver's counter."""

    def __init__(self, cfg: BmpConfig, counter: Any, num_threads: int | None = None,
                 gpu_assigned: bool = False) -> None:
        self._startup_error: UserError | None = None
        try:
            super().__init__(cfg, gpu_assigned)
        except UserError as err:
            # Kept for info() to raise: Ray prints a failed constructor's traceback on the driver's
            # stderr (log_to_driver), but not a method's, and a user's mistake is one line there.
            self._startup_error = err
            return
        self._counter = counter
        self.num_threads = _set_torch_threads(num_threads)
        _warm_up_arrow()

    def info(self) -> WorkerInfo:
        if self._startup_error is not None:
            raise self._startup_error  # the driver unwraps it (startup_error) and prints one line
        info = dataclasses.replace(super().info(), torch_threads=self.num_threads)
        logger.info("worker ready: %s", info.summary)
        return info

    def process_shard_reporting(self, task: ShardTask) -> ShardReport:
        return self.process_shard(task, lambda n: self._counter.add.remote(task.shard_id, n))

    def check_paths(self, probes: tuple[PathProbe, ...]) -> tuple[PathMismatch, ...]:
        """The driver's local paths as this worker's node sees them (``jobs/path_probe.py``)."""
        return check_probes(probes)


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


class ActorPool:
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
        self.gpu_assigned = num_gpus > 0
        self.remote_cls = ray.remote(RayWorker)
        self.counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
        self.options = options
        self.generation: Counter[int] = Counter()
        self.probes: tuple[PathProbe, ...] = ()  # local paths every actor must see (check_paths)
        self.actors = {slot: self._new_actor(slot) for slot in range(num_workers)}

    def _new_actor(self, slot: int) -> Any:
        self.generation[slot] += 1
        name = f"bmp-worker-{self.run_token}-{slot}-{self.generation[slot]}"
        actor = self.remote_cls.options(name=name, **self.options)
        return actor.remote(self.cfg, self.counter, self.num_threads, self.gpu_assigned)

    def wait_ready(self) -> list[WorkerInfo]:
        try:
            return self.ray.get([a.info.remote() for a in self.actors.values()])
        except self.ray.exceptions.RayError as err:  # the constructor raised: models could not be built
            raise startup_error(err) from err

    def check_paths(self, probes: tuple[PathProbe, ...]) -> None:
        """Every actor, and every later replacement, must see ``probes`` as the driver does.

        Raises:
            PathProbeError: naming each node and path that differ (before any shard is given out).
        """
        self.probes = probes
        self._check_paths(list(self.actors.values()))

    def _check_paths(self, actors: list[Any]) -> None:
        if not self.probes:
            return
        seen = self.ray.get([a.check_paths.remote(self.probes) for a in actors])
        mismatches = [m for found in seen for m in found]
        if mismatches:
            raise probe_error(mismatches)

    def replace(self, slot: int) -> None:
        self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._new_actor(slot)
        self._check_paths([self.actors[slot]])  # a fresh actor may start on another node

    def shutdown(self) -> None:
        for actor in [*self.actors.values(), self.counter]:
            self.ray.kill(actor, no_restart=True)


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


def node_gpu_cpu_share(ray: Any, gpus_per_worker: float) -> float:
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


def node_cpu_share(ray: Any, num_workers: int) -> float:
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
