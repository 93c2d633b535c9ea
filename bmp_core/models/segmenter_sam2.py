"""SAM 2.1 image predictor (sam2 1.1.0) behind the ``Segmenter`` port (docs/method.md#sam-21).

- ``build_sam2`` from the sam2 package's own yaml (``configs/sam2.1/sam2.1_hiera_b+.yaml``), image size
  1024, with the decoder's dynamic-multimask-via-stability switched on explicitly (the newer reference
  applies it; v1.1 silently did not: docs/decisions.md#dynamic-multimask-via-stability-on): with
  ``multimask_output=False`` a single-token mask whose stability score is < 0.98 is replaced by the best of
  the 3 multimask outputs.
- ``prepare_batch`` converts BGR -> RGB (the reference fed BGR; docs/decisions.md#sam-gets-rgb) and computes
  the image embeddings of several images in ONE encoder call; each returned handle holds its image's embedding, so
  the loop reuses it across iterations. The images travel to the device as uint8 and are resized to
  1024x1024 and normalised there (what ``SAM2Transforms`` does on the CPU, op for op).
- ``segment`` groups prompts by point count and runs each group as ONE batched decoder call (all
  positive points, no box, no mask input). Batched equals one call per prompt (tests/models).
- Precision: only the image encoder runs under autocast (``models.segmenter.precision``, default
  ``models.precision``; bf16 or fp32, never fp16, whose range SAM's activations overflow into NaN). The
  prompt encoder and mask decoder run in fp32: their logits are thresholded at 0 and their scores decide
  who owns a contested pixel. A non-finite score raises ``NonFiniteScoreError``.
- Low-res hole/sprinkle post-processing: sam2 runs it only when its CUDA extension ``sam2._C`` is
  compiled, which neither this install nor the reference's builds, so the reference's effective setting
  is "off" (docs/decisions.md#sam-post-processing-off-the-same-everywhere). We never let sam2 run it:
  ``max_hole_area`` / ``max_sprinkle_area`` default to 0, and non-zero values run ``fill_holes_and_sprinkles``
  below (cv2 connected components, 8-connected like sam2's kernel), which gives the same masks with or
  without ``sam2._C``.

What runs between the encoder and the upsampled masks is sam2's ``SAM2ImagePredictor.set_image`` /
``_predict`` (Apache-2.0), called piece by piece so that it can be batched and kept on the device; with
fp32 on CPU the masks and scores equal the predictor's own, bit for bit (tests/models).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bmp_core.config import SegmenterModelConfig
from bmp_core.models.device import autocast
from bmp_core.models.windows import tight_windows
from bmp_core.ports import Segmenter
from bmp_core.records import SegmentOutput

# SAM2Transforms' ImageNet statistics (RGB, on [0, 1] pixels).
_MEAN_RGB = (0.485, 0.456, 0.406)
_STD_RGB = (0.229, 0.224, 0.225)


class NonFiniteScoreError(RuntimeError):
    """SAM predicted a NaN/inf score: the model or its numerics are broken, not the image."""


@dataclass(frozen=True)
class SamPrepared:
    """What ``prepare`` computed for one image.

    Attributes:
        features: sam2's ``{"image_embed": (1,C,h,w), "high_res_feats": [...]}`` fp32 tensors (model's
            device).
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


