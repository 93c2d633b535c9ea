"""Plain whole-image references of the loop's mask operations and of the loop itself, for tests.

``bmp_core.ops.masks`` and ``bmp_core.loop`` work inside each mask's pixel window and keep one mask
store per image; these are the straightforward definitions they replaced, on full (N, H, W) stacks, kept
so that tests can check the fast versions give bit-identical results (tests/unit/test_ops_masks.py,
tests/unit/test_equivalence.py). Slow on large images by design; never used by the job.
"""

from __future__ import annotations

import numpy as np

from bmp_core.config import LoopConfig
from bmp_core.ops.boxes import box_nms
from bmp_core.ops.masks import dilate
from bmp_core.ops.pose_nms import pose_nms
from bmp_core.ops.prompts import K_MOST_VISIBLE, select_most_visible, select_prompt_keypoints
from bmp_core.ports import BmpModels
from bmp_core.records import Detections, Instances, PoseOutput


def exclusive_masks_dense(
    masks: np.ndarray, scores: np.ndarray, context_masks: np.ndarray, context_scores: np.ndarray
) -> np.ndarray:
    """Every pixel to the highest-scoring covering mask (first on ties); only ``masks`` change."""
    n = len(masks)
    if n == 0 or n + len(context_masks) < 2:
        return masks.copy()
    stacked = np.concatenate([masks, context_masks], axis=0)
    all_scores = np.concatenate([scores, context_scores]).astype(np.float64)
    weighted = np.where(stacked, all_scores[:, None, None], -np.inf)
    winner = np.argmax(weighted, axis=0)
    return masks & (winner[None] == np.arange(n)[:, None, None])


def mask_out_dense(image_bgr: np.ndarray, masks: np.ndarray, dilate_px: int = 0) -> np.ndarray:
    out = image_bgr.copy()
    if len(masks):
        out[dilate(np.any(masks, axis=0), dilate_px)] = 0
    return out


def mask_iou_dense(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), int(np.prod(a.shape[1:])))
    b = b.reshape(len(b), int(np.prod(b.shape[1:])))
    inter = np.logical_and(a, b).sum(1)
    union = np.logical_or(a, b).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float32)


def mask_boxes_xyxy_dense(masks: np.ndarray) -> np.ndarray:
    out = np.full((len(masks), 4), np.nan, np.float32)
    for i, mask in enumerate(masks):
        cols = np.flatnonzero(mask.any(axis=0))
        if len(cols) == 0:
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


def run_bmp_dense(
    image_bgr: np.ndarray,
    models: BmpModels,
    cfg: LoopConfig,
    boxes_xyxy: np.ndarray | None = None,
    box_scores: np.ndarray | None = None,
) -> Instances:
    """The BMP loop on one image, written plainly on whole-image stacks (what ``run_bmp`` computes)."""
    h, w = image_bgr.shape[:2]
    instances = Instances.empty(h, w, cfg.prompt.num_pos_keypoints)
    detector_input = image_bgr
    prepared = None
    for iteration in range(cfg.iterations):
        if iteration == 0 and boxes_xyxy is not None:
            n = len(boxes_xyxy)
            scores = np.ones(n, np.float32) if box_scores is None else np.asarray(box_scores, np.float32)
            dets = Detections(np.asarray(boxes_xyxy, np.float32), scores, np.zeros(n, np.int64),
                              np.zeros((n, h, w), bool))
        else:
            dets = _filter_people_dense(models.detector.detect([detector_input])[0], (h, w), cfg)
        if len(dets):
            pose = models.pose.estimate([image_bgr], [dets.boxes_xyxy], [dets.masks])[0]
            kpts = np.asarray(pose.keypoints_xys, np.float32)
            keep = pose_nms(np.concatenate([instances.keypoints, kpts]),
                            np.concatenate([instances.boxes_xyxy, dets.boxes_xyxy]),
                            cfg.pose_nms.oks_thr, cfg.pose_nms.keypoint_thr)
            if cfg.pose_nms.remove_losing_old and not keep[len(instances):].any():
                keep[: len(instances)] = True  # v2: old ones go only when a new one survives
            old = instances.take(keep[: len(instances)])
            kept = keep[len(instances):]
            dets = dets.take(kept)
            pose = PoseOutput(*(None if a is None else np.asarray(a, np.float32)[kept]
                                for a in (pose.keypoints_xys, pose.presence, pose.visibility)))
            instances = old
            if len(dets):
                new, prepared = _refine_dense(image_bgr, models, cfg, iteration, dets, pose, old, prepared)
                instances = Instances.concat(old, new)
        detector_input = mask_out_dense(image_bgr, instances.masks, cfg.masks.mask_out_dilate_px)
    return instances


