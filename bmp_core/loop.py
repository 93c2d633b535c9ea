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
mask store per image whose rows are written once (``bmp_core.mask_store``); the returned
``Instances.masks`` / ``det_masks`` are read-only views of its first rows, and once nothing refers to them any more the
store's memory is lent to a later image (``MaskStorePool``), cleared window by window. The models' mask
windows (``Detections.mask_windows_xyxy``, ``SegmentOutput.mask_windows_xyxy``) are used as given, so
no image-sized mask is read whole. ``bmp_core.testing.dense_ops.run_bmp_dense`` is the plain
whole-image version it must equal bit for bit (tests/unit/test_equivalence.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bmp_core.config import LoopConfig
from bmp_core.errors import check_given_boxes, check_given_scores, check_image_bgr
from bmp_core.mask_store import MaskStore, MaskStorePool, copy_window, shared_pool
from bmp_core.ops.boxes import box_nms
from bmp_core.ops.masks import exclusive_masks, mask_iou, mask_out, mask_windows, window_boxes_xyxy
from bmp_core.ops.pose_nms import keep_old_unless_new_survives, pose_nms
from bmp_core.ops.prompts import K_MOST_VISIBLE, has_prompt, select_most_visible, select_prompt_keypoints
from bmp_core.ports import BmpModels
from bmp_core.records import LOOP_STAGES, BmpResult, Detections, Instances, IterationTrace, PoseOutput


@dataclass
class _ImageState:
    """Mutable per-image state while its passes run (private to this module)."""

    image_bgr: np.ndarray
    pool: MaskStorePool  # where ``store`` comes from and goes back to
    given_boxes_xyxy: np.ndarray | None
    given_scores: np.ndarray | None
    instances: Instances
    detector_input_bgr: np.ndarray
    prepared: Any = None  # the segmenter's handle, computed on first use and reused
    store: MaskStore | None = None  # the instances' mask rows, and this pass's detector masks after them
    new: Detections | None = None  # this pass's filtered detections (masks: rows of ``store``)
    new_windows: np.ndarray | None = None  # (N, 4) int64 pixel windows of ``new.masks`` (ops.masks)
    traces: list[IterationTrace] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOOP_STAGES, 0.0))
    nested_s: list[float] = field(default_factory=list)  # per open ``_timed`` block: its inner blocks' time


@contextmanager
def _timed(states: Sequence[_ImageState], stage: str) -> Iterator[None]:
    """Add the block's seconds to ``stage`` of each of ``states`` (a batched call: split evenly).

    A block timed inside another counts for its own stage only: the outer stage gets its time less
    that of the blocks inside it (``masks`` in ``_refine_with_sam``: the mask work besides SAM's calls).
    """
    for s in states:
        s.nested_s.append(0.0)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        share = (time.perf_counter() - t0) / max(len(states), 1)
        for s in states:
            s.timings_s[stage] += share - s.nested_s.pop()
            if s.nested_s:
                s.nested_s[-1] += share


