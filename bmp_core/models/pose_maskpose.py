"""MaskPose / ViTPose (mmpose 1.3.2 + mmpretrain ViT) behind the ``PoseEstimator`` port (docs/method.md#maskpose).

MaskPose is a plain top-down ViTPose whose input image is conditioned on the instance mask: the
background is blended toward black, ``out = (1 - alpha) * img + alpha * img * mask`` with alpha 0.2,
on the full image before the crop. No extra channel, no extra parameters, so the stock mmpose
``TopdownPoseEstimator`` (ViT backbone, classic heatmap head) runs it; the blending, the UDP crop and
the batching are ours:

1. per instance: the mask's outer contours rasterised as polygons (holes filled, as the reference does),
   the background outside them dimmed with ``cv2.addWeighted``'s rounding; centre/scale from the xyxy
   box, padded 1.25, aspect fixed to 192:256 by growing the short side; UDP warp matrix (mmpose's
   ``get_udp_warp_matrix``), bilinear ``warpAffine``, border 0. Tracing and blending happen only inside
   the mask's box and the window the crop reads, with crops byte-identical to the whole-image definition,
2. every crop of every image in one batch (chunks of ``batch_size``), uploaded as uint8 and converted on
   the model's device: BGR -> RGB, ImageNet mean/std,
3. flip test: the mirrored crops go through the same forward; their heatmaps are mirrored back, left and
   right channels swapped, and averaged with the plain ones (flip_mode heatmap, no shift),
4. the first 17 of the 21 channels (COCO) are decoded as mmpose's UDP codec does (argmax + DARK-UDP,
   blur 11, no clamp), all instances in one vectorised pass with the codec's exact values, and mapped
   back to the original image through the crop's centre/scale.

An instance with an all-False mask (or ``masks=None``) is posed from its box without blending.
The plain ViTPose-b multi-dataset checkpoint is the same network: use ``mask_conditioning: false``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bmp_core.coco_meta import flip_indices  # the flip test's left/right swap (coco_meta: one place)
from bmp_core.config import PoseModelConfig
from bmp_core.models import _compat
from bmp_core.models.conditioning import blend_tables
from bmp_core.models.device import autocast
from bmp_core.records import NUM_KEYPOINTS, PoseOutput

# ViT trunks of ViTPose-{s,b,l,h} (mmpretrain arch dicts) and their drop-path rates (train-time only).
_VIT_ARCHS: dict[str, tuple[dict[str, int], float]] = {
    "s": (dict(embed_dims=384, num_layers=12, num_heads=12, feedforward_channels=1536), 0.1),
    "b": (dict(embed_dims=768, num_layers=12, num_heads=12, feedforward_channels=3072), 0.3),
    "l": (dict(embed_dims=1024, num_layers=24, num_heads=16, feedforward_channels=4096), 0.5),
    "h": (dict(embed_dims=1280, num_layers=32, num_heads=16, feedforward_channels=5120), 0.55),
}
# Architecture names the config may use -> ViT size. MaskPose-b is ViTPose-b with mask-blended input;
# MaskPose-{s,b,l,h}-1.1 (BMP v2) is the same network with 23 channels (docs/real-models.md).
ARCHITECTURES = {f"{family}-{size}": size for family in ("maskpose", "vitpose") for size in _VIT_ARCHS} | {
    f"maskpose-{size}-1.1": size for size in _VIT_ARCHS
}
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


def vitpose_model_config(arch: str, num_keypoints: int, input_size_wh: tuple[int, int]) -> dict[str, Any]:
    """mmpose model config of a top-down ViTPose/MaskPose (mmpose's shipped ViTPose configs, K channels).

    Args:
        arch: one of ``ARCHITECTURES`` (e.g. ``maskpose-b``, ``vitpose-s``).
        num_keypoints: heatmap channels (21 for MaskPose / ViTPose multi, 17 for COCO-only).
        input_size_wh: crop (width, height); heatmaps are a quarter of it.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown pose architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    vit = _VIT_ARCHS[ARCHITECTURES[arch]][0]
    return dict(
        type="TopdownPoseEstimator",
        data_preprocessor=dict(
            type="PoseDataPreprocessor",
            mean=list(IMAGENET_MEAN_RGB),
            std=list(IMAGENET_STD_RGB),
            bgr_to_rgb=True,
        ),
        backbone=vit_backbone_config(ARCHITECTURES[arch], input_size_wh),
        head=dict(
            type="HeatmapHead",
            in_channels=vit["embed_dims"],
            out_channels=num_keypoints,
            deconv_out_channels=(256, 256),
            deconv_kernel_sizes=(4, 4),
            loss=dict(type="KeypointMSELoss", use_target_weight=True),
            decoder=udp_codec_config(input_size_wh),
        ),
        test_cfg=dict(flip_test=True, flip_mode="heatmap", shift_heatmap=False),
    )


def vit_backbone_config(size: str, input_size_wh: tuple[int, int]) -> dict[str, Any]:
    """mmpretrain ViT trunk of ViTPose/MaskPose/PMPose size ``size`` (s, b, l, h): 16 px patches padded by 2,
    no cls token, the (B, C, h/16, w/16) feature map out."""
    vit, drop_path = _VIT_ARCHS[size]
    w, h = input_size_wh
    return dict(
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
    )


def udp_codec_config(input_size_wh: tuple[int, int]) -> dict[str, Any]:
    """mmpose ``UDPHeatmap`` codec: heatmaps a quarter of the crop, sigma 2 (DARK blur kernel 11)."""
    w, h = input_size_wh
    return dict(type="UDPHeatmap", input_size=(w, h), heatmap_size=(w // 4, h // 4), sigma=2)


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


def blend_background(image_bgr: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """MaskPose conditioning: ``(1 - alpha) * img + alpha * img * mask``, rounded as cv2.addWeighted rounds.

    Args:
        image_bgr: (H, W, 3) uint8 (the whole image or any window of it: the operation is per pixel).
        mask: (H, W) bool, True on the person.
        alpha: background dimming; pixels outside the mask become ``(1 - alpha)`` of their value.

    Returns:
        (H, W, 3) uint8, equal to ``cv2.addWeighted(img, 1 - alpha, img * mask, alpha, 0)``.
    """
    import cv2

    if image_bgr.size == 0:  # a crop wholly outside the image reads no pixel (OpenCV refuses empty arrays)
        return image_bgr.copy()
    foreground, background = blend_tables(float(alpha))
    out = cv2.LUT(image_bgr, background)  # a table look-up per byte: no float arithmetic per pixel
    # alpha 0.2: 0.8 v + 0.2 v rounds back to v, so the person's pixels are copied as they are.
    person = image_bgr if np.array_equal(foreground, np.arange(256)) else cv2.LUT(image_bgr, foreground)
    cv2.copyTo(person, np.ascontiguousarray(mask).view(np.uint8), out)
    return out


@dataclass(frozen=True)
class BoxedMask:
    """A binary mask stored only inside its bounding box (everything outside is False).

    Attributes:
        mask: (h, w) bool, the mask's pixels ``[y0:y0+h, x0:x0+w]`` of the full image.
        y0, x0: top-left corner of the box in image pixels.
    """

    mask: np.ndarray
    y0: int
    x0: int

    @staticmethod
    def of(mask: np.ndarray) -> BoxedMask | None:
        """The (H, W) bool ``mask`` cut to its bounding box; None when it is all False."""
        import cv2

        x0, y0, w, h = cv2.boundingRect(mask.view(np.uint8))  # one vectorised pass, no (H, W) temporaries
        if w == 0 or h == 0:
            return None
        return BoxedMask(mask[y0 : y0 + h, x0 : x0 + w], y0, x0)

    def window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """(y1 - y0, x1 - x0) bool: the full-image mask's pixels inside that window."""
        out = np.zeros((y1 - y0, x1 - x0), bool)
        h, w = self.mask.shape
        ty0, ty1 = max(y0, self.y0), min(y1, self.y0 + h)
        tx0, tx1 = max(x0, self.x0), min(x1, self.x0 + w)
        if ty1 > ty0 and tx1 > tx0:
            out[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = self.mask[
                ty0 - self.y0 : ty1 - self.y0, tx0 - self.x0 : tx1 - self.x0
            ]
        return out


def outer_polygon_boxed_mask(
    mask: BoxedMask, image_hw: tuple[int, int], min_points: int = 4
) -> BoxedMask | None:
    """The reference's conditioning mask (outer contours only, rasterised as polygons by pycocotools: holes
    filled, specks of fewer than ``min_points`` points dropped) of the full-image mask that ``mask`` stands
    for, computed inside its box (``bmp_core.testing.pose_reference.outer_polygon_mask``: the whole-image
    definition it equals).

    Why the result is pixel-identical: every contour of the mask lies inside its box, so tracing it on the
    box grown by one zero row/column (kept inside the image, so a mask touching the image border still
    touches the traced array's border) finds the same points shifted by the box corner, in the same order;
    pycocotools rasterises a polygon that lies inside its canvas the same way after an integer shift (its
    arithmetic on integer coordinates scaled by 5 is exact), and the polygons never leave the box.

    Returns:
        The polygon mask inside the same box, or None when no contour survives.
    """
    import cv2
    from pycocotools import mask as mask_utils

    image_h, image_w = image_hw
    h, w = mask.mask.shape
    y0, x0 = max(mask.y0 - 1, 0), max(mask.x0 - 1, 0)
    y1, x1 = min(mask.y0 + h + 1, image_h), min(mask.x0 + w + 1, image_w)
    traced = np.zeros((y1 - y0, x1 - x0), np.uint8)
    traced[mask.y0 - y0 : mask.y0 - y0 + h, mask.x0 - x0 : mask.x0 - x0 + w] = mask.mask
    contours, _ = cv2.findContours(traced, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    # Contour points relative to the box corner: the canvas is exactly the box.
    offset = np.array([x0 - mask.x0, y0 - mask.y0])
    polygons = [
        (c.reshape(-1, 2) + offset).reshape(-1).astype(np.float64).tolist()
        for c in contours
        if len(c) >= min_points
    ]
    if not polygons:
        return None
    filled = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)
    return BoxedMask(filled, mask.y0, mask.x0)


def crop_source_window(
    warp: np.ndarray, input_size_wh: tuple[int, int], image_hw: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the image pixels a bilinear ``warpAffine`` through ``warp`` can read, clipped.

    The crop's pixel grid mapped back to the image (corners of the inverse affine map), widened by the
    bilinear filter's second tap and one more pixel of margin for warpAffine's fixed-point coordinates.
    """
    import cv2

    inverse = cv2.invertAffineTransform(np.asarray(warp, np.float64))
    w, h = input_size_wh
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], np.float64) @ inverse.T
    lo = np.floor(corners.min(axis=0)) - 1
    hi = np.floor(corners.max(axis=0)) + 3  # exclusive end: tap floor(x) + 1, plus one pixel of margin
    image_h, image_w = image_hw
    x0, x1 = int(np.clip(lo[0], 0, image_w)), int(np.clip(hi[0], 0, image_w))
    y0, y1 = int(np.clip(lo[1], 0, image_h)), int(np.clip(hi[1], 0, image_h))
    return y0, y1, x0, x1


def crop_to_input(image_bgr: np.ndarray, warp: np.ndarray, input_size_wh: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 crop through ``warp``: bilinear, constant-0 border (mmpose's TopdownAffine)."""
    import cv2

    return cv2.warpAffine(image_bgr, warp, tuple(input_size_wh), flags=cv2.INTER_LINEAR)


def normalize_on_device(crops_bgr: np.ndarray, device: Any) -> Any:
    """(N, 3, h, w) float32 torch tensor on ``device`` from (N, h, w, 3) uint8 BGR crops.

    The crops travel as uint8 (a quarter of the float32 bytes) and are converted there: BGR -> RGB,
    ``(x - mean) / std`` with float32 tensors of the per-channel constants. Those are the same IEEE
    float32 subtraction and division per element as ``testing.pose_reference.crops_to_tensor``, so on CPU
    the values are
    identical (tested); CUDA's float32 ``-`` and ``/`` on tensors are also correctly rounded, so the
    same holds there unless torch is built with fast math.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(crops_bgr)).to(device)
    x = x.flip(-1).permute(0, 3, 1, 2).float()  # BGR -> RGB, NHWC -> NCHW
    mean = torch.tensor(IMAGENET_MEAN_RGB, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_RGB, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


# --------------------------------------------------------------------------------------------
# Decoding: mmpose's UDP codec (argmax + DARK-UDP) for all instances at once


def _gaussian_blur_batch(heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """mmpose's ``gaussian_blur`` (zero-padded ``cv2.GaussianBlur``, then rescaled to the original maximum)
    on (M, H, W) heatmaps in one OpenCV call: the zero-padded maps are stacked one above the other, and
    with padding equal to the kernel radius no output pixel reads a neighbour map, so each map gets exactly
    the values of its own call."""
    import cv2

    border = (kernel - 1) // 2
    m, h, w = heatmaps.shape
    origin_max = heatmaps.reshape(m, -1).max(axis=1)
    padded = np.zeros((m, h + 2 * border, w + 2 * border), np.float32)
    padded[:, border:-border, border:-border] = heatmaps
    blurred = cv2.GaussianBlur(padded.reshape(m * (h + 2 * border), w + 2 * border), (kernel, kernel), 0)
    out = np.ascontiguousarray(blurred.reshape(padded.shape)[:, border:-border, border:-border])
    out *= (origin_max / out.reshape(m, -1).max(axis=1))[:, None, None]
    return out


def refine_dark_udp_batch(
    keypoints: np.ndarray, heatmaps: np.ndarray, blur_kernel_size: int, pseudo_inverse: bool = False
) -> np.ndarray:
    """mmpose 1.3.2's ``refine_keypoints_dark_udp`` for N instances at once, with identical results.

    Args:
        keypoints: (N, K, 2) float32 argmax locations in heatmap pixels (-1 where the maximum is <= 0).
        heatmaps: (N, K, H, W) float32, one set per instance (mmpose's function takes one set).
        blur_kernel_size: Gaussian modulation kernel (11 for sigma 2).
        pseudo_inverse: invert the Hessian with ``pinv`` as the BMP v2 reference's mmpose fork does
            (``taylor_offsets``); False = mmpose 1.3.2's ``inv`` (MaskPose-b v1, unchanged).

    Returns:
        (N, K, 2) float32 refined locations (a new array).

    The same operations in the same order and dtypes as mmpose's loop, only batched: the blur (see
    ``_gaussian_blur_batch``), clip to [1e-3, 50], log, edge padding, the Taylor step with the float64
    Hessian inverse. mmpose gathers the neighbours from one flattened (K, H+2, W+2) array per instance,
    so a location of -1 at keypoint 0 reads (by numpy's negative indexing) from the end of that
    instance's own array; the offsets below wrap within each instance to match.
    """
    n, k, h, w = heatmaps.shape
    keypoints = np.array(keypoints, np.float32, copy=True)
    modulated = _gaussian_blur_batch(heatmaps.reshape(n * k, h, w), blur_kernel_size)
    np.clip(modulated, 1e-3, 50.0, modulated)
    np.log(modulated, modulated)
    padded = np.pad(modulated.reshape(n, k, h, w), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    per_instance = k * (h + 2) * (w + 2)
    flat = padded.reshape(-1)

    index = keypoints[..., 0] + 1 + (keypoints[..., 1] + 1) * (w + 2)  # float32, as mmpose computes it
    index += (w + 2) * (h + 2) * np.arange(0, k)  # in place: stays float32, as in mmpose
    index = index.astype(int)  # (N, K)
    base = (np.arange(n) * per_instance)[:, None]

    def at(offset: int) -> np.ndarray:
        return flat[(index + offset) % per_instance + base].reshape(-1, 1)  # (N*K, 1)

    i_, ix1, iy1, ix1y1 = at(0), at(1), at(w + 2), at(w + 3)
    ix1_y1_, ix1_, iy1_ = at(-w - 3), at(-1), at(-2 - w)
    dx = 0.5 * (ix1 - ix1_)
    dy = 0.5 * (iy1 - iy1_)
    derivative = np.concatenate([dx, dy], axis=1).reshape(n * k, 2, 1)
    dxx = ix1 - 2 * i_ + ix1_
    dyy = iy1 - 2 * i_ + iy1_
    dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
    hessian = np.concatenate([dxx, dxy, dxy, dyy], axis=1).reshape(n * k, 2, 2)
    flat_keypoints = keypoints.reshape(n * k, 2)
    if not pseudo_inverse:
        hessian = np.linalg.inv(hessian + np.finfo(np.float32).eps * np.eye(2))
        flat_keypoints -= np.einsum("imn,ink->imk", hessian, derivative).reshape(n * k, 2)
        return keypoints
    flat_keypoints -= taylor_offsets(hessian.reshape(n, k, 2, 2), derivative.reshape(n, k, 2, 1)).reshape(n * k, 2)
    return keypoints


def taylor_offsets(hessian: np.ndarray, derivative: np.ndarray) -> np.ndarray:
    """(N, K, 2) DARK Taylor steps ``pinv(H + eps I) @ g`` from (N, K, 2, 2) Hessians and (N, K, 2, 1) gradients.

    The BMP v2 reference's mmpose fork inverts with the pseudo-inverse: where ``H + eps I`` is singular
    (flat log-heatmap regions, common once sparsemax zeroes most pixels) ``inv`` fails or explodes, while
    ``pinv`` steps only along the directions with curvature. When the inversion raises ``LinAlgError``
    (e.g. a NaN heatmap) the fork keeps that instance's unrefined argmax; so do we, per instance, after a
    failed attempt on the whole batch.
    """
    system = hessian + np.finfo(np.float32).eps * np.eye(2)
    try:
        return np.einsum("ikmn,iknj->ikm", np.linalg.pinv(system), derivative)
    except np.linalg.LinAlgError:
        pass
    offsets = np.zeros(hessian.shape[:2] + (2,), np.float64)
    for i in range(len(system)):
        with contextlib.suppress(np.linalg.LinAlgError):  # on failure the instance keeps its argmax
            offsets[i] = np.einsum("kmn,knj->km", np.linalg.pinv(system[i]), derivative[i])
    return offsets


# --------------------------------------------------------------------------------------------


class MaskPoseEstimator:
    """``PoseEstimator`` port on an mmpose TopdownPoseEstimator (MaskPose or plain ViTPose).

    Args:
        model: built mmpose ``TopdownPoseEstimator`` in eval mode on ``device`` (weights loaded).
        device: torch device.
        cfg: pose settings (padding, alpha, flip test, input size, batch size).
        precision: "fp32" | "bf16" | "fp16" (autocast on CUDA only).
    """

    pseudo_inverse = False  # DARK's Hessian through mmpose 1.3.2's inv (the v2 family: pinv)

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
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Crops of one image.

        The conditioned source image is never built whole: each person's mask is traced and blended only
        inside its own box and the window its crop reads (``crop_source_window``), written into one working
        copy of the image, warped, and restored. ``warpAffine`` reads no pixel outside that window, so the
        crop is byte-identical to warping the fully blended image (tested), at a cost that follows the
        people's sizes, not the image's.

        Returns:
            (N, h, w, 3) uint8 BGR crops, centres (N, 2) and sizes (N, 2) float32 in image pixels.
        """
        w, h = self.input_size_wh
        boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        image_hw = (int(image_bgr.shape[0]), int(image_bgr.shape[1]))
        crops = np.zeros((len(boxes), h, w, 3), np.uint8)
        centers = np.zeros((len(boxes), 2), np.float32)
        scales = np.zeros((len(boxes), 2), np.float32)
        workspace: np.ndarray | None = None  # a copy of the image, blended one window at a time
        for i, box in enumerate(boxes):
            center, scale = box_center_scale(box, self.cfg.bbox_padding, w / h)
            warp = udp_warp_matrix(center, scale, (w, h))
            conditioning = self._conditioning_mask(masks[i] if masks is not None else None, image_hw)
            if conditioning is None:
                crops[i] = crop_to_input(image_bgr, warp, (w, h))
            else:
                if workspace is None:
                    workspace = np.array(image_bgr, np.uint8, order="C", copy=True)
                y0, y1, x0, x1 = crop_source_window(warp, (w, h), image_hw)
                workspace[y0:y1, x0:x1] = blend_background(
                    image_bgr[y0:y1, x0:x1], conditioning.window(y0, y1, x0, x1), self.cfg.mask_alpha
                )
                crops[i] = crop_to_input(workspace, warp, (w, h))
                workspace[y0:y1, x0:x1] = image_bgr[y0:y1, x0:x1]
            centers[i], scales[i] = center, scale
        return crops, centers, scales

    def _conditioning_mask(self, mask: np.ndarray | None, image_hw: tuple[int, int]) -> BoxedMask | None:
        """The mask MaskPose is conditioned on, inside its box; None = pose from the box, no blending
        (conditioning off, no mask, an all-False mask, or a mask of specks with no usable polygon)."""
        if not self.cfg.mask_conditioning or mask is None:
            return None
        boxed = BoxedMask.of(np.asarray(mask, bool))
        if boxed is None or not self.cfg.mask_as_polygons:
            return boxed
        return outer_polygon_boxed_mask(boxed, image_hw)

    # -- the port ------------------------------------------------------------------------------

    def estimate(
        self,
        images_bgr: Sequence[np.ndarray],
        boxes_xyxy: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None],
    ) -> list[PoseOutput]:
        """17 COCO keypoints per box (see ``bmp_core.ports.PoseEstimator``).

        Returns:
            B ``PoseOutput``: (N_i, 17, 3) float32 ``(x, y, score)`` in original-image pixels; MaskPose
            predicts no presence / visibility (None).
        """
        counts, crops, centers, scales = self.batch_crops(images_bgr, boxes_xyxy, masks)
        if not counts:
            return []
        keypoints = np.zeros((sum(counts), NUM_KEYPOINTS, 3), np.float32)
        if sum(counts):
            heatmaps = self.heatmaps(crops)[:, :NUM_KEYPOINTS]  # 21 -> 17: COCO first
            keypoints = self.decode(heatmaps, centers, scales)
        return [PoseOutput(k) for k in np.split(keypoints, np.cumsum(counts)[:-1])]

    def batch_crops(
        self,
        images_bgr: Sequence[np.ndarray],
        boxes_xyxy: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None],
    ) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """Every box's crop of a batch of images, as one batch for the network.

        Returns:
            (crops per image, (N, h, w, 3) uint8 BGR crops, (N, 2) crop centres, (N, 2) crop sizes); the
            arrays are empty (None-free, length 0) when no image has a box.
        """
        if not (len(images_bgr) == len(boxes_xyxy) == len(masks)):
            raise ValueError("images_bgr, boxes_xyxy and masks must have one entry per image")
        prepared = [
            self.prepare_crops(image, boxes, image_masks)
            for image, boxes, image_masks in zip(images_bgr, boxes_xyxy, masks, strict=True)
        ]
        counts = [len(crops) for crops, _, _ in prepared]
        if not sum(counts):
            return counts, np.zeros((0,), np.uint8), np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
        crops = np.concatenate([crops for crops, _, _ in prepared])
        centers = np.concatenate([c for _, c, _ in prepared])
        scales = np.concatenate([s for _, _, s in prepared])
        return counts, crops, centers, scales

    # -- model ---------------------------------------------------------------------------------

    def forward_chunks(self, crops_bgr: np.ndarray) -> Iterator[tuple[int, Any]]:
        """The head's raw output for each chunk of ``batch_size`` crops of (N, h, w, 3) uint8 BGR.

        Each chunk is uploaded as uint8 and normalised on the model's device; with ``flip_test`` its mirrored
        crops go through the same forward (the output then holds 2n rows: plain, then mirrored). Under
        ``precision`` bf16/fp16 only the backbone runs in autocast; the head runs in fp32: its outputs are
        the keypoint scores, thresholded downstream (prompts, pose-NMS, COCO v), and bf16 keeps only ~3
        significant digits of them.

        Yields:
            (n, head output) per chunk: n crops, the output in inference mode on the device.
        """
        import torch

        bs = max(1, int(self.cfg.batch_size))
        for start in range(0, len(crops_bgr), bs):
            x = normalize_on_device(crops_bgr[start : start + bs], self.device)
            n = len(x)
            if self.cfg.flip_test:
                x = torch.cat([x, x.flip(-1)])  # plain + mirrored crops in one forward
            with torch.inference_mode():
                with autocast(self.device, self.precision):
                    feats = self.model.extract_feat(x)
                out = self.model.head.forward(tuple(f.float() for f in feats))
            yield n, out

    def heatmaps(self, crops_bgr: np.ndarray) -> np.ndarray:
        """(N, K, h/4, w/4) float32 heatmaps of (N, h, w, 3) uint8 BGR crops, flip-averaged if enabled."""
        from mmpose.models.utils.tta import flip_heatmaps

        out = []
        for n, head_out in self.forward_chunks(crops_bgr):
            hm = head_out.float()
            if self.cfg.flip_test:
                flipped = flip_heatmaps(
                    hm[n:], flip_indices=self.flip_indices, flip_mode="heatmap", shift_heatmap=False
                )
                hm = (hm[:n] + flipped) * 0.5
            out.append(hm.cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def decode(self, heatmaps: np.ndarray, centers: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """(N, K, 3) ``(x, y, score)`` in image pixels from (N, K, H, W) heatmaps, crop centres, sizes.

        mmpose's UDP decoding (argmax, DARK-UDP refinement, heatmap -> crop pixels), for all instances in one
        pass; the values equal the codec's own per-instance ``decode`` (tested), i.e. the reference's. With
        ``dark_max_offset_px`` set, the refined point is then kept within that many heatmap pixels of the
        argmax (an opt-in, not the reference; see the config field).
        """
        from mmpose.codecs.utils import get_heatmap_maximum

        heatmaps = np.asarray(heatmaps, np.float32)
        n, k, hm_h, hm_w = heatmaps.shape
        argmax_uv, scores = get_heatmap_maximum(heatmaps)  # (N, K, 2), (N, K)
        uv = refine_dark_udp_batch(
            argmax_uv, heatmaps, int(self.codec.blur_kernel_size), pseudo_inverse=self.pseudo_inverse
        )
        bound = self.cfg.dark_max_offset_px
        if bound is not None:
            uv = np.clip(uv, argmax_uv - np.float32(bound), argmax_uv + np.float32(bound))
        # Heatmap -> crop pixels exactly as the codec computes it (float64 from here, like mmpose's).
        xy_input = uv / [hm_w - 1, hm_h - 1] * self.codec.input_size
        out = np.zeros((n, k, 3), np.float32)
        input_wh = np.array(self.input_size_wh, np.float32)
        out[..., :2] = xy_input / input_wh * scales[:, None] + centers[:, None] - 0.5 * scales[:, None]
        out[..., 2] = scores
        return out


def build_maskpose(
    cfg: PoseModelConfig,
    device: Any,
    state_dict: dict[str, Any] | None,
    precision: str,
    estimator_class: type[MaskPoseEstimator] | None = None,
) -> MaskPoseEstimator:
    """Build the pose adapter; ``state_dict=None`` keeps the (seeded) random initialisation.

    ``estimator_class``: the adapter around the built network (default ``MaskPoseEstimator``; the BMP v2
    MaskPose-1.1 uses ``pose_pmpose.PMPoseEstimator``).

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
    return (estimator_class or MaskPoseEstimator)(model, device, cfg, precision)