def sam_input(image_bgr: Any, image_size: int) -> Any:
    """One image tensor on its device -> SAM's (1, 3, S, S) float32 input.

    ``image_bgr`` is the (H, W, 3) uint8 BGR image as a torch tensor (already on the model's device, so
    only uint8 bytes cross the bus). The steps are ``SAM2Transforms`` op for op: RGB, ``ToTensor``
    (float32 / 255), ``Resize((S, S))`` (bilinear, antialias, skipped when already S x S), ``Normalize``
    with ImageNet mean/std; on the same device that gives the same values bit for bit.
    """
    import torch
    import torch.nn.functional as F

    x = image_bgr.flip(-1).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    if tuple(x.shape[-2:]) != (image_size, image_size):
        size = [image_size, image_size]
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    mean = torch.as_tensor(_MEAN_RGB, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(_STD_RGB, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub_(mean).div_(std)[None]


def small_components(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Pixels of ``mask`` (H, W bool) in 8-connected components of at most ``max_area`` pixels."""
    import cv2

    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] <= max_area
    small[0] = False  # label 0 is everything outside ``mask``
    return small[labels]


def fill_holes_and_sprinkles(
    low_res_logits: Any, mask_threshold: float, max_hole_area: float, max_sprinkle_area: float
) -> Any:
    """sam2's low-res mask post-processing (``SAM2Transforms.postprocess_masks``) without ``sam2._C``.

    On (B, C, h, w) logits: background components (logit <= threshold) of area <= ``max_hole_area``
    become foreground (threshold + 10), then foreground components (logit > threshold, found on the
    ORIGINAL logits, as sam2 does) of area <= ``max_sprinkle_area`` become background (threshold - 10).
    Areas in low-res pixels, 8-connectivity (sam2's CUDA kernel). 0 switches a step off. The
    components are found on the host (cv2); the logits stay where they are.
    """
    import torch

    logits = low_res_logits.float()
    if max_hole_area <= 0 and max_sprinkle_area <= 0:
        return logits
    host = logits.detach().cpu().numpy()
    holes = np.zeros(host.shape, bool)
    sprinkles = np.zeros(host.shape, bool)
    for idx in np.ndindex(*host.shape[:2]):
        if max_hole_area > 0:
            holes[idx] = small_components(host[idx] <= mask_threshold, max_hole_area)
        if max_sprinkle_area > 0:
            sprinkles[idx] = small_components(host[idx] > mask_threshold, max_sprinkle_area)
    out = torch.where(torch.from_numpy(holes).to(logits.device), mask_threshold + 10.0, logits)
    return torch.where(torch.from_numpy(sprinkles).to(logits.device), mask_threshold - 10.0, out)


class Sam2Segmenter(Segmenter):
    """``Segmenter`` port on a SAM 2 model (held by a ``SAM2ImagePredictor``, whose state we do not use).

    Args:
        predictor: a ``SAM2ImagePredictor`` around a built SAM 2 model in eval mode, built with
            ``max_hole_area=max_sprinkle_area=0`` (so sam2 never needs ``sam2._C``).
        device: torch device of the model.
        precision: "fp32" | "bf16" for the image encoder (autocast on CUDA only).
        max_hole_area: see ``fill_holes_and_sprinkles`` (0 = off, the reference's effective setting).
        max_sprinkle_area: see ``fill_holes_and_sprinkles`` (0 = off).
        mask_threshold: logit above which a pixel is in the mask (sam2's default 0).

    Raises:
        ValueError: ``precision`` is fp16 (or unknown).
    """

    def __init__(
        self,
        predictor: Any,
        device: Any,
        precision: str = "fp32",
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        mask_threshold: float = 0.0,
    ) -> None:
        import torch

        if precision not in ("fp32", "bf16"):
            raise ValueError(f"SAM 2.1 runs in fp32 or bf16, not {precision!r} (fp16 overflows into NaN)")
        self.predictor = predictor
        self.device = torch.device(device)
        self.precision = precision
        self.max_hole_area = float(max_hole_area)
        self.max_sprinkle_area = float(max_sprinkle_area)
        self.mask_threshold = float(mask_threshold)

    @property
    def image_size(self) -> int:
        return int(self.predictor.model.image_size)

    def prepare(self, image_bgr: np.ndarray) -> SamPrepared:
        """Image embedding of one (H, W, 3) uint8 BGR image (converted to RGB for SAM)."""
        return self.prepare_batch([image_bgr])[0]

    def prepare_batch(self, images_bgr: Sequence[np.ndarray]) -> list[SamPrepared]:
        """Image embeddings of B (H_i, W_i, 3) uint8 BGR images, one encoder call for all of them.

        Each image is uploaded as uint8 and preprocessed on the device (``sam_input``). Each handle's
        features are that image's slice of the batch (fp32), equal to ``prepare`` of it alone on CPU.
        """
        import torch

        for i, image in enumerate(images_bgr):
            ok = isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
            if not ok or image.dtype != np.uint8:
                got = f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}"
                raise ValueError(f"image {i}: expected (H, W, 3) uint8 BGR, got {got}")
        if not images_bgr:
            return []
        model = self.predictor.model
        s = self.image_size
        with torch.inference_mode():
            uploads = [torch.from_numpy(np.ascontiguousarray(im)).to(self.device) for im in images_bgr]
            batch = torch.cat([sam_input(image, s) for image in uploads])
            with autocast(self.device, self.precision):
                backbone_out = model.forward_image(batch)
                _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
                # As SAM2ImagePredictor.set_image: no_mem_embed goes on the lowest-resolution map.
                if model.directly_add_no_mem_embed:
                    vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
            # Strides 4, 8, 16 of the Hiera FPN levels the decoder uses (sam2 1.1.0 hard-codes 1024's).
            sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
            b = len(images_bgr)
            feats = [
                feat.permute(1, 2, 0).reshape(b, -1, *size).float()
                for feat, size in zip(vision_feats[::-1], sizes[::-1], strict=True)
            ][::-1]
        out = []
        for i, image in enumerate(images_bgr):
            high_res = [f[i : i + 1] for f in feats[:-1]]
            features = {"image_embed": feats[-1][i : i + 1], "high_res_feats": high_res}
            out.append(SamPrepared(features=features, image_hw=(int(image.shape[0]), int(image.shape[1]))))
        return out

    def segment(self, prepared: SamPrepared, points_xy: Sequence[np.ndarray]) -> SegmentOutput:
        """One mask per prompt (see ``bmp_core.ports.Segmenter``).

        Args:
            prepared: ``prepare``'s handle for this image.
            points_xy: N arrays (K_i, 2) float32 pixel coordinates, all positive, K_i >= 1.

        Returns:
            masks (N, H, W) bool and scores (N,) float32 (SAM's predicted IoU), every score finite.

        Raises:
            NonFiniteScoreError: SAM predicted a NaN/inf score (broken weights or numerics).
        """
        h, w = prepared.image_hw
        masks = np.zeros((len(points_xy), h, w), bool)
        windows = np.zeros((len(points_xy), 4), np.int64)
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
            group_masks, group_scores, group_windows = self._predict(prepared, coords)
            masks[indices] = group_masks
            scores[indices] = group_scores
            windows[indices] = group_windows
        if not np.isfinite(scores).all():
            bad = np.flatnonzero(~np.isfinite(scores)).tolist()
            raise NonFiniteScoreError(
                f"SAM predicted non-finite scores {scores[bad].tolist()} for prompts {bad} of a {w}x{h} "
                f"image (encoder precision {self.precision}); a NaN score would win every contested pixel, "
                "so nothing is labelled with it: check the segmenter checkpoint, or use models.precision=fp32"
            )
        return SegmentOutput(masks=masks, scores=scores, mask_windows_xyxy=windows)

    def _predict(self, prepared: SamPrepared, coords_xy: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, H, W) bool masks, (B,) scores and (B, 4) mask windows for B prompts of K positive points
        each (one decoder call).

        sam2's ``predict(point_coords, point_labels, multimask_output=False)`` with its coordinate
        transform, prompt encoder, mask decoder and upsampling, in fp32, thresholded on the device so that
        only bool masks are copied to the host; their windows are found there too (``models.windows``).
        """
        import torch
        import torch.nn.functional as F

        model = self.predictor.model
        h, w = prepared.image_hw
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            coords = torch.as_tensor(coords_xy, dtype=torch.float, device=self.device).clone()
            coords[..., 0] = coords[..., 0] / w  # SAM2Transforms.transform_coords(normalize=True)
            coords[..., 1] = coords[..., 1] / h
            coords = coords * self.image_size
            labels = torch.ones(coords.shape[:2], dtype=torch.int, device=self.device)
            sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            feats = prepared.features
            low_res, iou, _, _ = model.sam_mask_decoder(
                image_embeddings=feats["image_embed"],
                image_pe=model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
                repeat_image=len(coords_xy) > 1,  # one image, B prompts
                high_res_features=feats["high_res_feats"],
            )
            low_res = fill_holes_and_sprinkles(
                low_res, self.mask_threshold, self.max_hole_area, self.max_sprinkle_area
            )
            logits = F.interpolate(low_res, (h, w), mode="bilinear", align_corners=False)
            masks = logits > self.mask_threshold
            return (masks[:, 0].cpu().numpy(), iou[:, 0].float().cpu().numpy().astype(np.float32),
                    tight_windows(masks[:, 0]))


def build_sam2_segmenter(
    cfg: SegmenterModelConfig, device: Any, state_dict: dict[str, Any] | None, precision: str
) -> Sam2Segmenter:
    """Build the SAM 2 adapter; ``state_dict=None`` keeps the (seeded) random initialisation.

    ``precision`` is ``models.precision``; ``cfg.precision``, when set, overrides it for SAM.

    Raises:
        CheckpointError: the state dict does not match the architecture (keys named).
        ValueError: the resolved precision is fp16.
    """
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from bmp_core.models.checkpoints import load_strict
    from bmp_core.models.device import construction_device

    # apply_postprocessing=False: we pass the same dynamic-multimask overrides ourselves, from the config.
    model = build_sam2(
        cfg.config,
        ckpt_path=None,
        device=construction_device(device),
        mode="eval",
        hydra_overrides_extra=sam2_overrides(cfg),
        apply_postprocessing=False,
    )
    if state_dict is not None:
        load_strict(model, state_dict, f"segmenter ({cfg.config})")
    model.to(device).eval()
    # 0 / 0: sam2's own post-processing needs sam2._C; ours runs in Sam2Segmenter (same with or without).
    predictor = SAM2ImagePredictor(model, mask_threshold=0.0, max_hole_area=0.0, max_sprinkle_area=0.0)
    # sam2 1.1.0 hard-codes the backbone feature sizes of a 1024 input; derive them from image_size so
    # other sizes work with the predictor's own set_image too (strides 4, 8, 16 of the Hiera FPN levels).
    s = int(cfg.image_size)
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return Sam2Segmenter(
        predictor, device, cfg.precision or precision, cfg.max_hole_area, cfg.max_sprinkle_area, 0.0
    )