def run_bmp(
    image_bgr: np.ndarray,
    models: BmpModels,
    cfg: LoopConfig,
    boxes_xyxy: np.ndarray | None = None,
    trace: bool = False,
    box_scores: np.ndarray | None = None,
    mask_pool: MaskStorePool | None = None,
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
        mask_pool: where the image's mask store is lent from and given back to; default: the
            process's pool (``mask_store.shared_pool``; the worker's is bounded by ``job.mask_pool_mb``).

    Returns:
        ``BmpResult``; an image with nobody in it gives 0 instances.
    """
    return run_bmp_batch(
        [image_bgr], models, cfg,
        None if boxes_xyxy is None else [boxes_xyxy], trace,
        None if box_scores is None else [box_scores], mask_pool,
    )[0]


def run_bmp_batch(
    images_bgr: Sequence[np.ndarray],
    models: BmpModels,
    cfg: LoopConfig,
    boxes_xyxy: Sequence[np.ndarray | None] | None = None,
    trace: bool = False,
    box_scores: Sequence[np.ndarray | None] | None = None,
    mask_pool: MaskStorePool | None = None,
) -> list[BmpResult]:
    """Run the BMP loop on several images, batching each model call across them.

    Args:
        images_bgr: B images (H_i, W_i, 3) uint8 BGR.
        boxes_xyxy: None, or B entries of (N_i, 4) boxes / None (see ``run_bmp``).
        box_scores: None, or B entries of (N_i,) scores of those boxes / None.
        mask_pool: see ``run_bmp``.

    Returns:
        B ``BmpResult``s, in input order. Stage timings of batched calls are split evenly.
    """
    if boxes_xyxy is not None and len(boxes_xyxy) != len(images_bgr):
        raise ValueError(f"got {len(boxes_xyxy)} box arrays for {len(images_bgr)} images")
    t_start = time.perf_counter()
    pool = shared_pool() if mask_pool is None else mask_pool
    states = []
    for i, image in enumerate(images_bgr):
        check_image_bgr(image)
        given = None if boxes_xyxy is None or boxes_xyxy[i] is None else check_given_boxes(boxes_xyxy[i])
        scores = None
        if given is not None and box_scores is not None and box_scores[i] is not None:
            scores = check_given_scores(box_scores[i], len(given))
        h, w = image.shape[:2]
        states.append(
            _ImageState(image, pool, given, scores, Instances.empty(h, w, cfg.prompt.num_pos_keypoints), image)
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
            s.pool.give(s.store)
    return results


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
    with _timed(to_detect, "detect"):
        raw = models.detector.detect([s.detector_input_bgr for s in to_detect])
    if len(raw) != len(to_detect):
        raise RuntimeError(f"detector returned {len(raw)} results for {len(to_detect)} images")
    for s, dets in zip(to_detect, raw, strict=True):
        with _timed([s], "filter"):
            s.new, s.new_windows = _filter_people(s, dets, cfg)


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
        s.store = s.pool.take(s.image_bgr.shape[:2], n)
    if masks is None:
        windows = np.zeros((n, 4), np.int64)
    else:  # the detector's windows as they are (tight or not, ops.masks reads inside them), or found
        windows = mask_windows(masks) if enclosing_xyxy is None else enclosing_xyxy
    rows = s.store.pass_rows(masks, windows)
    dets = Detections(np.asarray(boxes_xyxy, np.float32), np.asarray(scores, np.float32), labels, rows)
    return dets, windows


def _pose_and_refine_step(
    states: list[_ImageState], models: BmpModels, cfg: LoopConfig, iteration: int, trace: bool
) -> None:
    with_people = [s for s in states if len(s.new)]
    keypoints_per_image: list[PoseOutput] = []
    if with_people:
        with _timed(with_people, "pose"):
            keypoints_per_image = models.pose.estimate(
                [s.image_bgr for s in with_people],  # the original image, never the masked-out one
                [s.new.boxes_xyxy for s in with_people],
                [s.new.masks for s in with_people],
            )
    poses = {id(s): _checked_pose(k, len(s.new)) for s, k in zip(with_people, keypoints_per_image, strict=True)}
    _prepare_segmenter(with_people, poses, models, cfg)

    for s in states:
        detections = s.new
        if trace:  # the store's rows are compacted by the merge: the trace keeps its own copy
            detections = Detections(detections.boxes_xyxy, detections.scores, detections.labels,
                                    detections.masks.copy())
        num_new = num_removed = 0
        if len(detections):
            num_new, num_removed = _merge_new(s, models, cfg, iteration, s.new, poses[id(s)])
        if trace:
            s.traces.append(IterationTrace(iteration, s.detector_input_bgr, detections, num_new, num_removed))
        if iteration + 1 < cfg.iterations:  # after the last pass nobody reads the next detector input
            with _timed([s], "mask_out"):
                windows = s.store.mask_windows if s.store is not None else np.zeros((0, 4), np.int64)
                s.detector_input_bgr = mask_out(s.image_bgr, s.instances.masks, cfg.masks.mask_out_dilate_px,
                                                windows)
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
    overrides ``prepare_batch`` (SAM 2.1: one encoder forward on the device for the whole batch).

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
        pose = poses[id(s)]
        if has_prompt(pose.keypoints_xys[:, :, 2], p.confidence_thr, p.visibility_thr, pose.visibility,
                      p.selection_method).any():
            todo.append(s)
    if not todo:
        return
    with _timed(todo, "segment_prepare"):
        if len(todo) > 1:
            prepared = models.segmenter.prepare_batch([s.image_bgr for s in todo])
        else:
            prepared = [models.segmenter.prepare(todo[0].image_bgr)]
    for s, handle in zip(todo, prepared, strict=True):
        s.prepared = handle


def _merge_new(s: _ImageState, models: BmpModels, cfg: LoopConfig, iteration: int, dets: Detections,
               pose_new: PoseOutput) -> tuple[int, int]:
    """Pose-NMS, SAM refinement and merge of one image's new detections. Returns (added, removed_old)."""
    with _timed([s], "pose_nms"):
        old, keep_old, dets, det_windows, pose_new = _pose_nms(s, cfg, dets, pose_new)
    s.instances = old
    if len(dets) == 0:
        return 0, int((~keep_old).sum())

    # "masks": the mask work of ``_refine_with_sam``; the stages timed inside it count for their own.
    with _timed([s], "masks"):
        new, windows = _refine_with_sam(s, models, cfg, iteration, dets, det_windows, pose_new, old)
    s.store.add_instances(windows, det_windows)
    s.instances = _with_masks({name: np.concatenate([getattr(old, name), getattr(new, name)])
                               for name in _NOT_MASKS}, s.store)
    return len(new), int((~keep_old).sum())


