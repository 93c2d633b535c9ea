"""How well a pose model's predicted per-keypoint visibility separates visible from occluded keypoints.

Ground truth with COCO visibility flags says, per labeled keypoint, visible (``v = 2``) or labeled but
occluded (``v = 1``). For the people a prediction is matched to, every labeled keypoint is one sample:
the label is "visible" (``v = 2``), the score the predicted visibility; the summary is the average
precision of "visible" over those samples (docs/analysis.md), the area under the precision-recall
curve, so 1.0 means every visible keypoint is ranked above every occluded one and the base rate (the
share of visible keypoints) is what a random ranking scores.

Matching (``match_by_oks``), per image, as COCOeval matches at one OKS threshold: predictions in
descending pose score each take the still unmatched ground-truth person they have the highest OKS with,
if that OKS is at least ``oks_thr`` (0.5). Ground truth persons that are crowd regions or have no labeled
keypoint are not matched. OKS is COCO's (its sigmas, the ground truth's area as scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bmp_core.coco_meta import SIGMAS

DEFAULT_OKS_THR = 0.5


@dataclass(frozen=True)
class VisibilityScore:
    """The visibility AP and what it was computed on.

    Attributes:
        ap: average precision of "visible" (v = 2) against "occluded" (v = 1), by predicted visibility.
        num_keypoints: labeled ground-truth keypoints of the matched people (the samples).
        num_occluded: of which ``v = 1``.
        num_people: matched (prediction, ground truth) pairs.
        oks_thr: the matching threshold.
    """

    ap: float
    num_keypoints: int
    num_occluded: int
    num_people: int
    oks_thr: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImagePeople:
    """One image's people for the visibility score.

    Attributes:
        gt_keypoints: (G, 17, 3) ground truth ``(x, y, v)``, only non-crowd people with a labeled keypoint.
        gt_areas: (G,) the OKS scale of each (its ``area``, or 0.53 x box area where the evaluation uses that).
        pred_keypoints: (P, 17, 3) predicted ``(x, y, score)``.
        pred_scores: (P,) the pose scores that order the matching.
        pred_visibility: (P, 17) predicted visibility.
    """

    gt_keypoints: np.ndarray
    gt_areas: np.ndarray
    pred_keypoints: np.ndarray
    pred_scores: np.ndarray
    pred_visibility: np.ndarray


def oks(gt_keypoints: np.ndarray, gt_area: float, pred_keypoints: np.ndarray,
        sigmas: np.ndarray = SIGMAS) -> float:
    """COCO OKS of one prediction against one ground truth with at least one labeled keypoint."""
    labeled = gt_keypoints[:, 2] > 0
    d2 = ((pred_keypoints[:, :2] - gt_keypoints[:, :2]) ** 2).sum(axis=1)
    e = d2 / (2 * np.asarray(sigmas)) ** 2 / (gt_area + np.spacing(1)) / 2
    return float(np.exp(-e)[labeled].mean())


def match_by_oks(people: ImagePeople, oks_thr: float = DEFAULT_OKS_THR) -> list[tuple[int, int]]:
    """(ground truth index, prediction index) pairs of one image (module docstring)."""
    taken: set[int] = set()
    pairs = []
    for p in np.argsort(-np.asarray(people.pred_scores, np.float64), kind="stable"):
        best, best_oks = -1, oks_thr
        for g in range(len(people.gt_keypoints)):
            if g in taken:
                continue
            value = oks(people.gt_keypoints[g], float(people.gt_areas[g]), people.pred_keypoints[p])
            if value >= best_oks:
                best, best_oks = g, value
        if best >= 0:
            taken.add(best)
            pairs.append((best, int(p)))
    return pairs


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve of ranking ``positive`` samples first by ``scores``: the sum
    over distinct score thresholds (high to low) of recall gained x precision there (tied scores enter
    together)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    ends = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]  # last index of each tie group
    tp = np.cumsum(positive)[ends]
    precision = tp / (ends + 1)
    recall_gain = np.diff(np.r_[0, tp]) / max(int(positive.sum()), 1)
    return float((recall_gain * precision).sum())


def visibility_score(images: Sequence[ImagePeople], oks_thr: float = DEFAULT_OKS_THR) -> VisibilityScore | None:
    """``VisibilityScore`` over the images; None when the matched people's labeled keypoints are not both
    visible and occluded ones (nothing to separate) or a matched prediction has no visibility."""
    scores, visible, people = [], [], 0
    for image in images:
        for g, p in match_by_oks(image, oks_thr):
            v = image.gt_keypoints[g, :, 2]
            labeled = v > 0
            predicted = np.asarray(image.pred_visibility[p], np.float64)
            if np.isnan(predicted[labeled]).any():
                return None
            scores.append(predicted[labeled])
            visible.append(v[labeled] == 2)
            people += 1
    if not scores:
        return None
    s, y = np.concatenate(scores), np.concatenate(visible)
    if y.all() or not y.any():
        return None
    return VisibilityScore(average_precision(s, y), len(y), int((~y).sum()), people, oks_thr)


def describe(score: VisibilityScore | None) -> str | None:
    """The one line ``bmp-label eval`` prints (and the report shows); None when not computed."""
    if score is None:
        return None
    visible = score.num_keypoints - score.num_occluded
    return (f"keypoint visibility: AP {score.ap:.3f} ranking visible (v=2) above occluded (v=1) by predicted "
            f"visibility, over {score.num_keypoints} labeled keypoints ({score.num_occluded} occluded; a "
            f"random ranking scores {visible / score.num_keypoints:.3f}) of {score.num_people} people "
            f"matched at OKS >= {score.oks_thr}")
