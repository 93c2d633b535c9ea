"""The BBox-Mask-Pose loop (docs/method.md#the-loop; docs/decisions.md#the-loop).

Per image, for ``cfg.iterations`` passes:
  1. detect people on the masked-out image (pass 0: the original, or the user's boxes),
  2. pose them on the ORIGINAL image, conditioned on the detector masks,
  3. pose-NMS old + new instances (OKS), which may also remove old ones (v2: only when a new one survives),
  4. refine the new instances' masks with SAM, prompted by their confident keypoints,
  5. make the new masks exclusive, merge (old first), and black out every mask for the next pass.

``run_bmp_batch`` runs the passes of several images in lock-step so that each model call covers the
whole batch (one detector call, one pose call per pass); the SAM image embedding is computed once
per image and reused by every pass. The result of an image never depends on the other images of
its batch (tests/unit/test_loop.py checks it against ``run_bmp`` one image at a time).

The loop's own mask work stays where the pixels are: each mask's pixel window (``ops.masks``), and one
mask store per image whose rows are written once (``_MaskStore``); the returned ``Instances.masks`` /
``det_masks`` are read-only views of its first rows, and once nothing refers to them any more the
store's memory is lent to a later image (``_StorePool``), cleared window by window. The models' mask
windows (``Detections.mask_windows_xyxy``, ``SegmentOutput.mask_windows_xyxy``) are used as given, so
no image-sized mask is read whole. ``bmp_core.testing.dense_ops.run_bmp_dense`` is the plain
whole-image version it must equal bit for bit (tests/unit/test_equivalence.py).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bmp_core.config import LoopConfig
from bmp_core.errors import ImageInputError
from bmp_core.ops.boxes import box_nms
from bmp_core.ops.masks import (
    exclusive_masks,
    mask_iou,
    mask_out,
    mask_windows,
    window_boxes_xyxy,
)
from bmp_core.ops.pose_nms import keep_old_unless_new_survives, pose_nms
from bmp_core.ops.prompts import K_MOST_VISIBLE, has_prompt, select_most_visible, select_prompt_keypoints
from bmp_core.ports import BmpModels
from bmp_core.records import BmpResult, Detections, Instances, IterationTrace, PoseOutput

# Model calls (detect, pose, segment_prepare, segment) and the loop's own work between them (filter: the
# detector's person/score/NMS filter; pose_nms; prompts; exclusive; masks: the new rows' masks, IoU and
# boxes; mask_out: the next pass's detector input). Seconds per image; batched calls are split evenly.
_STAGES = ("detect", "filter", "pose", "pose_nms", "prompts", "segment_prepare", "segment", "exclusive",
           "masks", "mask_out", "total")


@dataclass
class _ImageState:
    """Mutable per-image state while its passes run (private to this module)."""

    image_bgr: np.ndarray
    given_boxes_xyxy: np.ndarray | None
    given_scores: np.ndarray | None
    instances: Instances
    detector_input_bgr: np.ndarray
    prepared: Any = None  # the segmenter's handle, computed on first use and reused
    store: _MaskStore | None = None  # the instances' mask rows, and this pass's detector masks after them
    new: Detections | None = None  # this pass's filtered detections (masks: rows of ``store``)
    new_windows: np.ndarray | None = None  # (N, 4) int64 pixel windows of ``new.masks`` (ops.masks)
    traces: list[IterationTrace] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_STAGES, 0.0))


_SPARE_BYTES = 512 * 2**20


class _MaskStore:
    """One image's two mask stacks, with room for the rows later passes add (private to this module).

    Rows ``[0, used)`` of ``masks`` / ``det_masks`` are the current instances' (their ``Instances``
    holds views of those rows); this pass's detector masks go into ``det_masks`` right after them, so
    pose sees them, pose-NMS compacts them and the merge keeps them without a whole-image copy. Rows past
    what was written are never touched: a fresh ``np.zeros`` stack costs only the pages a window writes
    (a person, not the image), where concatenating stacks each pass copied every image-sized row again.
    Rows below ``used`` change only when pose-NMS removes an instance (``_drop_old`` compacts them);
    the ``Instances`` the loop returns are never changed afterwards (their views are read-only).

    The two stacks are views of two flat buffers the store owns. When a run ends, every True pixel of
    the store lies in rows ``[0, used)`` inside their windows (every other row the run wrote was
    cleared window by window), which is what lets ``_StorePool`` lend the buffers to a later image
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
            _clear_window(self.masks[i], self.mask_windows[i])
            _clear_window(self.det_masks[i], self.det_windows[i])
        self.mask_windows = np.zeros((0, 4), np.int64)
        self.det_windows = np.zeros((0, 4), np.int64)
        self.used = 0

    def reshaped(self, image_hw: tuple[int, int]) -> _MaskStore:
        """This cleared, unused store's buffers as stacks of ``image_hw`` rows (as many as they hold)."""
        other = _MaskStore(image_hw, self.buffer_bytes() // max(1, image_hw[0] * image_hw[1]), self._buffers)
        other.touched_bytes = self.touched_bytes
        return other

    @staticmethod
    def for_rows(image_hw: tuple[int, int], rows: int) -> _MaskStore:
        # Room for later passes' detections (RTMDet keeps at most 40 per image) costs address space
        # only, but capped at ~512 MB of it per stack so that huge images do not ask for gigabytes a
        # strict overcommit policy would refuse; more rows than that move into a bigger store (``grow``).
        return _MaskStore(image_hw, _capacity(image_hw, rows))

    def grow(self, extra_rows: int) -> None:
        """Make room for ``extra_rows`` rows past ``used`` (copies the used rows window by window)."""
        if self.used + extra_rows <= len(self.masks):
            return
        bigger = _MaskStore.for_rows(self.masks.shape[1:], self.used + extra_rows)
        for i in range(self.used):
            _copy_window(self.masks[i], bigger.masks[i], self.mask_windows[i])
            _copy_window(self.det_masks[i], bigger.det_masks[i], self.det_windows[i])
        bigger.mask_windows, bigger.det_windows, bigger.used = self.mask_windows, self.det_windows, self.used
        bigger.note_written(self.used)
        self.__dict__.update(bigger.__dict__)


def _capacity(image_hw: tuple[int, int], rows: int) -> int:
    row_bytes = max(1, image_hw[0] * image_hw[1])
    return rows + min(rows + 40, max(4, _SPARE_BYTES // row_bytes))


def _refcounts_track_views() -> bool:
    """Whether ``sys.getrefcount`` sees numpy views of a buffer (CPython's refcounting does); the pool
    relies on it to know a result is gone, and lends nothing where it does not hold."""
    owner = np.zeros(8, bool)
    before = sys.getrefcount(owner)
    view = owner[:4].reshape(2, 2)[1]
    seen = sys.getrefcount(owner) == before + 1
    del view
    return seen and sys.getrefcount(owner) == before


_POOL_BYTES = 1024 * 2**20


class _StorePool:
    """Mask buffers of finished images, lent again to later images (private to this module).

    A fresh store's pages are zero-filled by the kernel on first touch, a few MB per mask window at
    1080p; that cost the loop more than all its mask arithmetic. ``give`` keeps a finished image's
    store (its result may still be alive); ``take`` lends one whose result is gone (``in_use``),
    cleared: one of the same image size if there is one, else the smallest whose buffers hold the
    rows asked for, viewed as stacks of the new size. What the pool keeps is bounded by
    ``_POOL_BYTES`` of written memory (oldest dropped first; a store still in use when dropped is
    simply forgotten, its memory goes with its result): a worker's two batches of results in flight
    fit at 1080p. Thread-safe.
    """

    def __init__(self, max_bytes: int, enabled: bool = True) -> None:
        self.max_bytes = max_bytes
        self.enabled = enabled
        self._stores: list[_MaskStore] = []
        self._lock = threading.Lock()

    def take(self, image_hw: tuple[int, int], rows: int) -> _MaskStore:
        need = _capacity(image_hw, rows) * image_hw[0] * image_hw[1]
        with self._lock:
            free = [s for s in self._stores if not s.in_use()]
            same = [s for s in free if s.masks.shape[1:] == image_hw and len(s.masks) >= rows]
            fits = sorted((s for s in free if s.buffer_bytes() >= need), key=_MaskStore.buffer_bytes)
            store = (same or fits or [None])[0]
            if store is not None:
                self._stores.remove(store)
        if store is None:
            return _MaskStore.for_rows(image_hw, rows)
        store.clear()
        return store if store.masks.shape[1:] == image_hw else store.reshaped(image_hw)

    def give(self, store: _MaskStore) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._stores.append(store)
            total = sum(s.resident_bytes() for s in self._stores)
            while self._stores and total > self.max_bytes:
                total -= self._stores.pop(0).resident_bytes()


_STORE_POOL = _StorePool(_POOL_BYTES, enabled=_refcounts_track_views())


def _copy_window(src: np.ndarray, dst: np.ndarray, window: np.ndarray) -> None:
    x0, y0, x1, y1 = (int(v) for v in window)
    if x1 > x0:
        dst[y0:y1, x0:x1] = src[y0:y1, x0:x1]


def _clear_window(dst: np.ndarray, window: np.ndarray) -> None:
    x0, y0, x1, y1 = (int(v) for v in window)
    if x1 > x0:
        dst[y0:y1, x0:x1] = False


def run_bmp(
    image_bgr: np.ndarray,
    models: BmpModels,
    cfg: LoopConfig,
    boxes_xyxy: np.ndarray | None = None,
    trace: bool = False,
    box_scores: np.ndarray | None = None,
) -> BmpResult:
    """Run the BMP loop on one image.

    Args:
        image_bgr: (H, W, 3) uint8 BGR.
        models: detector, pose estimator and segmenter.
        cfg: loop thresholds.
        boxes_xyxy: optional (N, 4) pixel boxes; pass 0 uses them instead of the detector (no masks,
            so their poses are box-only) and later passes detect as usual.
        trace: keep an ``IterationTrace`` per pass (detector input, detections) for visualisation.
        box_scores: optional (N,) scores of ``boxes_xyxy`` (e.g. from a detections file), kept as
            their ``det_scores``; default 1.0.

    Returns:
        ``BmpResult``; an image with nobody in it gives 0 instances.
    """
    return run_bmp_batch(
        [image_bgr], models, cfg,
        None if boxes_xyxy is None else [boxes_xyxy], trace,
        None if box_scores is None else [box_scores],
    )[0]


def run_bmp_batch(
    images_bgr: Sequence[np.ndarray],
    models: BmpModels,
    cfg: LoopConfig,
    boxes_xyxy: Sequence[np.ndarray | None] | None = None,
    trace: bool = False,
    box_scores: Sequence[np.ndarray | None] | None = None,
) -> list[BmpResult]:
    """Run the BMP loop on several images, batching each model call across them.

    Args:
        images_bgr: B images (H_i, W_i, 3) uint8 BGR.
        boxes_xyxy: None, or B entries of (N_i, 4) boxes / None (see ``run_bmp``).
        box_scores: None, or B entries of (N_i,) scores of those boxes / None.

    Returns:
        B ``BmpResult``s, in input order. Stage timings of batched calls are split evenly.
    """
    if boxes_xyxy is not None and len(boxes_xyxy) != len(images_bgr):
        raise ValueError(f"got {len(boxes_xyxy)} box arrays for {len(images_bgr)} images")
    t_start = time.perf_counter()
    states = []
    for i, image in enumerate(images_bgr):
        _check_image(image)
        given = None if boxes_xyxy is None or boxes_xyxy[i] is None else _check_boxes(boxes_xyxy[i])
        scores = None
        if given is not None and box_scores is not None and box_scores[i] is not None:
            scores = np.asarray(box_scores[i], np.float32).reshape(-1)
            if len(scores) != len(given):
                raise ImageInputError(f"given boxes: {len(scores)} box scores for {len(given)} boxes")
        h, w = image.shape[:2]
        states.append(
            _ImageState(image, given, scores, Instances.empty(h, w, cfg.prompt.num_pos_keypoints), image)
        )

    for iteration in range(cfg.iterations):
        _detect_step(states, models, cfg, iteration)
        _pose_and_refine_step(states, models, cfg, iteration, trace)

    total = (time.perf_counter() - t_start) / max(len(states), 1)
    results = []
    for s in states:
        s.timings_s["total"] = total
        for name in ("masks", "det_masks"):  # views of the store, whose buffers a later image may reuse
            getattr(s.instances, name).flags.writeable = False
        results.append(BmpResult(s.instances, s.image_bgr.shape[:2], dict(s.timings_s), tuple(s.traces)))
        if s.store is not None:
            _STORE_POOL.give(s.store)
    return results


def _check_image(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        shape = getattr(image, "shape", None)
        raise ValueError(f"images must be (H, W, 3) uint8 BGR arrays, got {type(image).__name__} {shape}")


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    """The image's given boxes as (N, 4) float32; their problems are the image's (``ImageInputError``)."""
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ImageInputError(f"given boxes must be (N, 4) xyxy, got shape {boxes.shape}")
    # A NaN or inverted box would reach the pose crop and fail there with a message about affine
    # matrices; say what is wrong with the input instead.
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ImageInputError(f"given box {k} is not a finite xyxy box with x2 >= x1, y2 >= y1: "
                              f"{boxes[k].tolist()} ({int(bad.sum())} such boxes)")
    return boxes


class NoDetectorError(ValueError):
    """A pass needs person detections, but the models have none (``BmpModels.detector`` is None)."""


def _detect_step(states: list[_ImageState], models: BmpModels, cfg: LoopConfig, iteration: int) -> None:
    """Fill ``state.new`` with this pass's person detections (filtered, NMS'd, with masks)."""
    to_detect = []
    for s in states:
        if iteration == 0 and s.given_boxes_xyxy is not None:
            n = len(s.given_boxes_xyxy)
            scores = np.ones(n, np.float32) if s.given_scores is None else s.given_scores
            # User boxes carry no mask: the pose is box-only and SAM draws the first mask.
            s.new, s.new_windows = _into_store(s, s.given_boxes_xyxy, scores, np.zeros(n, np.int64), None)
        else:
            to_detect.append(s)
    if not to_detect:
        return
    if models.detector is None:
        raise NoDetectorError(
            f"pass {iteration} needs person detections, but these models have no person detector: give "
            "the boxes (job.given_boxes, or run_bmp(boxes_xyxy=...)) for every image and set loop.iterations: 1"
        )
    t0 = time.perf_counter()
    raw = models.detector.detect([s.detector_input_bgr for s in to_detect])
    if len(raw) != len(to_detect):
        raise RuntimeError(f"detector returned {len(raw)} results for {len(to_detect)} images")
    dt = (time.perf_counter() - t0) / len(to_detect)
    for s, dets in zip(to_detect, raw, strict=True):
        s.timings_s["detect"] += dt
        t0 = time.perf_counter()
        s.new, s.new_windows = _filter_people(s, dets, cfg)
        s.timings_s["filter"] += time.perf_counter() - t0


def _filter_people(s: _ImageState, dets: Detections, cfg: LoopConfig) -> tuple[Detections, np.ndarray]:
    """Person label, score > thr (strict), then greedy box NMS by descending score.

    Returns the kept detections, their masks copied window by window into the image's store, and the
    (N, 4) pixel windows of those masks.
    """
    c = cfg.detect
    keep = np.flatnonzero((dets.labels == c.person_label) & (dets.scores > c.score_thr))
    order = keep[box_nms(dets.boxes_xyxy[keep], dets.scores[keep], c.nms_iou_thr, c.nms_pixel_offset)]
    picked = None if dets.masks is None else [dets.masks[i] for i in order]  # views of the detector's rows
    enclosing = None if dets.mask_windows_xyxy is None else dets.mask_windows_xyxy[order]
    return _into_store(s, dets.boxes_xyxy[order], dets.scores[order], dets.labels[order], picked, enclosing)


def _into_store(s: _ImageState, boxes_xyxy: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                masks: list[np.ndarray] | None, enclosing_xyxy: np.ndarray | None = None
                ) -> tuple[Detections, np.ndarray]:
    """Detections whose masks are the store's rows after the instances' (all-False for ``masks=None``);
    ``enclosing_xyxy``: the windows the detector gave with its masks (records.py), if any."""
    n = len(boxes_xyxy)
    if s.store is None:
        s.store = _STORE_POOL.take(s.image_bgr.shape[:2], n)
    s.store.grow(n)
    s.store.note_written(s.store.used + n)
    rows = s.store.det_masks[s.store.used: s.store.used + n]
    if masks is None:
        windows = np.zeros((n, 4), np.int64)
    else:  # the detector's windows as they are (tight or not, ops.masks reads inside them), or found
        windows = mask_windows(masks) if enclosing_xyxy is None else enclosing_xyxy
    for j in range(n if masks is not None else 0):
        _copy_window(masks[j], rows[j], windows[j])  # casts to bool as astype(bool) would
    dets = Detections(np.asarray(boxes_xyxy, np.float32), np.asarray(scores, np.float32), labels, rows)
    return dets, windows


def _pose_and_refine_step(
    states: list[_ImageState], models: BmpModels, cfg: LoopConfig, iteration: int, trace: bool
) -> None:
    with_people = [s for s in states if len(s.new)]
    keypoints_per_image: list[PoseOutput] = []
    if with_people:
        t0 = time.perf_counter()
        keypoints_per_image = models.pose.estimate(
            [s.image_bgr for s in with_people],  # the original image, never the masked-out one
            [s.new.boxes_xyxy for s in with_people],
            [s.new.masks for s in with_people],
        )
        dt = (time.perf_counter() - t0) / len(with_people)
        for s in with_people:
            s.timings_s["pose"] += dt
    poses = {id(s): k for s, k in zip(with_people, keypoints_per_image, strict=True)}
    _prepare_segmenter(with_people, poses, models, cfg)

    for s in states:
        detections = s.new
        if trace:  # the store's rows are compacted by the merge: the trace keeps its own copy
            detections = Detections(detections.boxes_xyxy, detections.scores, detections.labels,
                                    detections.masks.copy())
        num_new = num_removed = 0
        if len(detections):
            num_new, num_removed = _merge_new(s, models, cfg, iteration, s.new, _checked_pose(poses[id(s)],
                                                                                                len(detections)))
        if trace:
            s.traces.append(IterationTrace(iteration, s.detector_input_bgr, detections, num_new, num_removed))
        if iteration + 1 < cfg.iterations:  # after the last pass nobody reads the next detector input
            t0 = time.perf_counter()
            windows = s.store.mask_windows if s.store is not None else np.zeros((0, 4), np.int64)
            s.detector_input_bgr = mask_out(s.image_bgr, s.instances.masks, cfg.masks.mask_out_dilate_px,
                                            windows)
            s.timings_s["mask_out"] += time.perf_counter() - t0
        s.new = None


def _checked_pose(pose: PoseOutput, n: int) -> PoseOutput:
    """The pose model's output for ``n`` people as float32 arrays (what the loop's records hold)."""
    if not isinstance(pose, PoseOutput) or len(pose.keypoints_xys) != n:
        raise RuntimeError(f"pose estimator returned {type(pose).__name__} for {n} people, expected a PoseOutput "
                           "(bmp_core.ports.PoseEstimator)")
    return PoseOutput(*(None if a is None else np.asarray(a, np.float32)
                        for a in (pose.keypoints_xys, pose.presence, pose.visibility)))


def _prepare_segmenter(states: list[_ImageState], poses: dict[int, PoseOutput], models: BmpModels,
                       cfg: LoopConfig) -> None:
    """SAM image embeddings of this pass's images that will prompt SAM, in one segmenter call when it
    has ``prepare_batch`` (one encoder forward on the device for the whole batch).

    An image is prepared here only if it has none yet and one of its new people has a keypoint the
    prompt selection would pick (the same test, on the scores), so an image that never prompts SAM is
    never encoded.
    Pose-NMS only removes people, so every person ``_refine_with_sam`` prompts was seen here (it still
    prepares an image that lacks a handle, alone). Embeddings do not depend on the batch, so the
    results are those of preparing each image alone.
    """
    p = cfg.prompt
    todo = []
    for s in states:
        if s.prepared is not None:
            continue
        pose = _checked_pose(poses[id(s)], len(s.new))
        if has_prompt(pose.keypoints_xys[:, :, 2], p.confidence_thr, p.visibility_thr, pose.visibility,
                      p.selection_method).any():
            todo.append(s)
    if not todo:
        return
    t0 = time.perf_counter()
    prepare_batch = getattr(models.segmenter, "prepare_batch", None)
    if prepare_batch is not None and len(todo) > 1:
        prepared = prepare_batch([s.image_bgr for s in todo])
    else:
        prepared = [models.segmenter.prepare(s.image_bgr) for s in todo]
    dt = (time.perf_counter() - t0) / len(todo)
    for s, handle in zip(todo, prepared, strict=True):
        s.prepared = handle
        s.timings_s["segment_prepare"] += dt


def _merge_new(
    s: _ImageState,
    models: BmpModels,
    cfg: LoopConfig,
    iteration: int,
    dets: Detections,
    pose_new: PoseOutput,
) -> tuple[int, int]:
    """Pose-NMS, SAM refinement and merge of one image's new detections. Returns (added, removed_old)."""
    t0 = time.perf_counter()
    old = s.instances
    kpts_new = pose_new.keypoints_xys
    keep = pose_nms(
        np.concatenate([old.keypoints, kpts_new]),
        np.concatenate([old.boxes_xyxy, dets.boxes_xyxy]),
        cfg.pose_nms.oks_thr,
        cfg.pose_nms.keypoint_thr,
    )
    if cfg.pose_nms.remove_losing_old:
        keep = keep_old_unless_new_survives(keep, len(old))
    keep_old, keep_new = keep[: len(old)], keep[len(old):]
    if not keep_old.all():
        old = _drop_old(s, np.flatnonzero(keep_old), len(dets))
    store, base = s.store, s.store.used
    kept = np.flatnonzero(keep_new)
    rows = store.det_masks[base: base + len(dets)]
    # Compact the kept detector masks to the front of this pass's rows; every other row ends all-False.
    for j in np.flatnonzero(~keep_new):
        _clear_window(rows[j], s.new_windows[j])
    for rank, j in enumerate(kept):
        if rank != j:
            _copy_window(rows[j], rows[rank], s.new_windows[j])
            _clear_window(rows[j], s.new_windows[j])
    det_windows = s.new_windows[kept]
    dets = Detections(dets.boxes_xyxy[kept], dets.scores[kept], dets.labels[kept], rows[: len(kept)])
    pose_new = PoseOutput(*(None if a is None else a[kept]
                            for a in (kpts_new, pose_new.presence, pose_new.visibility)))
    s.timings_s["pose_nms"] += time.perf_counter() - t0
    s.instances = old
    if len(dets) == 0:
        return 0, int((~keep_old).sum())

    new, windows = _refine_with_sam(s, models, cfg, iteration, dets, det_windows, pose_new, old)
    store.used += len(new)
    store.mask_windows = np.concatenate([store.mask_windows, windows])
    store.det_windows = np.concatenate([store.det_windows, det_windows])
    fields = {name: np.concatenate([getattr(old, name), getattr(new, name)])
              for name in old.__dataclass_fields__ if name not in ("masks", "det_masks")}
    s.instances = Instances(masks=store.masks[: store.used], det_masks=store.det_masks[: store.used],
                            **fields)
    return len(new), int((~keep_old).sum())


def _drop_old(s: _ImageState, kept: np.ndarray, num_new: int) -> Instances:
    """Pose-NMS removed earlier instances: compact the kept ones' rows (and this pass's detector rows
    after them) in place, window by window, so no row of the image is copied or faulted in anew.

    In place is safe: the ``Instances`` that showed the old rows is the loop's own and is replaced here.
    """
    old, store = s.instances, s.store
    dropped = np.setdiff1d(np.arange(len(old)), kept)
    for i in dropped:
        _clear_window(store.masks[i], store.mask_windows[i])
        _clear_window(store.det_masks[i], store.det_windows[i])
    # Every move goes to a lower row that is all-False by then (dropped and cleared, or moved away and
    # cleared): ascending order never overwrites a row still to be moved.
    for rank, i in enumerate(kept):
        if rank != i:
            _move_window(store.masks, i, rank, store.mask_windows[i])
            _move_window(store.det_masks, i, rank, store.det_windows[i])
    for j in range(num_new):
        _move_window(store.det_masks, store.used + j, len(kept) + j, s.new_windows[j])
    store.mask_windows, store.det_windows = store.mask_windows[kept], store.det_windows[kept]
    store.used = len(kept)
    fields = {name: getattr(old, name)[kept] for name in old.__dataclass_fields__
              if name not in ("masks", "det_masks")}
    return Instances(masks=store.masks[: store.used], det_masks=store.det_masks[: store.used], **fields)


def _move_window(stack: np.ndarray, src: int, dst: int, window: np.ndarray) -> None:
    if src != dst:
        _copy_window(stack[src], stack[dst], window)
        _clear_window(stack[src], window)


def _refine_with_sam(
    s: _ImageState,
    models: BmpModels,
    cfg: LoopConfig,
    iteration: int,
    dets: Detections,
    det_windows: np.ndarray,
    pose: PoseOutput,
    old: Instances,
) -> tuple[Instances, np.ndarray]:
    """SAM masks for the new instances (old ones as context) -> the new ``Instances`` rows and (N, 4)
    windows enclosing their masks.

    The masks are written into the store's rows after the old instances' (all-False until now);
    ``det_windows`` are the pixel windows of ``dets.masks``. Every mask op works inside windows, with
    the same results as on whole-image stacks (ops.masks).
    """
    t0 = time.perf_counter()
    p = cfg.prompt
    n = len(dets)
    kpts = pose.keypoints_xys
    prompts = np.zeros((n, p.num_pos_keypoints, 3), np.float32)
    num_points = np.zeros(n, np.int64)
    for i in range(n):
        if p.selection_method == K_MOST_VISIBLE:
            chosen = select_most_visible(kpts[i], None if pose.visibility is None else pose.visibility[i],
                                         p.num_pos_keypoints, p.confidence_thr, p.visibility_thr)
        else:
            chosen = select_prompt_keypoints(
                kpts[i], p.num_pos_keypoints, p.confidence_thr, p.visibility_thr,
                p.selection_method, p.collapse_face, p.confidence_percentile,
            )
        prompts[i, : len(chosen)] = chosen
        num_points[i] = len(chosen)
    prompted = num_points > 0
    s.timings_s["prompts"] += time.perf_counter() - t0

    t_masks, elsewhere = time.perf_counter(), 0.0  # "masks": this function's mask work besides the stages
    store = s.store
    masks = store.masks[store.used: store.used + n]
    windows = det_windows.copy()
    sam_scores = np.full(n, np.nan, np.float32)
    idx = np.flatnonzero(prompted)
    unprompted = np.flatnonzero(~prompted)
    # An instance without a confident keypoint keeps its detector mask and is not prompted.
    for i in unprompted:
        _copy_window(dets.masks[i], masks[i], det_windows[i])
    if len(idx):
        if s.prepared is None:
            t0 = time.perf_counter()
            s.prepared = models.segmenter.prepare(s.image_bgr)  # once per image, reused every pass
            elsewhere += _add_time(s, "segment_prepare", t0)
        t0 = time.perf_counter()
        points = [prompts[i, : num_points[i], :2] for i in idx]
        out = models.segmenter.segment(s.prepared, points)
        elsewhere += _add_time(s, "segment", t0)
        t0 = time.perf_counter()
        sam_masks = np.asarray(out.masks, bool)
        sam_windows = mask_windows(sam_masks) if out.mask_windows_xyxy is None else out.mask_windows_xyxy
        sam_scores[idx] = out.scores
        targets = [masks[i] for i in idx]
        if cfg.masks.exclusive:
            # Context: older instances, and this pass's unprompted ones (score 0: they never win).
            context = [*old.masks, *(dets.masks[i] for i in unprompted)]  # views, no whole-image copies
            context_windows = np.concatenate([store.mask_windows, det_windows[unprompted]])
            context_scores = np.concatenate([np.nan_to_num(old.sam_scores), np.zeros(len(unprompted))])
            tight = np.zeros((len(idx), 4), np.int64)
            exclusive_masks(sam_masks, sam_scores[idx], context, context_scores, sam_windows, context_windows,
                            out=targets, out_windows=tight)
            windows[idx] = tight
        else:
            for j, target in enumerate(targets):
                _copy_window(sam_masks[j], target, sam_windows[j])
            windows[idx] = mask_windows(targets, sam_windows)
        elsewhere += _add_time(s, "exclusive", t0)

    # Tight now (the prompted ones' were found as they were written): the mask boxes, and every later
    # window op on these rows, use them.
    windows[unprompted] = mask_windows([masks[i] for i in unprompted], det_windows[unprompted])
    new = Instances(
        boxes_xyxy=dets.boxes_xyxy.astype(np.float32),
        det_scores=dets.scores.astype(np.float32),
        keypoints=kpts.astype(np.float32),
        pose_scores=kpts[:, :, 2].mean(axis=1).astype(np.float32),
        sam_scores=sam_scores,
        masks=masks,
        det_masks=dets.masks,
        det_mask_iou=mask_iou(dets.masks, masks, det_windows, windows),
        iteration=np.full(n, iteration, np.int32),
        mask_boxes_xyxy=window_boxes_xyxy(windows),
        prompts=prompts,
        prompted=prompted,
        keypoint_presence=pose.presence,
        keypoint_visibility=pose.visibility,
    )
    s.timings_s["masks"] += time.perf_counter() - t_masks - elsewhere
    return new, windows


def _add_time(s: _ImageState, stage: str, t0: float) -> float:
    """Add the time since ``t0`` to ``stage``; returns it."""
    dt = time.perf_counter() - t0
    s.timings_s[stage] += dt
    return dt