def _filter_people_dense(dets: Detections, image_hw: tuple[int, int], cfg: LoopConfig) -> Detections:
    h, w = image_hw
    if dets.masks is None:
        dets = Detections(dets.boxes_xyxy, dets.scores, dets.labels, np.zeros((len(dets), h, w), bool))
    c = cfg.detect
    dets = dets.take(np.flatnonzero((dets.labels == c.person_label) & (dets.scores > c.score_thr)))
    order = box_nms(dets.boxes_xyxy, dets.scores, c.nms_iou_thr, c.nms_pixel_offset)
    return Detections(dets.boxes_xyxy[order].astype(np.float32), dets.scores[order].astype(np.float32),
                      dets.labels[order], dets.masks[order].astype(bool))


def _refine_dense(image_bgr: np.ndarray, models: BmpModels, cfg: LoopConfig, iteration: int, dets: Detections,
                  pose: PoseOutput, old: Instances, prepared: object) -> tuple[Instances, object]:
    p = cfg.prompt
    n = len(dets)
    kpts = pose.keypoints_xys
    prompts = np.zeros((n, p.num_pos_keypoints, 3), np.float32)
    chosen_per = []
    for i in range(n):
        if p.selection_method == K_MOST_VISIBLE:
            chosen = select_most_visible(kpts[i], None if pose.visibility is None else pose.visibility[i],
                                         p.num_pos_keypoints, p.confidence_thr, p.visibility_thr)
        else:
            chosen = select_prompt_keypoints(kpts[i], p.num_pos_keypoints, p.confidence_thr, p.visibility_thr,
                                             p.selection_method, p.collapse_face, p.confidence_percentile)
        prompts[i, : len(chosen)] = chosen
        chosen_per.append(chosen)
    prompted = np.array([len(c) > 0 for c in chosen_per], bool)
    masks = dets.masks.copy()
    sam_scores = np.full(n, np.nan, np.float32)
    idx = np.flatnonzero(prompted)
    if len(idx):
        if prepared is None:
            prepared = models.segmenter.prepare(image_bgr)
        points = [chosen_per[i][:, :2] for i in idx]
        out = models.segmenter.segment(prepared, points)
        masks[idx] = out.masks
        sam_scores[idx] = out.scores
        if cfg.masks.exclusive:
            unprompted = np.flatnonzero(~prompted)
            context = np.concatenate([old.masks, masks[unprompted]])
            context_scores = np.concatenate([np.nan_to_num(old.sam_scores), np.zeros(len(unprompted))])
            masks[idx] = exclusive_masks_dense(masks[idx], sam_scores[idx], context, context_scores)
    new = Instances(
        boxes_xyxy=dets.boxes_xyxy.astype(np.float32), det_scores=dets.scores.astype(np.float32),
        keypoints=kpts.astype(np.float32), pose_scores=kpts[:, :, 2].mean(axis=1).astype(np.float32),
        sam_scores=sam_scores, masks=masks, det_masks=dets.masks,
        det_mask_iou=mask_iou_dense(dets.masks, masks),
        iteration=np.full(n, iteration, np.int32), mask_boxes_xyxy=mask_boxes_xyxy_dense(masks),
        prompts=prompts, prompted=prompted, keypoint_presence=pose.presence, keypoint_visibility=pose.visibility,
    )
    return new, prepared
