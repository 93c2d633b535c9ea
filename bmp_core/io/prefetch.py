"""In-order read-ahead on a thread pool: the one pattern the worker (images) and finalize (Parquet
parts) use to hide storage latency behind the consumer."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """``fn(item)`` for every item, yielded in order, at most ``window`` running or done ahead.

    The first ``window`` calls are submitted now, before the returned iterator is first advanced
    (a caller may start reads, then wait for something else). An exception of ``fn`` is raised when
    its result's turn comes.
    """
    pending: deque[Future[R]] = deque()
    todo = iter(items)
    for item in todo:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            break
    return _drain(pool, fn, pending, todo)


def _drain(pool: Executor, fn: Callable[[T], R], pending: deque[Future[R]], todo: Iterator[T]) -> Iterator[R]:
    while pending:
        done = pending.popleft().result()
        nxt = next(todo, None)
        if nxt is not None:
            pending.append(pool.submit(fn, nxt))
        yield done
