"""Where the loop keeps an image's masks: one store per image whose rows are written once, and a pool
that lends a finished image's store to a later one (docs/performance.md).

``MaskStore``: an image's two mask stacks (``masks``, ``det_masks``), with room for the rows later
passes add; the loop's ``Instances`` hold read-only views of its first rows. ``MaskStorePool``: stores of
finished images, lent again once nothing refers to their result any more, cleared window by window.
The window helpers (``copy_window``, ``clear_window``, ``move_window``) touch only a mask's pixel window
(``ops.masks``), so no image-sized row is read whole.

Public API (what the loop and the tests use):
    MaskStore(image_hw, capacity, buffers=None), MaskStore.for_rows(image_hw, rows),
    .masks / .det_masks / .mask_windows / .det_windows / .used, .note_written(rows), .grow(extra_rows),
    .in_use(), .clear(), .reshaped(image_hw), .resident_bytes(), .buffer_bytes(),
    and a pass's rows: .pass_rows(masks, windows), .keep_pass_rows(keep, windows),
    .keep_instances(kept, pass_windows), .new_instance_rows(n), .add_instances(mask_windows, det_windows),
    .instance_rows()
    MaskStorePool(max_bytes, enabled=True): .take(image_hw, rows), .give(store), .stores()
    shared_pool(max_bytes=None): the process's pool (what ``run_bmp`` uses unless given one)
    capacity(image_hw, rows), refcounts_track_views(), copy_window, clear_window, move_window
    SPARE_BYTES, DEFAULT_POOL_BYTES
"""

from __future__ import annotations

import sys
import threading

import numpy as np

# Address space a store reserves per stack for rows later passes may add (see ``capacity``).
SPARE_BYTES = 512 * 2**20
# What the process's pool keeps of finished images' written mask memory (= job.mask_pool_mb's default).
DEFAULT_POOL_BYTES = 1024 * 2**20


