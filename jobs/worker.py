"""``BmpWorker``: builds the models once, then labels whole shards and commits them.

A plain class (the Ray Data UDF shape): ``jobs/ray_runner.py`` wraps it in ``ray.remote``; tests
and a debugger can use it directly. Only the models' own work is on the critical path:

- reading and decoding run on a thread pool a bounded window ahead of the models;
- RLE encoding (and trace writing) of a batch runs on its own thread while the next batch is on the
  models, at most one batch behind, so at most two batches of dense masks are alive;
- ``process_shard`` is safe to call from several threads (the Ray actor runs ``job.queue_depth`` of
  them): one shard at a time holds the models, and a finished shard's Parquet parts and commit
  marker are written while the next shard is already labeling.

Masks leave the worker as RLE inside the Parquet parts; the driver only gets a small report.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from bmp_core.config import BmpConfig, JobConfig, check_job_config
from bmp_core.io.given_boxes import GivenBoxes, GivenBoxIndex, load_given_boxes
from bmp_core.io.images import ImageDecodeError, ImageInputError, decode_image_bgr
from bmp_core.io.prefetch import prefetch, read_ahead
from bmp_core.io.sources import INPUT_KINDS, KIND_FILES, Container, RawImage, ShardEntries
from bmp_core.loop import run_bmp, run_bmp_batch
from bmp_core.mask_store import shared_pool
from bmp_core.output.commits import commit_shard, new_attempt_id
from bmp_core.output.store import OutputStore
from bmp_core.output.tables import INSTANCES_SCHEMA, ImageRow, images_table, instances_table
from bmp_core.output.traces import write_traces
from bmp_core.records import BmpResult

if TYPE_CHECKING:
    from bmp_core.models.device import DeviceInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardTask:
    """One shard to label: its image ids are ``first_image_id + i`` for ``uris[i]``; a tar input's
    shard names no URIs but its ``tar``, whose image member ``k`` is image ``first_image_id + k``."""

    output_uri: str
    plan_id: str
    shard_id: int
    first_image_id: int
    uris: tuple[str, ...]
    attempt: int = 1
    kind: str = KIND_FILES  # the input kind (bmp_core/io/sources.py): "files", "tar" or "parquet"
    # Per URI: (row, row group) of a Parquet row; empty otherwise.
    spans: tuple[tuple[int, int], ...] = ()
    tar: Container | None = None  # a tar input: the tar this shard streams, as the plan pinned it


@dataclass(frozen=True)
class WorkerInfo:
    """Where a worker runs: its start line and ``run.json`` ``workers``.

    Attributes:
        device: the resolved device (``cuda:0``, ``cpu``) with the real models; the configured value
            otherwise.
        device_info: the real models' device (torch's CUDA build, the driver, the GPU); None otherwise.
        torch_threads: torch's intra-op threads as the actor set them; None when torch is not loaded.
    """

    host: str
    pid: int
    device: str
    device_info: DeviceInfo | None = None
    torch_threads: int | None = None

    @property
    def summary(self) -> str:
        """One line for the driver's log."""
        device = self.device_info.summary() if self.device_info else f"device {self.device}"
        return f"{self.host}:{self.pid} {device}"


@dataclass(frozen=True)
class ShardReport:
    """What the driver learns about a committed shard (no pixels, no masks)."""

    shard_id: int
    attempt_id: str
    num_images: int
    num_errors: int
    num_instances: int
    seconds: float
    worker: str  # host:pid
    models_s: float = 0.0  # the shard's time holding the models (its labeling loop)
    input_wait_s: float = 0.0  # of which waiting for the next decoded image (the models idle: an idle GPU)


@dataclass
class _Decoded:
    row: ImageRow
    image_bgr: np.ndarray | None


