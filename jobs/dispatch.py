"""Keep every actor's queue full until all shards commit; retry a failed shard on a fresh actor.

A shard whose attempt fails (the actor died, or the worker raised) is given to a fresh actor, up to
``job.max_attempts`` attempts; a shard commits at most one set of parts (``bmp_core/output/commits.py``),
so a retried or duplicated attempt never duplicates rows.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import asdict
from typing import Any

from tqdm.auto import tqdm

from bmp_core.config import BmpConfig
from bmp_core.io.sources import InputChangedError, InputListing
from bmp_core.output.plan import Plan
from jobs.actor_pool import ActorPool, JobError
from jobs.lock import OutputLock
from jobs.planner import shard_inputs
from jobs.worker import ShardReport, ShardTask

logger = logging.getLogger(__name__)


def dispatch(ray: Any, pool: ActorPool, cfg: BmpConfig, output_uri: str, plan: Plan, uris: InputListing,
             todo: list[int], lock: OutputLock, progress: bool = True,
             reports: list[ShardReport] | None = None) -> int:
    """Keep every actor's queue full until all shards commit. Returns the number of failed attempts.

    ``uris``: the input's listing (``bmp_core.io.sources.list_source``); ``reports`` receives each
    committed shard's report."""
    pending = deque(todo)
    attempts: Counter[int] = Counter()
    inflight: dict[Any, tuple[int, int]] = {}  # ref -> (slot, shard)
    failed = errors = 0
    # Progress in images; for a tar input (its images are counted as the tars are streamed) in tars,
    # with the images labeled so far beside them.
    total = len(todo) if plan.is_tar else sum(plan.shard_num_images(s) or 0 for s in todo)
    bar = tqdm(total=total, unit="tar" if plan.is_tar else "img", desc="labeling", disable=not progress,
               smoothing=0.1)
    tars_done = 0

    def submit(slot: int, shard: int) -> None:
        attempts[shard] += 1
        inputs = shard_inputs(uris, plan, shard)
        task = ShardTask(output_uri, plan.plan_id, shard, plan.first_image_id(shard), inputs.uris, attempts[shard],
                         uris.kind, inputs.spans, inputs.tar)
        inflight[pool.actors[slot].process_shard_reporting.remote(task)] = (slot, shard)

    try:
        while pending or inflight:
            for slot in pool.actors:
                while pending and sum(1 for s, _ in inflight.values() if s == slot) < cfg.job.queue_depth:
                    submit(slot, pending.popleft())
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            if lock.lost.is_set():
                raise JobError("lost the output lock to another job; stopping")
            images_done = ray.get(pool.counter.total.remote())
            if not plan.is_tar:
                bar.update(min(images_done, total) - bar.n)
            for ref in ready:
                if ref not in inflight:
                    continue  # dropped when its actor was replaced
                slot, shard = inflight.pop(ref)
                try:
                    report: ShardReport = ray.get(ref)
                except ray.exceptions.RayError as err:  # actor died (killed, OOM) or the worker raised
                    changed = _input_changed(err)
                    if changed is not None:  # every retry would find the same file: stop now, say which
                        raise JobError(f"shard {shard}: {changed}") from err
                    failed += 1
                    requeued = retry_slot(pool, inflight, pending, attempts, slot, shard, err, cfg.job.max_attempts)
                    ray.get([pool.counter.reset.remote(s) for s in requeued])
                    continue
                errors += report.num_errors
                if reports is not None:
                    reports.append(report)
                if plan.is_tar:
                    tars_done += 1
                    bar.update(tars_done - bar.n)
                    bar.set_postfix(images=images_done, errors=errors, retries=failed, refresh=False)
                else:
                    bar.set_postfix(errors=errors, retries=failed, refresh=False)
                logger.debug("committed %s", asdict(report))
        bar.update(total - bar.n)
    finally:
        bar.close()
    return failed


def retry_slot(pool: ActorPool, inflight: dict[Any, tuple[int, int]], pending: deque[int],
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


def _input_changed(err: Exception) -> InputChangedError | None:
    """The worker's ``InputChangedError`` inside a Ray task error (a tar rewritten since the plan), if any."""
    cause = getattr(err, "cause", None)  # the worker's own exception (not Ray's wrapper with the traceback)
    return cause if isinstance(cause, InputChangedError) else None
