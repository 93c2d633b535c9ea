"""In-order read-ahead (``bmp_core/io/prefetch.py``): both forms keep the order, stay within their
window, hand a failure over at its turn; the threaded one stops when its consumer does."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bmp_core.io.prefetch import prefetch, read_ahead


def test_prefetch_keeps_order_and_raises_at_the_failing_turn() -> None:
    def fn(i: int) -> int:
        if i == 3:
            raise ValueError("item 3")
        return i * i

    with ThreadPoolExecutor(4) as pool:
        it = prefetch(pool, fn, range(6), window=2)
        assert [next(it) for _ in range(3)] == [0, 1, 4]
        with pytest.raises(ValueError, match="item 3"):
            next(it)


def test_read_ahead_yields_in_order_and_stays_within_its_depth() -> None:
    produced: list[int] = []
    gate = threading.Event()

    def source() -> Iterator[int]:
        for i in range(20):
            produced.append(i)
            yield i

    it = read_ahead(source(), depth=3)
    first = next(it)
    gate.wait(0.2)  # let the producer run ahead as far as it may
    # One handed over, 3 in the queue, one made and waiting for a free place: never more.
    assert first == 0 and len(produced) <= 1 + 3 + 1
    assert [first, *it] == list(range(20))


def test_read_ahead_hands_a_failure_over_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("connection reset mid-tar")

    it = read_ahead(source(), depth=8)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(OSError, match="connection reset"):
        next(it)


def test_read_ahead_stops_its_thread_when_the_consumer_stops() -> None:
    made: list[int] = []
    done = threading.Event()

    def source() -> Iterator[int]:
        try:
            for i in range(10**9):
                made.append(i)
                yield i
        finally:
            done.set()

    it = read_ahead(source(), depth=2, name="bmp-test-stream")
    assert next(it) == 0
    it.close()  # what dropping a half-read shard's stream does
    assert done.wait(5.0), "the producer thread kept reading after its consumer stopped"
    assert len(made) < 10