class BmpWorker:
    """Labels shards with the BMP loop.

    Args:
        cfg: the resolved config; ``cfg.models`` is built once here (weights loaded), and so is the
            ``job.given_boxes`` file (read once per worker), so a model or boxes-file error surfaces
            when the worker starts, not on the first image.
        gpu_assigned: this process was given a GPU (a Ray GPU actor): with the real models and
            ``models.device: auto``, a torch that cannot use CUDA fails here, with torch's reason
            (``DeviceError``), instead of building the models on the CPU.
    """

    def __init__(self, cfg: BmpConfig, gpu_assigned: bool = False) -> None:
        from bmp_core.models import build_models  # the heavy imports happen here, on the worker

        check_job_config(cfg)
        self.cfg = cfg
        self.mask_pool = shared_pool(cfg.job.mask_pool_mb * 2**20)  # lends finished images' mask memory
        self.gpu_assigned = gpu_assigned
        if gpu_assigned and cfg.models.uses_torch_device:
            from bmp_core.models.device import resolve_device

            resolve_device(cfg.models.device, gpu_assigned=True)  # before minutes of model building
        self.given_boxes = _load_given_box_index(cfg.job)
        self.models = build_models(cfg.models)
        self._pool = ThreadPoolExecutor(cfg.job.decode_threads, thread_name_prefix="bmp-read")
        self._encode_pool = ThreadPoolExecutor(1, thread_name_prefix="bmp-encode")
        self._models_lock = threading.Lock()  # one shard at a time on the models (see module doc)
        self._input_wait_s = 0.0  # total time the labeling loop waited for input (under the models lock)

    def info(self) -> WorkerInfo:
        """Where this worker runs (the driver logs it and waits on it as a readiness check)."""
        if not self.cfg.models.uses_torch_device:
            return WorkerInfo(socket.gethostname(), os.getpid(), self.cfg.models.device)
        from bmp_core.models.device import describe_device, resolve_device

        device = describe_device(resolve_device(self.cfg.models.device, self.gpu_assigned))
        return WorkerInfo(socket.gethostname(), os.getpid(), device.device, device_info=device)

    def process_shard(self, task: ShardTask, on_progress: Callable[[int], None] | None = None) -> ShardReport:
        """Label every image of the shard, write its parts and commit marker.

        Args:
            task: the shard.
            on_progress: called with a number of images each time that many are done (progress bars).

        Returns:
            The shard's report. Bad images are error rows, not exceptions: read and decode errors,
            ``ImageInputError`` (e.g. its given boxes) and CUDA out of memory on that image alone.
            Any other exception (a model bug, a storage failure) propagates: the shard is not
            committed and will be retried, and after ``job.max_attempts`` the job stops with it.
        """
        t0 = time.perf_counter()
        image_ids = [task.first_image_id + i for i in range(len(task.uris))]
        store = OutputStore(task.output_uri)
        # Reads start before the models are free: the first images are decoded by the time they are.
        tars = () if task.tar is None else ((task.tar, task.first_image_id),)
        reads = self._read_ahead(image_ids, list(task.uris), task.kind, task.spans, tars)
        with self._models_lock:
            t_models, wait_before = time.perf_counter(), self._input_wait_s
            rows, parts = self._label(reads, on_progress, store)
            models_s, input_wait_s = time.perf_counter() - t_models, self._input_wait_s - wait_before
        # The last batch's encoding and the commit (Parquet parts, marker: the slow part on S3) run
        # outside the lock, while the next shard labels.
        instances = _concat(parts)
        attempt_id = new_attempt_id(task.attempt)
        seconds = time.perf_counter() - t0
        num_errors = sum(r.error is not None for r in rows)
        commit_shard(store, task.plan_id, task.shard_id, attempt_id, images_table(rows, task.shard_id), instances,
                     seconds=seconds, num_errors=num_errors, worker=f"{socket.gethostname()}:{os.getpid()}")
        return ShardReport(task.shard_id, attempt_id, len(rows), num_errors, instances.num_rows,
                           time.perf_counter() - t0, f"{socket.gethostname()}:{os.getpid()}", models_s, input_wait_s)

    def label(self, image_ids: Sequence[int], uris: Sequence[str],
              on_progress: Callable[[int], None] | None = None, kind: str = KIND_FILES,
              spans: Sequence[tuple[int, int]] = (), tars: Sequence[tuple[Container, int]] = ()
              ) -> tuple[list[ImageRow], pa.Table]:
        """Read, decode and label images (``on_progress``, ``kind``, ``spans`` as in ``process_shard``
        and ``ShardTask``).

        Args:
            tars: a tar input: (tar, id of its first image member) of each tar to stream, in order
                (``image_ids`` and ``uris`` are then empty).

        Returns:
            (one ``ImageRow`` per input in image-id order, the ``instances`` table of the ok images).
        """
        reads = self._read_ahead(image_ids, uris, kind, spans, tars)
        with self._models_lock:
            rows, parts = self._label(reads, on_progress, None)
        return rows, _concat(parts)

    def label_stream(self, raw: Iterable[RawImage], on_progress: Callable[[int], None] | None = None
                     ) -> tuple[list[ImageRow], pa.Table]:
        """Decode and label images read elsewhere (a tar stream the caller watches: the sample run
        that prices a tar input), in their order; returns as ``label``."""
        with self._models_lock:
            rows, parts = self._label(self._decode_stream(raw), on_progress, None)
        return rows, _concat(parts)

    def label_decoded(self, images: Sequence[tuple[ImageRow, np.ndarray | None]]
                      ) -> tuple[list[ImageRow], pa.Table]:
        """Label images decoded elsewhere (the Ray Data UDF, ``jobs/ray_data.py``), in one call.

        Args:
            images: per image its row and its (H, W, 3) uint8 BGR pixels, or None when it could not
                be decoded (the row's ``error`` says why; it passes through unlabeled).

        Returns:
            As ``label``: the rows in image-id order, the ``instances`` table of the ok images.
        """
        reads = (_Decoded(row, image_bgr) for row, image_bgr in images)
        with self._models_lock:
            rows, parts = self._label(reads, None, None)
        return rows, _concat(parts)

    def _label(self, reads: Iterator[_Decoded], on_progress: Callable[[int], None] | None,
               store: OutputStore | None) -> tuple[list[ImageRow], list[Future[pa.Table]]]:
        """``label`` on started reads, up to the instances tables still being encoded; ``store``
        receives traces when ``job.trace`` is on."""
        rows: list[ImageRow] = []
        parts: list[Future[pa.Table]] = []
        batch: list[_Decoded] = []
        for decoded in self._timed(reads):
            if decoded.image_bgr is None:
                rows.append(decoded.row)
                if on_progress:
                    on_progress(1)
                continue
            batch.append(decoded)
            if len(batch) == self.cfg.job.batch_size:
                parts.append(self._label_batch(batch, rows, store, parts[-1] if parts else None))
                if on_progress:
                    on_progress(len(batch))
                batch = []
        if batch:
            parts.append(self._label_batch(batch, rows, store, parts[-1] if parts else None))
            if on_progress:
                on_progress(len(batch))
        rows.sort(key=lambda r: r.image_id)
        return rows, parts

    def _timed(self, reads: Iterator[_Decoded]) -> Iterator[_Decoded]:
        """``reads``, adding the time spent waiting for each item to ``_input_wait_s``."""
        while True:
            t0 = time.perf_counter()
            decoded = next(reads, None)
            self._input_wait_s += time.perf_counter() - t0
            if decoded is None:
                return
            yield decoded

    def _read_ahead(self, image_ids: Sequence[int], uris: Sequence[str], kind: str = KIND_FILES,
                    spans: Sequence[tuple[int, int]] = (),
                    tars: Sequence[tuple[Container, int]] = ()) -> Iterator[_Decoded]:
        """Submit the first reads now; the returned iterator yields decoded images in read order
        (loose files: id order; a tar: member order; ``_label`` sorts the rows), keeping at most a
        bounded window read and decoded in advance.

        How depends on the input kind (``InputKind.read_ahead``): a loose file is read and decoded by one task.
        A Parquet row group is read by one task, and its images are then decoded by a task each. A tar is
        streamed front to back on a thread of its own (``read_ahead``), its images decoded by a task each;
        so decoding uses every thread.
        """
        job = self.cfg.job
        window = 2 * job.batch_size + job.decode_threads
        return INPUT_KINDS[kind].read_ahead(ShardEntries(image_ids, uris, spans, tars), job, self._pool,
                                            self._decode_one, window)

    def _decode_stream(self, raw: Iterable[RawImage]) -> Iterator[_Decoded]:
        """A sequential source (a tar stream) read on a thread of its own, decoded on the pool."""
        window = 2 * self.cfg.job.batch_size + self.cfg.job.decode_threads
        return prefetch(self._pool, self._decode_one, read_ahead(raw, window), window)

    def _decode_one(self, raw: RawImage) -> _Decoded:
        row = ImageRow(raw.image_id, raw.uri, error=raw.error, read_s=raw.read_s, container_uri=raw.container_uri,
                       key=raw.key)
        if raw.data is None:
            return _Decoded(row, None)
        t1 = time.perf_counter()
        try:
            image = decode_image_bgr(raw.data, self.cfg.job.max_image_pixels, self.cfg.job.min_image_side)
        except ImageDecodeError as err:
            return _Decoded(_with(row, error=str(err)), None)
        h, w = image.shape[:2]
        return _Decoded(_with(row, width=w, height=h, decode_s=time.perf_counter() - t1), image)

    def _given_for(self, uri: str) -> GivenBoxes | None:
        """The image's given boxes; None when there is no boxes file or it does not name the image."""
        return None if self.given_boxes is None else self.given_boxes.lookup(uri)

    def _label_batch(self, batch: list[_Decoded], rows: list[ImageRow], store: OutputStore | None,
                     previous: Future[pa.Table] | None) -> Future[pa.Table]:
        """Run the loop on a batch; appends the finished rows to ``rows``; returns the future of their
        instances table, encoded on the encode thread after ``previous`` (waited for first, which
        bounds the dense masks alive to this batch and the one being encoded)."""
        given = [self._given_for(d.row.uri) for d in batch]
        if self.models.detector is None:
            # No detector: an image the boxes file does not name can only fail. Say why here,
            # rather than letting the detector fail the whole batch and the retry find the culprit.
            for d, g in zip(batch, given, strict=True):
                if g is None:
                    rows.append(_with(d.row, error=f"no given boxes for this image: job.given_boxes "
                                                   f"({self.cfg.job.given_boxes}) names no file like it, "
                                                   "and the models have no person detector"))
            named = [g is not None for g in given]
            batch = [d for d, ok in zip(batch, named, strict=True) if ok]
            given = [g for g in given if g is not None]
            if not batch:
                return _done(INSTANCES_SCHEMA.empty_table())
        # Images the file does not name (None) go to the detector, as without a boxes file.
        boxes_xyxy = [None if g is None else g.boxes_xyxy for g in given]
        box_scores = [None if g is None else g.scores for g in given]
        images = [d.image_bgr for d in batch]
        trace = self.cfg.job.trace and store is not None
        failure = None
        try:
            results: list[BmpResult | str] = list(run_bmp_batch(
                images, self.models, self.cfg.loop, boxes_xyxy=boxes_xyxy, trace=trace,
                box_scores=box_scores, mask_pool=self.mask_pool))
        except Exception as err:
            if not _is_image_failure(err):
                raise  # not the images' fault: the shard fails, is retried, then stops the job
            failure = f"{type(err).__name__}: {err}"
        if failure is not None:
            # Outside the except block: the traceback (and the tensors its frames hold) is gone
            # before the cache is emptied and the images run again, one at a time, to find the culprit.
            _free_accelerator_memory()
            logger.warning("batch of %d failed (%s); retrying one image at a time", len(batch), failure)
            results = [self._label_one(d.image_bgr, boxes, scores, trace)
                       for d, boxes, scores in zip(batch, boxes_xyxy, box_scores, strict=True)]
        ok = []
        for d, result in zip(batch, results, strict=True):
            if isinstance(result, str):
                rows.append(_with(d.row, error=result))
                continue
            label_s = result.timings_s.get("total")
            rows.append(_with(d.row, num_instances=len(result.instances), label_s=label_s))
            ok.append((d, result))
        if previous is not None:
            previous.result()
        return self._encode_pool.submit(_encode_batch, ok, store if trace else None)

    def _label_one(self, image_bgr: np.ndarray, boxes_xyxy: np.ndarray | None, box_scores: np.ndarray | None,
                   trace: bool) -> BmpResult | str:
        """One image alone: its result, or the reason for its error row when it is the image's fault."""
        failure = None
        try:
            return run_bmp(image_bgr, self.models, self.cfg.loop, boxes_xyxy=boxes_xyxy, trace=trace,
                           box_scores=box_scores, mask_pool=self.mask_pool)
        except Exception as err:
            if not _is_image_failure(err):
                raise
            failure = f"{type(err).__name__}: {err}"
            if _is_out_of_memory(err):
                failure = f"out of GPU memory on this image alone ({failure})"
        _free_accelerator_memory()  # after an OOM, the next image starts from an empty cache
        return f"labeling failed: {failure}"


