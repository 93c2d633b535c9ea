"""At most one job writes an output at a time: ``OUT/_lock.json``, taken and refreshed atomically.

The lock is a lease: the holder rewrites it every ``ttl_s / 4`` seconds (the heartbeat), and a lease
older than ``ttl_s``, or held by a dead process on this host, may be taken over. Every change is a
compare-and-swap, so two jobs can never both believe they hold it:

- take: create the object only if it does not exist (S3 ``PutObject`` with ``If-None-Match: *``;
  local: ``link(2)`` of a complete temp file, which fails if the name exists);
- take over a stale lease, heartbeat, release: replace or delete it only if it is still the
  version read (S3 ``PutObject`` / ``DeleteObject`` with ``If-Match: <ETag>``; local: under
  ``flock(2)`` on the output folder, comparing the content's sha256).

An S3-compatible store without conditional writes (S3 itself has them since 2024, MinIO too)
answers 501; the lock then falls back to a plain lease: write, wait ``settle_s``, read back, so of
two jobs starting together the last writer keeps it (the other refuses). The fallback is logged.

The compare-and-swap itself is one class per backend (``jobs/lock_backends.py``: ``LocalCas``,
``S3Cas``); this module is the lease logic on top, the same for both.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from bmp_core.output.layout import LOCK_JSON as LOCK_NAME
from bmp_core.output.store import OutputStateError, OutputStore
from jobs.lock_backends import cas_for

logger = logging.getLogger(__name__)


@dataclass
class LockInfo:
    token: str
    host: str
    pid: int
    heartbeat_unix: float
    ttl_s: float

    def is_stale(self, now: float) -> bool:
        if now - self.heartbeat_unix > self.ttl_s:
            return True
        # Same host: a dead pid means a killed job; no need to wait for the lease to expire.
        return self.host == socket.gethostname() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """The output's lock (see the module doc).

    Args:
        store: the output.
        ttl_s: the lease; another job may take the lock once the heartbeat is this old.
        settle_s: only for stores without conditional writes: how long to wait before reading a
            freshly written lease back.
    """

    def __init__(self, store: OutputStore, ttl_s: float = 120.0, settle_s: float = 1.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.settle_s = settle_s
        self.token = uuid.uuid4().hex
        self.lost = threading.Event()
        self._cas = cas_for(store, LOCK_NAME)
        self._version: str | None = None  # of the lease object we wrote last
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _info_bytes(self) -> bytes:
        info = LockInfo(self.token, socket.gethostname(), os.getpid(), time.time(), self.ttl_s)
        return json.dumps(vars(info), indent=1).encode()

    def read(self) -> LockInfo | None:
        found = self._cas.read()
        return None if found is None else _parse(found[0])

    def acquire(self, break_lock: bool = False) -> None:
        """Take the lock or raise ``OutputStateError`` naming the holder."""
        for _ in range(5):  # each round loses only to another job's successful write
            data = self._info_bytes()
            created = self._cas.create(data)
            if created is None:
                return self._acquire_lease(break_lock)
            if created or self._mine():
                break
            found = self._cas.read()
            if found is None:
                continue  # released in between: try to create it again
            held = _parse(found[0])
            if held is not None and not held.is_stale(time.time()) and not break_lock:
                raise OutputStateError(self._held_message(held))
            replaced = self._cas.replace(data, found[1])
            if replaced is None:
                return self._acquire_lease(break_lock)
            if replaced or self._mine():
                break
        else:
            raise OutputStateError(f"{self.store.uri}: other jobs keep taking the lock; not starting")
        self._start_heartbeat()

    def _mine(self) -> bool:
        """Whether the lease now stored is ours (a retried write may have landed after all)."""
        found = self._cas.read()
        if found is None or (held := _parse(found[0])) is None or held.token != self.token:
            return False
        self._version = found[1]
        return True

    def _acquire_lease(self, break_lock: bool) -> None:
        """The fallback for stores without conditional writes: write, settle, read back."""
        logger.warning("%s does not support conditional writes; the output lock is a plain lease",
                       self.store.uri)
        held = self.read()
        if held is not None and held.token != self.token and not held.is_stale(time.time()) and not break_lock:
            raise OutputStateError(self._held_message(held))
        self.store.write_bytes(LOCK_NAME, self._info_bytes())
        if self.settle_s:
            time.sleep(self.settle_s)
        if not self._mine():
            raise OutputStateError(f"{self.store.uri}: another job took the lock at the same time; not starting")
        self._cas.unconditional = True
        self._start_heartbeat()

    def _held_message(self, held: LockInfo) -> str:
        age = time.time() - held.heartbeat_unix
        return (f"{self.store.uri} is being written by another job (host {held.host}, pid {held.pid}, "
                f"last heartbeat {age:.0f} s ago, lease {held.ttl_s:.0f} s). Wait for it to finish, use "
                "another --output, or, if that job is dead, rerun with --break-lock.")

    def _start_heartbeat(self) -> None:
        self._mine()  # records the version we hold
        self._thread = threading.Thread(target=self._heartbeat, name="bmp-lock-heartbeat", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if not self._cas.unconditional and self._version is not None:
                    done = self._cas.replace(self._info_bytes(), self._version)
                    if done:
                        self._mine()
                        continue
                    if done is None:  # If-None-Match worked but If-Match is not implemented
                        self._cas.unconditional = True
                if self._mine():
                    if self._cas.unconditional:  # the lease fallback: checked just above, now write
                        self._cas.replace(self._info_bytes(), "")
                    continue
                logger.error("lost the output lock of %s to another job", self.store.uri)
                self.lost.set()
                return
            except OSError as err:  # a storage hiccup: try again next beat, the lease has slack
                logger.warning("lock heartbeat failed: %s", err)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        found = self._cas.read()
        if found is not None and (held := _parse(found[0])) is not None and held.token == self.token:
            self._cas.delete(found[1])


def _parse(data: bytes) -> LockInfo | None:
    try:
        return LockInfo(**json.loads(data))
    except (ValueError, TypeError):
        return None  # half-written by a crashed writer of an older version, or not ours
