"""The BBox-Mask-Pose loop (decisions.md "The loop"; bmp-method.md §1).

Per image, for ``cfg.iterations`` passes:
  1. detect people on the masked-out image (pass 0: the original, or the user's boxes),
  2. pose them on the ORIGINAL image, conditioned on the detector masks,
  3. pose-NMS old + new instances (OKS), which may also remove old ones,
  4. refine the new instances' masks with SAM, prompted by their confident keypoints,
  5. make the new masks exclusive, merge (old first), and black out every mask for the next pass.

``run_bmp_batch`` runs the passes of several images in lock-step so that each model call covers the
whole batch (one detector call, one pose call per pass); the SAM image embedding is computed once
per image and reused by every pass. The result of an image never depends on the other images of
its batch (tests/unit/test_loop.py checks it against ``run_bmp`` one image at a time).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bmp_core.config import LoopConfig
from bmp_core.ops.boxes import box_nms
from bmp_core.ops.masks import (
    copy_masks,
    exclusive_masks,
    mask_boxes_xyxy,
    mask_iou,
    mask_out,
    mask_windows,
    windows_from_boxes,
)
from bmp_core.ops.pose_nms import pose_nms
from bmp_core.ops.prompts import select_prompt_keypoints
from bmp_core.ports import BmpModels
from bmp_core.records import BmpResult, Detections, Instances, IterationTrace

_STAGES = ("detect", "pose", "pose_nms", "segment_prepare", "segment", "total")


@dataclass
class _ImageState:
    """Mutable per-image state while its passes run (private to this module)."""

    image_bgr: np.ndarray
    given_boxes_xyxy: np.ndarray | None
    given_scores: np.ndarray | None
    instances: Instances
    detector_input_bgr: np.ndarray
    prepared: Any = None  # the segmenter's handle, computed on first use and reused
    new: Detections | None = None  # this pass's filtered detections
    new_windows: np.ndarray | None = None  # (N, 4) int64 pixel windows of ``new.masks`` (ops.masks)
    det_windows: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))  # of instances.det_masks
    traces: list[IterationTrace] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_STAGES, 0.0))


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
                raise ValueError(f"image {i}: {len(scores)} box scores for {len(given)} boxes")
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
        results.append(BmpResult(s.instances, s.image_bgr.shape[:2], dict(s.timings_s), tuple(s.traces)))
    return results


def _check_image(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        shape = getattr(image, "shape", None)
        raise ValueError(f"images must be (H, W, 3) uint8 BGR arrays, got {type(image).__name__} {shape}")


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"given boxes must be (N, 4) xyxy, got shape {boxes.shape}")
    return boxes


def _detect_step(states: list[_ImageState], models: BmpModels, cfg: LoopConfig, iteration: int) -> None:
    """Fill ``state.new`` with this pass's person detections (filtered, NMS'd, with masks)."""
    to_detect = []
    for s in states:
        h, w = s.image_bgr.shape[:2]
        if iteration == 0 and s.given_boxes_xyxy is not None:
            n = len(s.given_boxes_xyxy)
            scores = np.ones(n, np.float32) if s.given_scores is None else s.given_scores
            # User boxes carry no mask: the pose is box-only and SAM draws the first mask.
            s.new = Detections(s.given_boxes_xyxy, scores, np.zeros(n, np.int64), np.zeros((n, h, w), bool))
            s.new_windows = np.zeros((n, 4), np.int64)
        else:
            to_detect.append(s)
    if not to_detect:
        return
    t0 = time.perf_counter()
    raw = models.detector.detect([s.detector_input_bgr for s in to_detect])
    if len(raw) != len(to_detect):
        raise RuntimeError(f"detector returned {len(raw)} results for {len(to_detect)} images")
    dt = (time.perf_counter() - t0) / len(to_detect)
    for s, dets in zip(to_detect, raw):
        s.timings_s["detect"] += dt
        s.new, s.new_windows = _filter_people(dets, s.image_bgr.shape[:2], cfg)


def _filter_people(dets: Detections, image_hw: tuple[int, int], cfg: LoopConfig
                   ) -> tuple[Detections, np.ndarray]:
    """Person label, score > thr (strict), then greedy box NMS by descending score.

    Returns the kept detections (masks copied out of the detector's stack, window by window) and the
    (N, 4) pixel windows of their masks.
    """
    h, w = image_hw
    c = cfg.detect
    keep = np.flatnonzero((dets.labels == c.person_label) & (dets.scores > c.score_thr))
    order = keep[box_nms(dets.boxes_xyxy[keep], dets.scores[keep], c.nms_iou_thr, c.nms_pixel_offset)]
    if dets.masks is None:
        masks, windows = np.zeros((len(order), h, w), bool), np.zeros((len(order), 4), np.int64)
    else:
        picked = [dets.masks[i] for i in order]  # views: only their windows are copied
        windows = mask_windows(picked)
        masks = copy_masks(picked, windows, (h, w))
    return Detections(
        dets.boxes_xyxy[order].astype(np.float32),
        dets.scores[order].astype(np.float32),
        dets.labels[order],
        masks,
    ), windows


def _pose_and_refine_step(
    states: list[_ImageState], models: BmpModels, cfg: LoopConfig, iteration: int, trace: bool
) -> None:
    with_people = [s for s in states if len(s.new)]
    keypoints_per_image: list[np.ndarray] = []
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
    poses = {id(s): k for s, k in zip(with_people, keypoints_per_image)}

    for s in states:
        detections = s.new
        num_new = num_removed = 0
        if len(detections):
            kpts_new = np.asarray(poses[id(s)], np.float32).reshape(len(detections), -1, 3)[:, :17]
            num_new, num_removed = _merge_new(s, models, cfg, iteration, detections, kpts_new)
        if trace:
            s.traces.append(IterationTrace(iteration, s.detector_input_bgr, detections, num_new, num_removed))
        if iteration + 1 < cfg.iterations:  # after the last pass nobody reads the next detector input
            s.detector_input_bgr = mask_out(s.image_bgr, s.instances.masks, cfg.masks.mask_out_dilate_px,
                                            windows_from_boxes(s.instances.mask_boxes_xyxy))
        s.new = None


def _merge_new(
    s: _ImageState,
    models: BmpModels,
    cfg: LoopConfig,
    iteration: int,
    dets: Detections,
    kpts_new: np.ndarray,
) -> tuple[int, int]:
    """Pose-NMS, SAM refinement and merge of one image's new detections. Returns (added, removed_old)."""
    t0 = time.perf_counter()
    old = s.instances
    keep = pose_nms(
        np.concatenate([old.keypoints, kpts_new]),
        np.concatenate([old.boxes_xyxy, dets.boxes_xyxy]),
        cfg.pose_nms.oks_thr,
        cfg.pose_nms.keypoint_thr,
    )
    keep_old, keep_new = keep[: len(old)], keep[len(old):]
    det_windows = s.new_windows
    if not keep_old.all():
        old, s.det_windows = _take(old, s.det_windows, np.flatnonzero(keep_old))
    if not keep_new.all():
        picked = np.flatnonzero(keep_new)
        det_windows = det_windows[picked]
        dets = Detections(dets.boxes_xyxy[picked], dets.scores[picked], dets.labels[picked],
                          copy_masks([dets.masks[i] for i in picked], det_windows, old.masks.shape[1:]))
        kpts_new = kpts_new[picked]
    s.timings_s["pose_nms"] += time.perf_counter() - t0
    s.instances = old
    if len(dets) == 0:
        return 0, int((~keep_old).sum())

    new = _refine_with_sam(s, models, cfg, iteration, dets, det_windows, kpts_new, old)
    if len(old) == 0:  # nothing to merge with: the new rows are fresh arrays, used as they are
        s.instances, s.det_windows = new, det_windows
    else:
        s.instances = _concat(old, new, s.det_windows, det_windows)
        s.det_windows = np.concatenate([s.det_windows, det_windows])
    return len(new), int((~keep_old).sum())


def _take(inst: Instances, det_windows: np.ndarray, index: np.ndarray) -> tuple[Instances, np.ndarray]:
    """``inst.take(index)`` with the two mask stacks copied window by window; and their det windows."""
    fields = {name: getattr(inst, name)[index] for name in inst.__dataclass_fields__
              if name not in ("masks", "det_masks")}
    hw = inst.masks.shape[1:]
    masks = copy_masks([inst.masks[i] for i in index], windows_from_boxes(inst.mask_boxes_xyxy[index]), hw)
    det_masks = copy_masks([inst.det_masks[i] for i in index], det_windows[index], hw)
    return Instances(masks=masks, det_masks=det_masks, **fields), det_windows[index]


def _concat(old: Instances, new: Instances, old_det_windows: np.ndarray, new_det_windows: np.ndarray
            ) -> Instances:
    """``Instances.concat(old, new)`` with the two mask stacks copied window by window."""
    fields = {name: np.concatenate([getattr(old, name), getattr(new, name)])
              for name in old.__dataclass_fields__ if name not in ("masks", "det_masks")}
    masks = copy_masks([*old.masks, *new.masks], windows_from_boxes(fields["mask_boxes_xyxy"]))
    det_masks = copy_masks([*old.det_masks, *new.det_masks], np.concatenate([old_det_windows, new_det_windows]))
    return Instances(masks=masks, det_masks=det_masks, **fields)


def _refine_with_sam(
    s: _ImageState,
    models: BmpModels,
    cfg: LoopConfig,
    iteration: int,
    dets: Detections,
    det_windows: np.ndarray,
    kpts: np.ndarray,
    old: Instances,
) -> Instances:
    """SAM masks for the new instances (old ones as context) -> the new ``Instances`` rows.

    ``det_windows`` are the pixel windows of ``dets.masks`` (ops.masks); every mask op below works
    inside windows, with the same results as on whole-image stacks.
    """
    p = cfg.prompt
    n = len(dets)
    prompts = np.zeros((n, p.num_pos_keypoints, 3), np.float32)
    prompted = np.zeros(n, bool)
    for i in range(n):
        chosen = select_prompt_keypoints(
            kpts[i], p.num_pos_keypoints, p.confidence_thr, p.visibility_thr,
            p.selection_method, p.collapse_face, p.confidence_percentile,
        )
        prompts[i, : len(chosen)] = chosen
        prompted[i] = len(chosen) > 0

    # An instance without a confident keypoint keeps its detector mask and is not prompted.
    rows: list[np.ndarray] = list(dets.masks)  # per instance: its final mask (views, copied at the end)
    windows = det_windows.copy()
    sam_scores = np.full(n, np.nan, np.float32)
    idx = np.flatnonzero(prompted)
    if len(idx):
        if s.prepared is None:
            t0 = time.perf_counter()
            s.prepared = models.segmenter.prepare(s.image_bgr)  # once per image, reused every pass
            s.timings_s["segment_prepare"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        points = [prompts[i, : int((prompts[i, :, 2] > 0).sum()), :2] for i in idx]
        out = models.segmenter.segment(s.prepared, points)
        sam_masks = np.asarray(out.masks, bool)
        sam_windows = mask_windows(sam_masks)
        sam_scores[idx] = out.scores
        if cfg.masks.exclusive:
            # Context: older instances, and this pass's unprompted ones (score 0: they never win).
            unprompted = np.flatnonzero(~prompted)
            context = [*old.masks, *(dets.masks[i] for i in unprompted)]  # views, no whole-image copies
            context_windows = np.concatenate([windows_from_boxes(old.mask_boxes_xyxy), det_windows[unprompted]])
            context_scores = np.concatenate([np.nan_to_num(old.sam_scores), np.zeros(len(unprompted))])
            sam_masks = exclusive_masks(sam_masks, sam_scores[idx], context, context_scores,
                                        sam_windows, context_windows)
        for j, i in enumerate(idx):
            rows[i] = sam_masks[j]
        windows[idx] = sam_windows  # they enclose the exclusive masks too (those only lose pixels)
        s.timings_s["segment"] += time.perf_counter() - t0
    masks = copy_masks(rows, windows, dets.masks.shape[1:])

    return Instances(
        boxes_xyxy=dets.boxes_xyxy.astype(np.float32),
        det_scores=dets.scores.astype(np.float32),
        keypoints=kpts.astype(np.float32),
        pose_scores=kpts[:, :, 2].mean(axis=1).astype(np.float32),
        sam_scores=sam_scores,
        masks=masks,
        det_masks=dets.masks,
        det_mask_iou=mask_iou(dets.masks, masks, det_windows, windows),
        iteration=np.full(n, iteration, np.int32),
        mask_boxes_xyxy=mask_boxes_xyxy(masks, windows),
        prompts=prompts,
        prompted=prompted,
    )