def _pose_nms(s: _ImageState, cfg: LoopConfig, dets: Detections, pose_new: PoseOutput
              ) -> tuple[Instances, np.ndarray, Detections, np.ndarray, PoseOutput]:
    """Pose-NMS of the old instances and this pass's detections (OKS; with ``remove_losing_old`` an old
    instance goes only when a new one survives); the kept detector masks are compacted to the front of
    this pass's rows. Returns the kept old instances, the (N_old,) keep mask of the old ones, the kept
    detections, their windows and their pose."""
    old = s.instances
    keep = pose_nms(
        np.concatenate([old.keypoints, pose_new.keypoints_xys]),
        np.concatenate([old.boxes_xyxy, dets.boxes_xyxy]),
        cfg.pose_nms.oks_thr,
        cfg.pose_nms.keypoint_thr,
    )
    if cfg.pose_nms.remove_losing_old:
        keep = keep_old_unless_new_survives(keep, len(old))
    keep_old, keep_new = keep[: len(old)], keep[len(old):]
    if not keep_old.all():  # pose-NMS removed earlier instances: their rows go, the kept ones' move up
        kept_old = np.flatnonzero(keep_old)
        s.store.keep_instances(kept_old, s.new_windows)
        old = _with_masks({name: getattr(old, name)[kept_old] for name in _NOT_MASKS}, s.store)
    rows = s.store.keep_pass_rows(keep_new, s.new_windows)
    kept = np.flatnonzero(keep_new)
    det_windows = s.new_windows[kept]
    dets = Detections(dets.boxes_xyxy[kept], dets.scores[kept], dets.labels[kept], rows)
    return old, keep_old, dets, det_windows, pose_new.take(kept)


_NOT_MASKS = tuple(name for name in Instances.__dataclass_fields__ if name not in ("masks", "det_masks"))


def _with_masks(fields: dict[str, np.ndarray], store: MaskStore) -> Instances:
    """``Instances`` of ``fields`` whose masks are views of the store's instance rows."""
    masks, det_masks = store.instance_rows()
    return Instances(masks=masks, det_masks=det_masks, **fields)


def _refine_with_sam(s: _ImageState, models: BmpModels, cfg: LoopConfig, iteration: int, dets: Detections,
                     det_windows: np.ndarray, pose: PoseOutput, old: Instances) -> tuple[Instances, np.ndarray]:
    """SAM masks for the new instances (old ones as context) -> the new ``Instances`` rows and (N, 4)
    windows enclosing their masks.

    The masks are written into the store's rows after the old instances' (all-False until now);
    ``det_windows`` are the pixel windows of ``dets.masks``. Every mask op works inside windows, with
    the same results as on whole-image stacks (ops.masks).
    """
    n = len(dets)
    kpts = pose.keypoints_xys
    with _timed([s], "prompts"):
        prompts, num_points = _prompts(pose, cfg)
    prompted = num_points > 0
    store = s.store
    masks = store.new_instance_rows(n)
    windows = det_windows.copy()
    sam_scores = np.full(n, np.nan, np.float32)
    idx = np.flatnonzero(prompted)
    unprompted = np.flatnonzero(~prompted)
    # An instance without a confident keypoint keeps its detector mask and is not prompted.
    for i in unprompted:
        copy_window(dets.masks[i], masks[i], det_windows[i])
    if len(idx):
        if s.prepared is None:
            with _timed([s], "segment_prepare"):
                s.prepared = models.segmenter.prepare(s.image_bgr)  # once per image, reused every pass
        with _timed([s], "segment"):
            points = [prompts[i, : num_points[i], :2] for i in idx]
            out = models.segmenter.segment(s.prepared, points)
        with _timed([s], "exclusive"):
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
                exclusive_masks(sam_masks, sam_scores[idx], context, context_scores, sam_windows,
                                context_windows, out=targets, out_windows=tight)
                windows[idx] = tight
            else:
                for j, target in enumerate(targets):
                    copy_window(sam_masks[j], target, sam_windows[j])
                windows[idx] = mask_windows(targets, sam_windows)

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
    return new, windows


def _prompts(pose: PoseOutput, cfg: LoopConfig) -> tuple[np.ndarray, np.ndarray]:
    """SAM's positive point prompts from the pose's (N, K, 3) keypoints: (N, P, 3) (x, y, score; unused
    rows 0) and the (N,) number of points each has (0: not prompted). ``k_most_visible`` ranks by the
    pose's visibility (``MissingVisibilityError`` without it)."""
    p = cfg.prompt
    kpts = pose.keypoints_xys
    n = len(kpts)
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
    return prompts, num_points
