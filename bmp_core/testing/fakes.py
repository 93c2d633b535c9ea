"""Fake detector, pose estimator and segmenter that satisfy the ports and react to the image.

They are deterministic functions of the image content and their seed, cheap, and shaped so the
loop's logic matters: the fake detector's scores drop where people were blacked out (so pass 2
finds the people hidden behind others), the fake pose is less confident outside the conditioning
mask, and the fake segmenter's masks follow the prompt points.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bmp_core.config import FakeModelsConfig
from bmp_core.ports import BmpModels, Segmenter
from bmp_core.records import Detections, PoseOutput, SegmentOutput

# A standing person in box-normalised (x, y) for COCO-17, and each keypoint's base confidence.
_TEMPLATE_XY = np.array(
    [
        (0.50, 0.08), (0.45, 0.06), (0.55, 0.06), (0.40, 0.08), (0.60, 0.08),  # nose, eyes, ears
        (0.30, 0.22), (0.70, 0.22), (0.20, 0.38), (0.80, 0.38), (0.15, 0.52), (0.85, 0.52),  # arms
        (0.38, 0.55), (0.62, 0.55), (0.38, 0.75), (0.62, 0.75), (0.38, 0.95), (0.62, 0.95),  # legs
    ],
    np.float32,
)
_TEMPLATE_SCORE = np.array(
    [0.90, 0.85, 0.80, 0.60, 0.55, 0.95, 0.93, 0.80, 0.78, 0.70, 0.66, 0.90, 0.88, 0.75, 0.72, 0.50, 0.45],
    np.float32,
)
NON_PERSON_LABEL = 16  # the fake also "detects" a dog, which the loop must drop


def _ellipse(h: int, w: int, box_xyxy: np.ndarray) -> np.ndarray:
    """(H, W) bool filled ellipse inscribed in the box."""
    out = np.zeros((h, w), bool)
    ys, xs, crop = _ellipse_in_box(h, w, box_xyxy)
    out[ys, xs] = crop
    return out


def _ellipse_in_box(h: int, w: int, box_xyxy: np.ndarray) -> tuple[slice, slice, np.ndarray]:
    """The ellipse of ``_ellipse`` drawn only where it can be: (rows, cols, crop) with
    ``_ellipse(h, w, box)[rows, cols] == crop`` and no True pixel of it outside that window.

    Every pixel of the window gets the same float expression as it would on the whole image, so the
    crop is bit-identical to the full-image drawing (tests/unit/test_fakes.py checks it); this keeps
    the fakes' cost per person in proportion to the person, not to the image.
    """
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    ax, ay = max((x2 - x1) / 2, 0.5), max((y2 - y1) / 2, 0.5)
    # A pixel centre (c + 0.5) farther than the half-axis from the centre is outside; one pixel of slack
    # on each side absorbs rounding, and the expression itself decides the rest.
    c0, c1 = _window(cx - ax - 0.5, cx + ax - 0.5, w)
    r0, r1 = _window(cy - ay - 0.5, cy + ay - 0.5, h)
    ys, xs = np.ogrid[r0:r1, c0:c1]
    crop = ((xs + 0.5 - cx) / ax) ** 2 + ((ys + 0.5 - cy) / ay) ** 2 <= 1.0
    return slice(r0, r1), slice(c0, c1), crop


def _slices_window(ys: slice, xs: slice) -> tuple[int, int, int, int]:
    """The ``(x0, y0, x1, y1)`` mask window (records.py) of ``_ellipse_in_box``'s rows and cols."""
    return xs.start, ys.start, xs.stop, ys.stop


