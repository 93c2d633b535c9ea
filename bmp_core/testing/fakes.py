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
from bmp_core.ports import BmpModels
from bmp_core.records import Detections, SegmentOutput

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
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    ax, ay = max((x2 - x1) / 2, 0.5), max((y2 - y1) / 2, 0.5)
    ys, xs = np.ogrid[:h, :w]
    return ((xs + 0.5 - cx) / ax) ** 2 + ((ys + 0.5 - cy) / ay) ** 2 <= 1.0


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
            for i, (x1, y1, x2, y2) in enumerate(boxes):
                crop = lit[int(y1): int(np.ceil(y2)), int(x1): int(np.ceil(x2))]
                scores[i] = base[i] * (crop.mean() if crop.size else 0.0)
                masks[i] = _ellipse(h, w, boxes[i]) & lit
            keep = scores > 0.05  # RTMDet's own score_thr
            out.append(Detections(boxes[keep], scores[keep], labels[keep], masks[keep]))
            if self.latency_ms:  # a fixed cost per image, like an accelerator's: own compute included
                time.sleep(max(0.0, self.latency_ms / 1000.0 - (time.perf_counter() - t0)))
        return out


class OutOfMemoryError(RuntimeError):
    """Stands in for ``torch.OutOfMemoryError`` (same class name, which is how the worker knows it)
    without importing torch."""


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
    """

    def __init__(self) -> None:
        self.calls = 0
        self.crops = 0

    def estimate(
        self,
        images_bgr: Sequence[np.ndarray],
        boxes_xyxy: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None],
    ) -> list[np.ndarray]:
        self.calls += 1
        out = []
        for image, boxes, image_masks in zip(images_bgr, boxes_xyxy, masks):
            h, w = image.shape[:2]
            gray = image.mean(axis=2)
            kpts = np.zeros((len(boxes), 17, 3), np.float32)
            for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float32)):
                self.crops += 1
                xy = np.array([x1, y1]) + _TEMPLATE_XY * np.array([x2 - x1, y2 - y1])
                cols = np.clip(xy[:, 0].astype(int), 0, w - 1)
                rows = np.clip(xy[:, 1].astype(int), 0, h - 1)
                r0, r1 = np.clip(rows - 3, 0, h), np.clip(rows + 4, 0, h)
                c0, c1 = np.clip(cols - 3, 0, w), np.clip(cols + 4, 0, w)
                bright = np.array([gray[a:b, c:d].mean() for a, b, c, d in zip(r0, r1, c0, c1)]) / 255.0
                score = _TEMPLATE_SCORE * (0.8 + 0.2 * bright)
                if image_masks is not None and image_masks[i].any():
                    score = np.where(image_masks[i][rows, cols], score, 0.5 * score)
                kpts[i, :, :2] = xy
                kpts[i, :, 2] = score
            out.append(kpts)
        return out


@dataclass(frozen=True)
class FakePrepared:
    """What ``FakeSegmenter.prepare`` computes once per image."""

    height: int
    width: int
    lit: np.ndarray  # (H, W) bool non-black pixels


class FakeSegmenter:
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
        scores = np.zeros(len(points_xy), np.float32)
        for i, pts in enumerate(points_xy):
            self.prompts_seen += 1
            pts = np.asarray(pts, np.float32).reshape(-1, 2)
            lo, hi = pts.min(0), pts.max(0)
            centre, half = (lo + hi) / 2, (hi - lo) / 2 * 1.3 + 6.0
            masks[i] = _ellipse(h, w, np.concatenate([centre - half, centre + half])) & prepared.lit
            scores[i] = 0.55 + 0.4 * (1 - np.exp(-len(pts) / 3)) + 0.04 * ((centre[0] / 97.0) % 1.0)
        return SegmentOutput(masks, scores)


def build_fake_models(cfg: FakeModelsConfig | None = None) -> BmpModels:
    """The three fakes, configured by ``models.fake``."""
    cfg = cfg or FakeModelsConfig()
    return BmpModels(
        detector=FakeDetector(cfg.num_people, cfg.seed, cfg.latency_ms, cfg.fail_width, cfg.fail_with),
        pose=FakePoseEstimator(),
        segmenter=FakeSegmenter(),
    )