class MaskStore:
    """One image's two mask stacks, with room for the rows later passes add.

    Rows ``[0, used)`` of ``masks`` / ``det_masks`` are the current instances' (their ``Instances``
    holds views of those rows); this pass's detector masks go into ``det_masks`` right after them, so
    pose sees them, pose-NMS compacts them and the merge keeps them without a whole-image copy. Rows past
    what was written are never touched: a fresh ``np.zeros`` stack costs only the pages a window writes
    (a person, not the image), where concatenating stacks each pass copied every image-sized row again.
    Rows below ``used`` change only when pose-NMS removes an instance (``keep_instances`` compacts
    them); the ``Instances`` the loop returns are never changed afterwards (their views are read-only).

    The two stacks are views of two flat buffers the store owns. When a run ends, every True pixel of
    the store lies in rows ``[0, used)`` inside their windows (every other row the run wrote was
    cleared window by window), which is what lets ``MaskStorePool`` lend the buffers to a later image
    once the result that showed them is gone: clearing those windows makes them all-False again,
    without the fresh pages' first-touch cost, and the buffers may then be viewed as stacks of another
    image size (``reshaped``).
    """

    def __init__(self, image_hw: tuple[int, int], capacity: int,
                 buffers: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        size = capacity * image_hw[0] * image_hw[1]
        if buffers is None:
            buffers = (np.zeros(size, bool), np.zeros(size, bool))
        self._buffers = buffers  # the flat owners of ``masks`` and ``det_masks``
        self.masks = buffers[0][:size].reshape(capacity, *image_hw)
        self.det_masks = buffers[1][:size].reshape(capacity, *image_hw)
        self.mask_windows = np.zeros((0, 4), np.int64)  # of rows [0, used) of ``masks``
        self.det_windows = np.zeros((0, 4), np.int64)  # of rows [0, used) of ``det_masks``
        self.used = 0
        self.touched_bytes = 0  # bytes [0, touched_bytes) of each buffer were ever written: its pages

    def note_written(self, rows: int) -> None:
        """Rows ``[0, rows)`` of the stacks may have been written."""
        self.touched_bytes = max(self.touched_bytes, rows * self.masks.shape[1] * self.masks.shape[2])

    def resident_bytes(self) -> int:
        """What the written parts of both buffers hold in memory (at most)."""
        return 2 * self.touched_bytes

    def buffer_bytes(self) -> int:
        return len(self._buffers[0])

    def in_use(self) -> bool:
        """Whether anything but this store still refers to its buffers (an ``Instances`` view of them)."""
        # Every numpy view of a buffer (and a view of a view) holds a reference to the buffer itself as its
        # ``base``; this store holds two per buffer (its tuple, its stack's base), getrefcount's argument
        # one more (tests/unit/test_equivalence.py checks the count).
        return sys.getrefcount(self._buffers[0]) > 3 or sys.getrefcount(self._buffers[1]) > 3

    def clear(self) -> None:
        """All-False again: clear the windows of rows ``[0, used)`` (class invariant above)."""
        for i in range(self.used):
            clear_window(self.masks[i], self.mask_windows[i])
            clear_window(self.det_masks[i], self.det_windows[i])
        self.mask_windows = np.zeros((0, 4), np.int64)
        self.det_windows = np.zeros((0, 4), np.int64)
        self.used = 0

    def reshaped(self, image_hw: tuple[int, int]) -> MaskStore:
        """This cleared, unused store's buffers as stacks of ``image_hw`` rows (as many as they hold)."""
        other = MaskStore(image_hw, self.buffer_bytes() // max(1, image_hw[0] * image_hw[1]), self._buffers)
        other.touched_bytes = self.touched_bytes
        return other

    @staticmethod
    def for_rows(image_hw: tuple[int, int], rows: int) -> MaskStore:
        """A fresh store for ``rows`` rows and the spare rows of ``capacity``."""
        return MaskStore(image_hw, capacity(image_hw, rows))

    def grow(self, extra_rows: int) -> None:
        """Make room for ``extra_rows`` rows past ``used`` (copies the used rows window by window)."""
        if self.used + extra_rows <= len(self.masks):
            return
        bigger = MaskStore.for_rows(self.masks.shape[1:], self.used + extra_rows)
        for i in range(self.used):
            copy_window(self.masks[i], bigger.masks[i], self.mask_windows[i])
            copy_window(self.det_masks[i], bigger.det_masks[i], self.det_windows[i])
        bigger.mask_windows, bigger.det_windows, bigger.used = self.mask_windows, self.det_windows, self.used
        bigger.note_written(self.used)
        self.__dict__.update(bigger.__dict__)


    # --- the rows of one pass: its detector masks after the instances', compacted, then kept ---

    def pass_rows(self, masks: list[np.ndarray] | None, windows: np.ndarray) -> np.ndarray:
        """This pass's ``len(windows)`` detector rows, right after the instances' (growing the store if
        needed), with ``masks`` copied in window by window (cast to bool as ``astype(bool)`` would;
        ``None``: they stay all-False). Returns the rows (a view of ``det_masks``)."""
        n = len(windows)
        self.grow(n)
        self.note_written(self.used + n)
        rows = self.det_masks[self.used: self.used + n]
        for j in range(n if masks is not None else 0):
            copy_window(masks[j], rows[j], windows[j])
        return rows

    def keep_pass_rows(self, keep: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Compact the kept ones of this pass's rows (``keep``: (N,) bool; ``windows``: their (N, 4)) to
        the front of the pass's rows; every other row ends all-False. Returns the kept rows."""
        rows = self.det_masks[self.used: self.used + len(keep)]
        kept = np.flatnonzero(keep)
        for j in np.flatnonzero(~keep):
            clear_window(rows[j], windows[j])
        for rank, j in enumerate(kept):
            if rank != j:
                copy_window(rows[j], rows[rank], windows[j])
                clear_window(rows[j], windows[j])
        return rows[: len(kept)]

    def keep_instances(self, kept: np.ndarray, pass_windows: np.ndarray) -> None:
        """Keep only the instances' rows ``kept`` (ascending; pose-NMS removed the others): compact them,
        and this pass's detector rows (windows ``pass_windows``) after them, in place, window by window,
        so no row of the image is copied or faulted in anew. In place is safe: the caller replaces the
        ``Instances`` that showed the old rows."""
        dropped = np.setdiff1d(np.arange(self.used), kept)
        for i in dropped:
            clear_window(self.masks[i], self.mask_windows[i])
            clear_window(self.det_masks[i], self.det_windows[i])
        # Every move goes to a lower row that is all-False by then (dropped and cleared, or moved away and
        # cleared): ascending order never overwrites a row still to be moved.
        for rank, i in enumerate(kept):
            if rank != i:
                move_window(self.masks, i, rank, self.mask_windows[i])
                move_window(self.det_masks, i, rank, self.det_windows[i])
        for j in range(len(pass_windows)):
            move_window(self.det_masks, self.used + j, len(kept) + j, pass_windows[j])
        self.mask_windows, self.det_windows = self.mask_windows[kept], self.det_windows[kept]
        self.used = len(kept)

    def add_instances(self, mask_windows: np.ndarray, det_windows: np.ndarray) -> None:
        """The next ``len(mask_windows)`` rows (already written) become instances' rows."""
        self.used += len(mask_windows)
        self.mask_windows = np.concatenate([self.mask_windows, mask_windows])
        self.det_windows = np.concatenate([self.det_windows, det_windows])

    def new_instance_rows(self, n: int) -> np.ndarray:
        """The ``n`` rows of ``masks`` after the instances' (all-False until written): the next instances'."""
        return self.masks[self.used: self.used + n]

    def instance_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Views of the instances' rows of ``masks`` and ``det_masks``."""
        return self.masks[: self.used], self.det_masks[: self.used]

def capacity(image_hw: tuple[int, int], rows: int) -> int:
    """Rows of a store asked for ``rows``: room for later passes' detections (RTMDet keeps at most 40 per
    image) costs address space only, but capped at ~``SPARE_BYTES`` of it per stack so that huge images do
    not ask for gigabytes a strict overcommit policy would refuse; more rows than that move into a bigger
    store (``MaskStore.grow``)."""
    row_bytes = max(1, image_hw[0] * image_hw[1])
    return rows + min(rows + 40, max(4, SPARE_BYTES // row_bytes))


def refcounts_track_views() -> bool:
    """Whether ``sys.getrefcount`` sees numpy views of a buffer (CPython's refcounting does); the pool
    relies on it to know a result is gone, and lends nothing where it does not hold."""
    owner = np.zeros(8, bool)
    before = sys.getrefcount(owner)
    view = owner[:4].reshape(2, 2)[1]
    seen = sys.getrefcount(owner) == before + 1
    del view
    return seen and sys.getrefcount(owner) == before


class MaskStorePool:
    """Mask buffers of finished images, lent again to later images.

    A fresh store's pages are zero-filled by the kernel on first touch, a few MB per mask window at
    1080p; that cost the loop more than all its mask arithmetic. ``give`` keeps a finished image's
    store (its result may still be alive); ``take`` lends one whose result is gone (``in_use``),
    cleared: one of the same image size if there is one, else the smallest whose buffers hold the
    rows asked for, viewed as stacks of the new size. What the pool keeps is bounded by
    ``max_bytes`` of written memory (oldest dropped first; a store still in use when dropped is
    simply forgotten, its memory goes with its result): a worker's two batches of results in flight
    fit at 1080p with the default. Thread-safe.
    """

    def __init__(self, max_bytes: int, enabled: bool = True) -> None:
        self.max_bytes = max_bytes
        self.enabled = enabled
        self._stores: list[MaskStore] = []
        self._lock = threading.Lock()

    def take(self, image_hw: tuple[int, int], rows: int) -> MaskStore:
        need = capacity(image_hw, rows) * image_hw[0] * image_hw[1]
        with self._lock:
            free = [s for s in self._stores if not s.in_use()]
            same = [s for s in free if s.masks.shape[1:] == image_hw and len(s.masks) >= rows]
            fits = sorted((s for s in free if s.buffer_bytes() >= need), key=MaskStore.buffer_bytes)
            store = (same or fits or [None])[0]
            if store is not None:
                self._stores.remove(store)
        if store is None:
            return MaskStore.for_rows(image_hw, rows)
        store.clear()
        return store if store.masks.shape[1:] == image_hw else store.reshaped(image_hw)

    def give(self, store: MaskStore) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._stores.append(store)
            total = sum(s.resident_bytes() for s in self._stores)
            while self._stores and total > self.max_bytes:
                total -= self._stores.pop(0).resident_bytes()

    def stores(self) -> list[MaskStore]:
        """The stores kept now, oldest first."""
        with self._lock:
            return list(self._stores)


_SHARED_POOL = MaskStorePool(DEFAULT_POOL_BYTES, enabled=refcounts_track_views())


def shared_pool(max_bytes: int | None = None) -> MaskStorePool:
    """The process's pool; ``max_bytes``: bound it to that from now on (``job.mask_pool_mb``), else as it is
    (``DEFAULT_POOL_BYTES`` until set)."""
    if max_bytes is not None:
        _SHARED_POOL.max_bytes = max_bytes
    return _SHARED_POOL


def copy_window(src: np.ndarray, dst: np.ndarray, window: np.ndarray) -> None:
    """``dst[window] = src[window]`` for an (x0, y0, x1, y1) pixel window (empty: nothing)."""
    x0, y0, x1, y1 = (int(v) for v in window)
    if x1 > x0:
        dst[y0:y1, x0:x1] = src[y0:y1, x0:x1]


def clear_window(dst: np.ndarray, window: np.ndarray) -> None:
    """``dst[window] = False``."""
    x0, y0, x1, y1 = (int(v) for v in window)
    if x1 > x0:
        dst[y0:y1, x0:x1] = False


def move_window(stack: np.ndarray, src: int, dst: int, window: np.ndarray) -> None:
    """Row ``src``'s window to row ``dst`` (cleared at ``src``)."""
    if src != dst:
        copy_window(stack[src], stack[dst], window)
        clear_window(stack[src], window)
