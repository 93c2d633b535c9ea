"""In-order read-ahead: the one pattern the worker (images) and finalize (Parquet parts) use to hide
storage latency behind the consumer. ``prefetch`` maps a function over independent items on a pool;
``read_ahead`` runs one sequential source (a tar stream) on a thread of its own."""

from __future__ import annotations

import queue
import threading
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


def read_ahead(items: Iterable[T], depth: int, name: str = "bmp-stream") -> Iterator[T]:
    """``items`` in order, produced on a thread of their own at most ``depth`` ahead of the consumer.

    For a sequential source, where each next item costs I/O (a tar streamed front to back): the
    consumer (the models' thread) never waits on a read that could have happened while it worked.
    The production starts now, before the returned iterator is first advanced. An exception of the
    source is raised at its turn; closing the iterator (or dropping it) stops the thread.
    """
    buffer: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(buffer, (True, item), stop):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            _put(buffer, (False, err), stop)
            return
        _put(buffer, (False, None), stop)

    threading.Thread(target=produce, name=name, daemon=True).start()
    return _consume(buffer, stop)


def _put(buffer: queue.Queue[tuple[bool, object]], entry: tuple[bool, object], stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            buffer.put(entry, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _consume(buffer: queue.Queue[tuple[bool, object]], stop: threading.Event) -> Iterator[T]:
    try:
        while True:
            is_item, value = buffer.get()
            if not is_item:
                if value is not None:
                    raise value  # type: ignore[misc]
                return
            yield value  # type: ignore[misc]
    finally:
        stop.set()