def _is_image_failure(err: BaseException) -> bool:
    """Whether ``err`` is this image's own problem (an error row) rather than the shard's.

    Two kinds: ``ImageInputError`` (its given boxes; decoding errors never get here) and CUDA out of
    memory, which a single huge image causes (RTMDet-Ins upsamples its masks to full resolution;
    images up to ``job.max_image_pixels`` are accepted), and which would fail every retry of the shard.
    """
    return isinstance(err, ImageInputError) or _is_out_of_memory(err)


def _is_out_of_memory(err: BaseException) -> bool:
    """CUDA out of memory, recognised without importing torch (fake and lite models do not need it):
    ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` is the same class), or the plain
    ``RuntimeError("CUDA out of memory...")`` that some kernels still raise."""
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(err).__mro__):
        return True
    return isinstance(err, RuntimeError) and "CUDA out of memory" in str(err)


def _free_accelerator_memory() -> None:
    """Return the CUDA caching allocator's free blocks, when torch is loaded and CUDA is in use."""
    import gc
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    gc.collect()  # reference cycles may still hold the failed batch's tensors
    torch.cuda.empty_cache()


def _encode_batch(ok: list[tuple[_Decoded, BmpResult]], trace_store: OutputStore | None) -> pa.Table:
    """RLE-encode a batch's instances into an ``instances`` table; write its traces when asked."""
    for d, result in ok:
        if trace_store is not None and result.traces:
            write_traces(trace_store, d.row.image_id, result.traces, d.image_bgr)
    return instances_table([d.row.image_id for d, _ in ok], [result for _, result in ok])


def _concat(parts: list[Future[pa.Table]]) -> pa.Table:
    """The batches' instances tables, in order; an encoding error fails the shard (it is retried)."""
    tables = [part.result() for part in parts]
    return pa.concat_tables(tables) if tables else INSTANCES_SCHEMA.empty_table()


def _done(table: pa.Table) -> Future[pa.Table]:
    future: Future[pa.Table] = Future()
    future.set_result(table)
    return future


def _load_given_box_index(job: JobConfig) -> GivenBoxIndex | None:
    """Read ``job.given_boxes`` (fsspec: local or s3://) once; None when the job has no boxes file."""
    if job.given_boxes is None:
        return None
    t0 = time.perf_counter()
    given = load_given_boxes(job.given_boxes, job.given_boxes_score_thr, job.given_boxes_images)
    logger.info("given boxes: %d boxes for %d images from %s (%.1f s)",
                sum(len(g.boxes_xyxy) for g in given.values()), len(given), job.given_boxes,
                time.perf_counter() - t0)
    return GivenBoxIndex(given)


def _with(row: ImageRow, **changes: object) -> ImageRow:
    from dataclasses import replace

    return replace(row, **changes)
