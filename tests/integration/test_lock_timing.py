"""The output lock's timing: the heartbeat that renews a lease, and jobs racing for the lock.

Moved from tests/unit/test_commit.py: these wait on real time and real threads (the unit tier
forbids ``time.sleep``). Local folder here; S3 in test_s3.py, which reuses ``_race``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bmp_core.output.store import OutputStateError, OutputStore
from jobs.lock import OutputLock

pytestmark = pytest.mark.integration


def _race(make_lock: object, n: int = 8) -> list[object]:
    """``n`` threads acquire at once; returns the locks that got it."""
    import threading

    barrier, won, errors = threading.Barrier(n), [], []

    def go() -> None:
        lock = make_lock()
        barrier.wait()
        try:
            lock.acquire()
            won.append(lock)
        except OutputStateError as err:
            errors.append(err)

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) + len(errors) == n
    return won


def test_lock_races_have_exactly_one_winner(tmp_path: Path) -> None:
    """No settle delay: creation and takeover are compare-and-swap, so of 8 jobs starting together
    exactly one holds the lock, for a fresh output and for one whose holder died."""
    store = OutputStore(str(tmp_path))
    for _ in range(3):
        won = _race(lambda: OutputLock(store, ttl_s=60, settle_s=0))
        assert len(won) == 1 and won[0].read().token == won[0].token
        won[0].release()
        assert not (tmp_path / "_lock.json").exists()
    for _ in range(3):
        store.write_json("_lock.json", {"token": "dead", "host": "elsewhere", "pid": 1,
                                        "heartbeat_unix": time.time() - 120, "ttl_s": 60})
        won = _race(lambda: OutputLock(store, ttl_s=60, settle_s=0))
        assert len(won) == 1 and won[0].read().token == won[0].token
        won[0].release()


def test_heartbeat_notices_a_lost_lock(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path))
    holder = OutputLock(store, ttl_s=0.2, settle_s=0)
    holder.acquire()
    before = holder.read().heartbeat_unix
    time.sleep(0.15)
    assert holder.read().heartbeat_unix > before and not holder.lost.is_set()  # refreshed
    OutputLock(store, ttl_s=60, settle_s=0).acquire(break_lock=True)
    assert holder.lost.wait(2.0)
    holder.release()
    assert (tmp_path / "_lock.json").exists()  # the new holder's lock stays


