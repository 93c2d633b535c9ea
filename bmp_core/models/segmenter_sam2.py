"""SAM 2.1 image predictor (sam2 1.1.0) behind the ``Segmenter`` port (bmp-method.md §2.4, §5).

- ``build_sam2`` from the sam2 package's own yaml (``configs/sam2.1/sam2.1_hiera_b+.yaml``), image size
  1024, with the decoder's dynamic-multimask-via-stability switched on explicitly (decisions.md: HEAD
  applies it; v1.1 silently did not): with ``multimask_output=False`` a single-token mask whose stability
  score is < 0.98 is replaced by the best of the 3 multimask outputs.
- ``prepare`` converts BGR -> RGB (the reference fed BGR; decisions.md FIX) and computes the image
  embedding once; the returned handle holds it, so the loop reuses it across iterations.
- ``segment`` groups prompts by point count and runs each group as ONE batched decoder call (all
  positive points, no box, no mask input). Batched equals one call per prompt (tests/models).
- The predictor's low-res hole/sprinkle post-processing needs the compiled ``sam2._C``; the install
  builds sam2 without it (SAM2_BUILD_CUDA=0), so sam2 warns once and skips it, as the reference did.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bmp_core.config import SegmenterModelConfig
from bmp_core.models.device import autocast
from bmp_core.records import SegmentOutput


@dataclass(frozen=True)
class SamPrepared:
    """What ``prepare`` computed for one image.

    Attributes:
        features: sam2's ``{"image_embed": (1,C,h,w), "high_res_feats": [...]}`` tensors (model's device).
        image_hw: (H, W) of the original image in pixels.
    """

    features: dict[str, Any]
    image_hw: tuple[int, int]


def sam2_overrides(cfg: SegmenterModelConfig) -> list[str]:
    """Hydra overrides for ``build_sam2``: image size and the dynamic-multimask setting from our config."""
    dynamic = "true" if cfg.dynamic_multimask_via_stability else "false"
    return [
        f"++model.image_size={int(cfg.image_size)}",
        f"++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability={dynamic}",
        f"++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta={float(cfg.stability_delta)}",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh="
        f"{float(cfg.stability_thresh)}",
    ]


class Sam2Segmenter:
    """``Segmenter`` port on ``SAM2ImagePredictor``.

    Args:
        predictor: a ``SAM2ImagePredictor`` around a built SAM 2 model in eval mode.
        device: torch device of the model.
        precision: "fp32" | "bf16" | "fp16" (autocast on CUDA only).
    """

    def __init__(self, predictor: Any, device: Any, precision: str = "fp32") -> None:
        self.predictor = predictor
        self.device = device
        self.precision = precision
        # sam2's predictor keeps the current image in its own attributes; one caller at a time.
        self._lock = threading.Lock()

    def prepare(self, image_bgr: np.ndarray) -> SamPrepared:
        """Image embedding of one (H, W, 3) uint8 BGR image (converted to RGB for SAM)."""
        import torch

        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 BGR, got {image_bgr.shape} {image_bgr.dtype}")
        image_rgb = np.ascontiguousarray(image_bgr[..., ::-1])
        with self._lock:
            with torch.inference_mode(), autocast(self.device, self.precision):
                self.predictor.set_image(image_rgb)
            features = self.predictor._features
            self.predictor.reset_predictor()  # the handle owns the features; no per-image state stays behind
        return SamPrepared(features=features, image_hw=(int(image_bgr.shape[0]), int(image_bgr.shape[1])))

    def segment(self, prepared: SamPrepared, points_xy: Sequence[np.ndarray]) -> SegmentOutput:
        """One mask per prompt (see ``bmp_core.ports.Segmenter``).

        Args:
            prepared: ``prepare``'s handle for this image.
            points_xy: N arrays (K_i, 2) float32 pixel coordinates, all positive, K_i >= 1.

        Returns:
            masks (N, H, W) bool and scores (N,) float32 (SAM's predicted IoU).
        """
        h, w = prepared.image_hw
        masks = np.zeros((len(points_xy), h, w), bool)
        scores = np.zeros((len(points_xy),), np.float32)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, points in enumerate(points_xy):
            points = np.asarray(points, np.float32).reshape(-1, 2)
            if len(points) == 0:
                raise ValueError(f"prompt {i} has no points")
            groups[len(points)].append(i)
        for k, indices in sorted(groups.items()):
            coords = np.stack(
                [np.asarray(points_xy[i], np.float32).reshape(k, 2) for i in indices]
            )  # (B, K, 2)
            group_masks, group_scores = self._predict(prepared, coords)
            masks[indices] = group_masks
            scores[indices] = group_scores
        return SegmentOutput(masks=masks, scores=scores)

    def _predict(self, prepared: SamPrepared, coords_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, H, W) bool masks and (B,) scores for B prompts of K positive points each (one decoder call)."""
        import torch

        b = len(coords_xy)
        p = self.predictor
        with self._lock:
            # Point the predictor at this image's cached embedding (sam2 keeps it as private state).
            p._features, p._orig_hw, p._is_image_set, p._is_batch = (
                prepared.features,
                [prepared.image_hw],
                True,
                False,
            )
            try:
                with torch.inference_mode(), autocast(self.device, self.precision):
                    masks, scores, _ = p.predict(
                        point_coords=coords_xy,
                        point_labels=np.ones(coords_xy.shape[:2], np.int32),
                        box=None,
                        multimask_output=False,
                    )
            finally:
                p.reset_predictor()
        h, w = prepared.image_hw
        # predict() squeezes a batch of 1 away: (1,H,W) for B=1, (B,1,H,W) otherwise; one mask per prompt.
        return masks.reshape(b, h, w) > 0.5, scores.reshape(b).astype(np.float32)


def build_sam2_segmenter(
    cfg: SegmenterModelConfig, device: Any, state_dict: dict[str, Any] | None, precision: str
) -> Sam2Segmenter:
    """Build the SAM 2 adapter; ``state_dict=None`` keeps the (seeded) random initialisation.

    Raises:
        CheckpointError: the state dict does not match the architecture (keys named).
    """
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from bmp_core.models.checkpoints import load_strict

    # apply_postprocessing=False: we pass the same dynamic-multimask overrides ourselves, from the config.
    model = build_sam2(
        cfg.config,
        ckpt_path=None,
        device="cpu",
        mode="eval",
        hydra_overrides_extra=sam2_overrides(cfg),
        apply_postprocessing=False,
    )
    if state_dict is not None:
        load_strict(model, state_dict, f"segmenter ({cfg.config})")
    model.to(device).eval()
    predictor = SAM2ImagePredictor(
        model, mask_threshold=0.0, max_hole_area=cfg.max_hole_area, max_sprinkle_area=cfg.max_sprinkle_area
    )
    # sam2 1.1.0 hard-codes the backbone feature sizes of a 1024 input; derive them from image_size so
    # other sizes work (strides 4, 8, 16 of the Hiera FPN levels used by the decoder).
    s = int(cfg.image_size)
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return Sam2Segmenter(predictor, device, precision)