def _window(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Integer range [a, b) covering [lo, hi] plus one pixel each side, clipped to [0, size)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return 0, size
    a = min(max(int(np.floor(lo)) - 1, 0), size)
    b = min(max(int(np.ceil(hi)) + 2, a), size)
    return a, b


class FakeDetector:
    """Places ``num_people`` person candidates (plus one dog) per image size, seeded.

    A candidate's score is its base score times the fraction of non-black pixels in its box, and its
    mask is the inscribed ellipse minus black pixels: blacking out a found person lowers the scores
    of what lay under it, exactly the signal BMP's second pass relies on.
    """

    def __init__(self, num_people: int = 8, seed: int = 0, latency_ms: float = 0.0, fail_width: int = 0,
                 fail_with: str = "bug") -> None:
        self.num_people = num_people
        self.seed = seed
        self.latency_ms = latency_ms
        self.fail_width, self.fail_with = fail_width, fail_with
        self.calls = 0

    def candidates(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(M, 4) boxes, (M,) base scores, (M,) labels for an image of size (h, w)."""
        rng = np.random.default_rng([self.seed, h, w])
        n = self.num_people
        bw = rng.uniform(0.18, 0.35, n) * w
        bh = rng.uniform(0.45, 0.85, n) * h
        x1 = rng.uniform(0, 1, n) * (w - bw)
        y1 = rng.uniform(0, 1, n) * (h - bh)
        boxes = np.stack([x1, y1, x1 + bw, y1 + bh], 1)
        scores = rng.uniform(0.45, 0.99, n)
        dog = np.array([[0.05 * w, 0.8 * h, 0.3 * w, 0.98 * h]])
        return (
            np.concatenate([boxes, dog]).astype(np.float32),
            np.concatenate([scores, [0.97]]).astype(np.float32),
            np.concatenate([np.zeros(n, np.int64), [NON_PERSON_LABEL]]),
        )

    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        self.calls += 1
        if self.fail_width and any(image.shape[1] == self.fail_width for image in images_bgr):
            # Fault injection (models.fake.fail_width): the whole call fails, as a real model's would.
            if self.fail_with == "oom":
                raise OutOfMemoryError(f"CUDA out of memory (fake): a {self.fail_width} px wide image")
            raise ValueError(f"fake detector: simulated model bug on a {self.fail_width} px wide image")
        out = []
        for image in images_bgr:
            t0 = time.perf_counter()
            h, w = image.shape[:2]
            boxes, base, labels = self.candidates(h, w)
            lit = image.any(axis=2)
            scores = np.empty(len(boxes), np.float32)
            masks = np.zeros((len(boxes), h, w), bool)
            windows = np.zeros((len(boxes), 4), np.int64)
            for i, (x1, y1, x2, y2) in enumerate(boxes):
                crop = lit[int(y1): int(np.ceil(y2)), int(x1): int(np.ceil(x2))]
                scores[i] = base[i] * (crop.mean() if crop.size else 0.0)
                ys, xs, ellipse = _ellipse_in_box(h, w, boxes[i])
                masks[i, ys, xs] = ellipse & lit[ys, xs]
                windows[i] = _slices_window(ys, xs)
            keep = scores > 0.05  # RTMDet's own score_thr
            out.append(Detections(boxes[keep], scores[keep], labels[keep], masks[keep], windows[keep]))
            if self.latency_ms:  # a fixed cost per image, like an accelerator's: own compute included
                time.sleep(max(0.0, self.latency_ms / 1000.0 - (time.perf_counter() - t0)))
        return out


class OutOfMemoryError(RuntimeError):
    """Stands in for ``torch.OutOfMemoryError`` (same class name, which is how the worker knows it)
    without importing torch."""


class CrowdDetector(FakeDetector):
    """``FakeDetector`` with a crowd: ``num_people`` people in rows of up to 10 that all survive box NMS
    (neighbours overlap by a quarter of a box), plus one person hidden behind every fifth of them (NMS
    drops it in pass 1; blacking out the front person changes its score for pass 2). For benchmarks and
    tests on large images, where ``FakeDetector``'s random boxes would mostly suppress each other.
    """

    def candidates(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, h, w, 1])
        n = self.num_people
        rows = max(1, -(-n // 10))
        per_row = -(-n // rows)
        bw, bh = w / (per_row * 0.75 + 0.25), h / (rows * 0.8 + 0.2)
        k = np.arange(n)
        x1 = (k % per_row) * 0.75 * bw + rng.uniform(-0.03, 0.03, n) * bw
        y1 = (k // per_row) * 0.8 * bh + rng.uniform(0.0, 0.1, n) * bh
        front = np.stack([x1, y1, x1 + bw, y1 + bh * rng.uniform(0.85, 1.0, n)], 1)
        behind = front[::5] + np.array([0.2, 0.05, 0.2, 0.05]) * np.array([bw, bh, bw, bh])
        boxes = np.clip(np.concatenate([front, behind]), 0, [w, h, w, h])
        scores = np.concatenate([rng.uniform(0.6, 0.99, n), rng.uniform(0.35, 0.55, len(behind))])
        return boxes.astype(np.float32), scores.astype(np.float32), np.zeros(len(boxes), np.int64)


class ScriptedDetector:
    """Returns pre-set ``Detections`` per call: ``outputs[call][image]`` (targeted loop tests)."""

    def __init__(self, outputs: Sequence[Sequence[Detections]]) -> None:
        self.outputs = list(outputs)
        self.calls = 0
        self.inputs: list[list[np.ndarray]] = []

    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        self.inputs.append([im.copy() for im in images_bgr])
        out = self.outputs[min(self.calls, len(self.outputs) - 1)]
        self.calls += 1
        return list(out)


class FakePoseEstimator:
    """Template skeleton stretched over each box; confidence from the image and the mask.

    Score = template score x (0.8 + 0.2 x local brightness), halved for a keypoint outside a
    non-empty conditioning mask (the fake's stand-in for MaskPose's background dimming).

    With ``visibility`` (PMPose's extra outputs, ``models.fake.visibility``) it also predicts, per keypoint,
    presence = 0.97 inside the image and 0.05 outside it, and visibility = 0.2 for a keypoint under the
    conditioning mask of a person earlier in the list (the loop's are by descending detector score: taken
    as standing in front), else 0.55 + 0.4 x local brightness. Without it both are None, and the keypoints are exactly
    what they always were (the golden tests).
    """

    def __init__(self, visibility: bool = False) -> None:
        self.visibility = visibility
        self.calls = 0
        self.crops = 0

    def estimate(
        self,
        images_bgr: Sequence[np.ndarray],
        boxes_xyxy: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None],
    ) -> list[PoseOutput]:
        self.calls += 1
        out = []
        for image, boxes, image_masks in zip(images_bgr, boxes_xyxy, masks, strict=True):
            h, w = image.shape[:2]
            kpts = np.zeros((len(boxes), 17, 3), np.float32)
            presence = np.zeros((len(boxes), 17), np.float32)
            visible = np.zeros((len(boxes), 17), np.float32)
            for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float32)):
                self.crops += 1
                xy = np.array([x1, y1]) + _TEMPLATE_XY * np.array([x2 - x1, y2 - y1])
                cols = np.clip(xy[:, 0].astype(int), 0, w - 1)
                rows = np.clip(xy[:, 1].astype(int), 0, h - 1)
                r0, r1 = np.clip(rows - 3, 0, h), np.clip(rows + 4, 0, h)
                c0, c1 = np.clip(cols - 3, 0, w), np.clip(cols + 4, 0, w)
                bright = np.array([_window_gray_mean(image, a, b, c, d)
                                   for a, b, c, d in zip(r0, r1, c0, c1, strict=True)]) / 255.0
                score = _TEMPLATE_SCORE * (0.8 + 0.2 * bright)
                if image_masks is not None and image_masks[i].any():
                    score = np.where(image_masks[i][rows, cols], score, 0.5 * score)
                kpts[i, :, :2] = xy
                kpts[i, :, 2] = score
                if self.visibility:
                    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
                    presence[i] = np.where(inside, 0.97, 0.05)
                    visible[i] = np.where(_under_others(image_masks, i, rows, cols), 0.2, 0.55 + 0.4 * bright)
            out.append(PoseOutput(kpts, presence, visible) if self.visibility else PoseOutput(kpts))
        return out


def _under_others(masks: np.ndarray | None, i: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(K,) bool: the pixels (rows, cols) lie under the mask of a person before person i (in front of it)."""
    if masks is None or i == 0:
        return np.zeros(len(rows), bool)
    return np.asarray(masks[:i])[:, rows, cols].any(axis=0)


def _window_gray_mean(image: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> float:
    """``image.mean(axis=2)[r0:r1, c0:c1].mean()`` without the whole-image gray (the same bits: the gray
    of a pixel does not depend on its neighbours, and numpy sums a small window the same way whether it
    is a slice of a bigger array or not; tests/unit/test_fakes.py checks both on many windows)."""
    return float(image[r0:r1, c0:c1].mean(axis=2).mean())


@dataclass(frozen=True)
class FakePrepared:
    """What ``FakeSegmenter.prepare`` computes once per image."""

    height: int
    width: int
    lit: np.ndarray  # (H, W) bool non-black pixels


class FakeSegmenter(Segmenter):
    """Mask = ellipse around the prompt points' extent (grown 30% + 6 px), on lit pixels only.

    Score = 0.55 + 0.4 x (1 - exp(-K / 3)) + a small position term, so more points -> higher score
    and exclusivity has distinct scores to compare.
    """

    def __init__(self) -> None:
        self.prepare_calls = 0
        self.segment_calls = 0
        self.prompts_seen = 0

    def prepare(self, image_bgr: np.ndarray) -> FakePrepared:
        self.prepare_calls += 1
        h, w = image_bgr.shape[:2]
        return FakePrepared(h, w, image_bgr.any(axis=2))

    def segment(self, prepared: FakePrepared, points_xy: Sequence[np.ndarray]) -> SegmentOutput:
        self.segment_calls += 1
        h, w = prepared.height, prepared.width
        masks = np.zeros((len(points_xy), h, w), bool)
        windows = np.zeros((len(points_xy), 4), np.int64)
        scores = np.zeros(len(points_xy), np.float32)
        for i, pts in enumerate(points_xy):
            self.prompts_seen += 1
            pts = np.asarray(pts, np.float32).reshape(-1, 2)
            lo, hi = pts.min(0), pts.max(0)
            centre, half = (lo + hi) / 2, (hi - lo) / 2 * 1.3 + 6.0
            ys, xs, ellipse = _ellipse_in_box(h, w, np.concatenate([centre - half, centre + half]))
            masks[i, ys, xs] = ellipse & prepared.lit[ys, xs]
            windows[i] = _slices_window(ys, xs)
            scores[i] = 0.55 + 0.4 * (1 - np.exp(-len(pts) / 3)) + 0.04 * ((centre[0] / 97.0) % 1.0)
        return SegmentOutput(masks, scores, windows)


def build_fake_models(cfg: FakeModelsConfig | None = None) -> BmpModels:
    """The three fakes, configured by ``models.fake``."""
    cfg = cfg or FakeModelsConfig()
    return BmpModels(
        detector=FakeDetector(cfg.num_people, cfg.seed, cfg.latency_ms, cfg.fail_width, cfg.fail_with),
        pose=FakePoseEstimator(cfg.visibility),
        segmenter=FakeSegmenter(),
    )


class ModelRecording:
    """Models whose outputs are kept, call by call, so that ``replay`` can return them at zero cost.

    Record a run of the loop with ``recording.models``, then run the loop again on the same images and
    config with ``recording.replay()``: it makes the same calls (the loop is deterministic) and gets the
    same outputs back without any model work, so what is left to time is the loop's own work
    (benchmarks/bench_overhead.py). The replayed arrays are the recorded ones, not copies: the loop
    must not write into model outputs (a replayed second run equal to the first checks that too).
    """

    def __init__(self, models: BmpModels) -> None:
        self.inner = models
        self.detections: list[list[Detections]] = []
        self.poses: list[list[PoseOutput]] = []
        self.segments: list[SegmentOutput] = []
        self.models = BmpModels(_RecordingDetector(self), _RecordingPose(self), _RecordingSegmenter(self))

    def replay(self) -> BmpModels:
        """Fresh zero-cost models that return the recorded outputs in the recorded order."""
        return BmpModels(_Replay(self.detections), _Replay(self.poses), _ReplaySegmenter(self.segments))


class _RecordingDetector:
    def __init__(self, rec: ModelRecording) -> None:
        self.rec = rec

    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        out = self.rec.inner.detector.detect(images_bgr)
        self.rec.detections.append(list(out))
        return out


class _RecordingPose:
    def __init__(self, rec: ModelRecording) -> None:
        self.rec = rec

    def estimate(self, images_bgr: Sequence[np.ndarray], boxes_xyxy: Sequence[np.ndarray],
                 masks: Sequence[np.ndarray | None]) -> list[PoseOutput]:
        out = self.rec.inner.pose.estimate(images_bgr, boxes_xyxy, masks)
        self.rec.poses.append(list(out))
        return out


class _RecordingSegmenter(Segmenter):
    def __init__(self, rec: ModelRecording) -> None:
        self.rec = rec

    def prepare(self, image_bgr: np.ndarray) -> object:
        return self.rec.inner.segmenter.prepare(image_bgr)

    def segment(self, prepared: object, points_xy: Sequence[np.ndarray]) -> SegmentOutput:
        out = self.rec.inner.segmenter.segment(prepared, points_xy)
        self.rec.segments.append(out)
        return out


class _Replay:
    """Detector and pose estimator in one: call ``k`` returns the k-th recorded list."""

    def __init__(self, outputs: list) -> None:
        self.outputs = outputs
        self.calls = 0

    def _next(self, num_images: int) -> list:
        if self.calls >= len(self.outputs) or len(self.outputs[self.calls]) != num_images:
            raise RuntimeError(f"replay call {self.calls} does not match the recording (different images "
                               "or config?)")
        self.calls += 1
        return list(self.outputs[self.calls - 1])

    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        return self._next(len(images_bgr))

    def estimate(self, images_bgr: Sequence[np.ndarray], boxes_xyxy: Sequence[np.ndarray],
                 masks: Sequence[np.ndarray | None]) -> list[PoseOutput]:
        return self._next(len(images_bgr))


class _ReplaySegmenter(Segmenter):
    def __init__(self, outputs: list[SegmentOutput]) -> None:
        self.outputs = outputs
        self.calls = 0

    def prepare(self, image_bgr: np.ndarray) -> object:
        return None

    def segment(self, prepared: object, points_xy: Sequence[np.ndarray]) -> SegmentOutput:
        out = self.outputs[self.calls]
        if len(out.masks) != len(points_xy):
            raise RuntimeError(f"replay segment call {self.calls}: {len(points_xy)} prompts, recorded "
                               f"{len(out.masks)}")
        self.calls += 1
        return out
