"""MaskPose / ViTPose (mmpose 1.3.2 + mmpretrain ViT) behind the ``PoseEstimator`` port (bmp-method.md §3).

MaskPose is a plain top-down ViTPose whose input image is conditioned on the instance mask: the
background is blended toward black, ``out = (1 - alpha) * img + alpha * img * mask`` with alpha 0.2,
on the full image before the crop. No extra channel, no extra parameters, so the stock mmpose
``TopdownPoseEstimator`` (ViT backbone, classic heatmap head) runs it; the blending, the UDP crop and
the batching are ours:

1. per instance: the mask's outer contours rasterised as polygons (holes filled, as the reference does),
   the background outside them dimmed; centre/scale from the xyxy box, padded 1.25, aspect fixed to
   192:256 by growing the short side; UDP warp matrix (mmpose's ``get_udp_warp_matrix``), bilinear
   ``warpAffine``, border 0,
2. every crop of every image in one batch (chunks of ``batch_size``), BGR -> RGB, ImageNet mean/std,
3. flip test: the mirrored crops go through the same forward; their heatmaps are mirrored back, left and
   right channels swapped, and averaged with the plain ones (flip_mode heatmap, no shift),
4. the first 17 of the 21 channels (COCO) are decoded with mmpose's UDP codec (argmax + DARK-UDP,
   blur 11) and mapped back to the original image through the crop's centre/scale.

An instance with an all-False mask (or ``masks=None``) is posed from its box without blending.
The plain ViTPose-b multi-dataset checkpoint is the same network: use ``mask_conditioning: false``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bmp_core.config import PoseModelConfig
from bmp_core.models import _compat
from bmp_core.models.device import autocast
from bmp_core.records import NUM_KEYPOINTS

# ViT trunks of ViTPose-{s,b,l,h} (mmpretrain arch dicts) and their drop-path rates (train-time only).
_VIT_ARCHS: dict[str, tuple[dict[str, int], float]] = {
    "s": (dict(embed_dims=384, num_layers=12, num_heads=12, feedforward_channels=1536), 0.1),
    "b": (dict(embed_dims=768, num_layers=12, num_heads=12, feedforward_channels=3072), 0.3),
    "l": (dict(embed_dims=1024, num_layers=24, num_heads=16, feedforward_channels=4096), 0.5),
    "h": (dict(embed_dims=1280, num_layers=32, num_heads=16, feedforward_channels=5120), 0.55),
}
# Architecture names the config may use -> ViT size. MaskPose-b is ViTPose-b with mask-blended input.
ARCHITECTURES = {f"{family}-{size}": size for family in ("maskpose", "vitpose") for size in _VIT_ARCHS}

# Left/right swap for the flip test: COCO-17 pairs, then the 4 midline extras of the 21-keypoint
# COCO+MPII+AIC space (thorax, neck, head top, pelvis) map to themselves.
COCO_FLIP_INDICES = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


def flip_indices(num_keypoints: int) -> list[int]:
    """Flip permutation for a head of ``num_keypoints`` >= 17 channels (extras beyond COCO are midline)."""
    if num_keypoints < NUM_KEYPOINTS:
        raise ValueError(f"the pose head needs >= {NUM_KEYPOINTS} channels, got {num_keypoints}")
    return COCO_FLIP_INDICES + list(range(NUM_KEYPOINTS, num_keypoints))


def vitpose_model_config(arch: str, num_keypoints: int, input_size_wh: tuple[int, int]) -> dict[str, Any]:
    """mmpose model config of a top-down ViTPose/MaskPose (mmpose's shipped ViTPose configs, K channels).

    Args:
        arch: one of ``ARCHITECTURES`` (e.g. ``maskpose-b``, ``vitpose-s``).
        num_keypoints: heatmap channels (21 for MaskPose / ViTPose multi, 17 for COCO-only).
        input_size_wh: crop (width, height); heatmaps are a quarter of it.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown pose architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    vit, drop_path = _VIT_ARCHS[ARCHITECTURES[arch]]
    w, h = input_size_wh
    codec = dict(type="UDPHeatmap", input_size=(w, h), heatmap_size=(w // 4, h // 4), sigma=2)
    return dict(
        type="TopdownPoseEstimator",
        data_preprocessor=dict(
            type="PoseDataPreprocessor",
            mean=list(IMAGENET_MEAN_RGB),
            std=list(IMAGENET_STD_RGB),
            bgr_to_rgb=True,
        ),
        backbone=dict(
            type="mmpretrain.VisionTransformer",
            arch=dict(vit),
            img_size=(h, w),
            patch_size=16,
            qkv_bias=True,
            drop_path_rate=drop_path,
            with_cls_token=False,
            out_type="featmap",
            patch_cfg=dict(padding=2),
            init_cfg=None,  # weights come from our checkpoint (or stay random), never a download
        ),
        head=dict(
            type="HeatmapHead",
            in_channels=vit["embed_dims"],
            out_channels=num_keypoints,
            deconv_out_channels=(256, 256),
            deconv_kernel_sizes=(4, 4),
            loss=dict(type="KeypointMSELoss", use_target_weight=True),
            decoder=codec,
        ),
        test_cfg=dict(flip_test=True, flip_mode="heatmap", shift_heatmap=False),
    )


# --------------------------------------------------------------------------------------------
# Preprocessing (pure numpy/cv2; tested against hand-computed values)


def box_center_scale(box_xyxy: np.ndarray, padding: float, aspect_wh: float) -> tuple[np.ndarray, np.ndarray]:
    """Crop centre (x, y) and size (w, h) in pixels: the box padded by ``padding``, its short side grown to
    the aspect ratio ``aspect_wh`` (width / height).

    A degenerate box (zero width and height) gets a 1-pixel crop instead of a division by zero.
    """
    from mmpose.structures.bbox import bbox_xyxy2cs

    center, scale = bbox_xyxy2cs(np.asarray(box_xyxy, np.float32), padding=padding)
    w, h = float(scale[0]), float(scale[1])
    if w > h * aspect_wh:
        h = w / aspect_wh
    else:
        w = h * aspect_wh
    scale = np.maximum(np.array([w, h], np.float32), 1.0)
    return center.astype(np.float32), scale


def udp_warp_matrix(center: np.ndarray, scale: np.ndarray, input_size_wh: tuple[int, int]) -> np.ndarray:
    """(2, 3) float32 affine matrix image -> crop under UDP (no rotation); mmpose's implementation."""
    from mmpose.structures.bbox import get_udp_warp_matrix

    return get_udp_warp_matrix(center, scale, 0.0, output_size=tuple(input_size_wh))


def dim_image(image_bgr: np.ndarray, alpha: float) -> np.ndarray:
    """(H, W, 3) uint8 ``(1 - alpha) * img``, truncated toward zero (numpy ``astype``), as a uint8 image
    computed in float and cast back would be."""
    return (image_bgr.astype(np.float32) * np.float32(1.0 - alpha)).astype(np.uint8)


def blend_background(
    image_bgr: np.ndarray, mask: np.ndarray, alpha: float, dimmed_bgr: np.ndarray | None = None
) -> np.ndarray:
    """MaskPose conditioning: ``(1 - alpha) * img + alpha * img * mask``; foreground unchanged.

    Args:
        image_bgr: (H, W, 3) uint8.
        mask: (H, W) bool.
        alpha: background dimming; pixels outside the mask become ``(1 - alpha)`` of their value.
        dimmed_bgr: ``dim_image(image_bgr, alpha)`` when already computed (once per image, not per person).

    Returns:
        (H, W, 3) uint8.
    """
    if dimmed_bgr is None:
        dimmed_bgr = dim_image(image_bgr, alpha)
    return np.where(mask[..., None], image_bgr, dimmed_bgr)


def outer_polygon_mask(mask: np.ndarray, min_points: int = 4) -> np.ndarray:
    """The conditioning mask as the reference builds it: outer contours only, rasterised as polygons.

    MaskPose was trained on COCO polygon masks, and the reference's inference turns a binary mask into
    its outer contours (``RETR_EXTERNAL``; contours with fewer than 4 points dropped) and rasterises those
    polygons with pycocotools. Holes inside the mask are therefore filled, and specks vanish.

    Args:
        mask: (H, W) bool.
        min_points: contours with fewer points are dropped (a polygon needs more than 3).

    Returns:
        (H, W) bool; all False when no contour survives (the instance is then posed from its box).
    """
    import cv2
    from pycocotools import mask as mask_utils

    h, w = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = [c.reshape(-1).astype(np.float64).tolist() for c in contours if len(c) >= min_points]
    if not polygons:
        return np.zeros((h, w), bool)
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    return mask_utils.decode(rle).astype(bool)


def crop_to_input(image_bgr: np.ndarray, warp: np.ndarray, input_size_wh: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 crop through ``warp``: bilinear, constant-0 border (mmpose's TopdownAffine)."""
    import cv2

    return cv2.warpAffine(image_bgr, warp, tuple(input_size_wh), flags=cv2.INTER_LINEAR)


def crops_to_tensor(crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 3, h, w) float32 network input: BGR -> RGB, ImageNet mean/std."""
    batch = np.stack(crops_bgr)[..., ::-1].astype(np.float32)
    batch = (batch - np.float32(IMAGENET_MEAN_RGB)) / np.float32(IMAGENET_STD_RGB)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------


class MaskPoseEstimator:
    """``PoseEstimator`` port on an mmpose TopdownPoseEstimator (MaskPose or plain ViTPose).

    Args:
        model: built mmpose ``TopdownPoseEstimator`` in eval mode on ``device`` (weights loaded).
        device: torch device.
        cfg: pose settings (padding, alpha, flip test, input size, batch size).
        precision: "fp32" | "bf16" | "fp16" (autocast on CUDA only).
    """

    def __init__(self, model: Any, device: Any, cfg: PoseModelConfig, precision: str = "fp32") -> None:
        self.model = model
        self.device = device
        self.cfg = cfg
        self.precision = precision
        self.input_size_wh = (int(cfg.input_size_wh[0]), int(cfg.input_size_wh[1]))
        self.num_channels = int(model.head.out_channels)
        self.flip_indices = flip_indices(self.num_channels)
        self.codec = model.head.decoder  # mmpose UDPHeatmap: argmax + DARK-UDP

    # -- preprocessing -------------------------------------------------------------------------

    def prepare_crops(
        self, image_bgr: np.ndarray, boxes_xyxy: np.ndarray, masks: np.ndarray | None
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Crops of one image.

        Returns:
            N crops (h, w, 3) uint8 BGR, centres (N, 2) and sizes (N, 2) float32 in image pixels.
        """
        w, h = self.input_size_wh
        crops, centers, scales = [], [], []
        dimmed: np.ndarray | None = None  # the dimmed image, shared by every person of this image
        for i, box in enumerate(np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)):
            source = image_bgr
            if self.cfg.mask_conditioning and masks is not None and masks[i].any():
                mask = outer_polygon_mask(masks[i]) if self.cfg.mask_as_polygons else masks[i]
                if mask.any():  # a mask of specks only: no usable polygon, pose from the box
                    if dimmed is None:
                        dimmed = dim_image(image_bgr, self.cfg.mask_alpha)
                    source = blend_background(image_bgr, mask, self.cfg.mask_alpha, dimmed)
            center, scale = box_center_scale(box, self.cfg.bbox_padding, w / h)
            crops.append(crop_to_input(source, udp_warp_matrix(center, scale, (w, h)), (w, h)))
            centers.append(center)
            scales.append(scale)
        return (
            crops,
            np.array(centers, np.float32).reshape(-1, 2),
            np.array(scales, np.float32).reshape(-1, 2),
        )

    # -- the port ------------------------------------------------------------------------------

    def estimate(
        self,
        images_bgr: Sequence[np.ndarray],
        boxes_xyxy: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None],
    ) -> list[np.ndarray]:
        """17 COCO keypoints per box (see ``bmp_core.ports.PoseEstimator``).

        Returns:
            B arrays (N_i, 17, 3) float32 ``(x, y, score)`` in original-image pixels.
        """
        if not (len(images_bgr) == len(boxes_xyxy) == len(masks)):
            raise ValueError("images_bgr, boxes_xyxy and masks must have one entry per image")
        crops: list[np.ndarray] = []
        centers, scales, counts = [], [], []
        for image, boxes, image_masks in zip(images_bgr, boxes_xyxy, masks):
            c, ctr, scl = self.prepare_crops(image, boxes, image_masks)
            crops.extend(c)
            centers.append(ctr)
            scales.append(scl)
            counts.append(len(c))
        keypoints = np.zeros((len(crops), NUM_KEYPOINTS, 3), np.float32)
        if crops:
            heatmaps = self.heatmaps(crops_to_tensor(crops))[:, :NUM_KEYPOINTS]  # 21 -> 17: COCO first
            keypoints = self.decode(heatmaps, np.concatenate(centers), np.concatenate(scales))
        return list(np.split(keypoints, np.cumsum(counts)[:-1])) if counts else []

    # -- model ---------------------------------------------------------------------------------

    def heatmaps(self, inputs: np.ndarray) -> np.ndarray:
        """(N, K, h/4, w/4) float32 heatmaps of a normalised (N, 3, h, w) batch, flip-averaged if enabled."""
        import torch
        from mmpose.models.utils.tta import flip_heatmaps

        out = []
        bs = max(1, int(self.cfg.batch_size))
        for start in range(0, len(inputs), bs):
            x = torch.from_numpy(inputs[start : start + bs]).to(self.device)
            n = len(x)
            if self.cfg.flip_test:
                x = torch.cat([x, x.flip(-1)])  # plain + mirrored crops in one forward
            with torch.inference_mode(), autocast(self.device, self.precision):
                hm = self.model.head.forward(self.model.extract_feat(x)).float()
            if self.cfg.flip_test:
                flipped = flip_heatmaps(
                    hm[n:], flip_indices=self.flip_indices, flip_mode="heatmap", shift_heatmap=False
                )
                hm = (hm[:n] + flipped) * 0.5
            out.append(hm.cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def decode(self, heatmaps: np.ndarray, centers: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """(N, K, 3) ``(x, y, score)`` in image pixels from (N, K, H, W) heatmaps, crop centres, sizes."""
        from mmpose.codecs.utils import get_heatmap_maximum

        input_wh = np.array(self.input_size_wh, np.float32)
        # One heatmap pixel in crop pixels, as mmpose's UDP decode scales it (u -> u * w / (W - 1)).
        hm_px = input_wh / (np.array(heatmaps.shape[:1:-1], np.float32) - 1)
        out = np.zeros((len(heatmaps), heatmaps.shape[1], 3), np.float32)
        for i, hm in enumerate(heatmaps):
            xy_input, scores = self.codec.decode(hm)  # (1, K, 2) in crop pixels, (1, K)
            # DARK is a sub-pixel refinement; on flat or non-Gaussian heatmaps its Newton step can jump far
            # off (seen with random weights: hundreds of pixels). Keep it within one heatmap pixel of the
            # argmax; on well-formed peaks this never binds.
            argmax_uv, _ = get_heatmap_maximum(hm)
            anchor = argmax_uv * hm_px
            xy = np.clip(xy_input[0], anchor - hm_px, anchor + hm_px)
            out[i, :, :2] = xy / input_wh * scales[i] + centers[i] - 0.5 * scales[i]
            out[i, :, 2] = scores[0]
        return out


def build_maskpose(
    cfg: PoseModelConfig, device: Any, state_dict: dict[str, Any] | None, precision: str
) -> MaskPoseEstimator:
    """Build the pose adapter; ``state_dict=None`` keeps the (seeded) random initialisation.

    Raises:
        CheckpointError: the state dict does not match the architecture (keys named).
    """
    _compat.apply()
    from mmengine.registry import init_default_scope
    from mmpose.registry import MODELS

    from bmp_core.models.checkpoints import load_strict

    init_default_scope("mmpose")
    input_wh = (int(cfg.input_size_wh[0]), int(cfg.input_size_wh[1]))
    model = MODELS.build(vitpose_model_config(cfg.config, cfg.num_keypoints, input_wh))
    if state_dict is not None:
        load_strict(model, state_dict, f"pose ({cfg.config})")
    model.to(device).eval()
    return MaskPoseEstimator(model, device, cfg, precision)
