"""RTMDet-Ins (mmdet 3.3) behind the ``Detector`` port (docs/method.md#rtmdet-ins-ignoring-holes).

The model is built from the config mmdet ships (``mmdet/.mim/configs/<config>``), with BMP's test
settings (score_thr 0.05, NMS IoU 0.6, max 40 per image, mask threshold 0.5) and the config's own test
pipeline (keep-ratio resize into 640x640, pad 114) fed from in-memory BGR arrays. Several images go
through ``model.test_step`` as one batch; mmdet's own ``inference_detector`` runs them one by one.
Boxes and masks come back in the original image frame (mmdet's ``rescale=True``).

Two things differ from ``model.test_step`` (tests/models/test_sam_detector_speed_paths.py checks both):
- Only the detections the loop can keep leave the device: after mmdet's NMS and its top-40 cut (over all
  classes, as before), instances of another class or scoring <= ``keep_score_thr`` are dropped before
  their masks are upsampled to full resolution and copied to the host. The kept ones are byte-identical.
- Under bf16/fp16 autocast only the backbone and neck run in reduced precision; the head (box distances,
  class scores, mask kernels) runs in fp32, because its outputs meet thresholds (score 0.05, NMS IoU
  0.6, mask 0.5, the loop's 0.3) that an 8-bit mantissa would round.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bmp_core.config import DetectorModelConfig
from bmp_core.models import _compat
from bmp_core.models.device import autocast
from bmp_core.models.windows import tight_windows
from bmp_core.records import Detections


def mmdet_config_path(config: str) -> str:
    """A config file: an existing path, else relative to mmdet's shipped configs (``rtmdet/...py``)."""
    if os.path.isfile(config):
        return config
    import mmdet

    shipped = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", config)
    if not os.path.isfile(shipped):
        raise FileNotFoundError(
            f"mmdet config {config!r} is neither a file nor one of mmdet's shipped configs"
        )
    return shipped


def build_rtmdet_config(cfg: DetectorModelConfig) -> Any:
    """The mmengine ``Config`` for ``cfg.config`` with BMP's test settings applied (no pretrained fetch)."""
    _compat.apply()
    from mmengine.config import Config

    mm_cfg = Config.fromfile(mmdet_config_path(cfg.config))
    test_cfg = mm_cfg.model.test_cfg
    test_cfg.score_thr = cfg.score_thr
    test_cfg.nms = dict(type="nms", iou_threshold=cfg.nms_iou_thr)
    test_cfg.max_per_img = cfg.max_per_img
    test_cfg.mask_thr_binary = cfg.mask_thr_binary
    if cfg.num_classes is not None:  # e.g. a person-only fine-tune; label 0 stays "person"
        mm_cfg.model.bbox_head.num_classes = cfg.num_classes
    # The shipped configs point the backbone at an ImageNet checkpoint URL; weights come from our
    # checkpoint (or stay random), never from a download at build time.
    mm_cfg.model.backbone.init_cfg = None
    return mm_cfg


class RtmdetDetector:
    """``Detector`` port on an mmdet RTMDet-Ins model.

    Args:
        model: a built mmdet detector in eval mode on ``device`` (weights loaded).
        mm_cfg: its mmengine ``Config`` (the test pipeline is taken from it).
        device: torch device of the model.
        batch_size: images per forward pass.
        precision: "fp32" | "bf16" | "fp16" for the backbone and neck (autocast on CUDA only).
        keep_label: only detections of this class are returned (None = every class).
        keep_score_thr: only detections scoring > this are returned (None = every score).
    """

    def __init__(
        self,
        model: Any,
        mm_cfg: Any,
        device: Any,
        batch_size: int = 4,
        precision: str = "fp32",
        keep_label: int | None = None,
        keep_score_thr: float | None = None,
    ) -> None:
        import torch
        from mmcv.transforms import Compose
        from mmdet.utils import get_test_pipeline_cfg

        self.model = model
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.precision = precision
        self.keep_label = keep_label
        self.keep_score_thr = keep_score_thr
        steps = copy.deepcopy(get_test_pipeline_cfg(mm_cfg))
        # In-memory arrays instead of files; LoadAnnotations has nothing to load at inference.
        steps = [s for s in steps if s["type"] not in ("LoadAnnotations", "mmdet.LoadAnnotations")]
        steps[0] = dict(type="mmdet.LoadImageFromNDArray")
        self.pipeline = Compose(steps)
        install_kept_post_process(model.bbox_head)
        # The head's test settings plus our filter; the filter travels in the cfg that mmdet hands to
        # ``_bbox_mask_post_process``, so the model itself keeps mmdet's behaviour for other callers.
        self._test_cfg = copy.deepcopy(model.bbox_head.test_cfg)
        self._test_cfg[KEEP_LABEL_KEY] = keep_label
        self._test_cfg[KEEP_SCORE_KEY] = keep_score_thr

    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """Detect people in each image (see ``bmp_core.ports.Detector``).

        Args:
            images_bgr: B images, each (H_i, W_i, 3) uint8 BGR (mmdet's native channel order).

        Returns:
            B ``Detections`` of class ``keep_label`` scoring > ``keep_score_thr`` (every class and score
            when they are None): boxes (N,4) float32 xyxy pixels, scores (N,) float32 in descending
            order, labels (N,) int64, masks (N,H_i,W_i) bool.
        """
        out: list[Detections] = []
        for start in range(0, len(images_bgr), self.batch_size):
            out.extend(self._detect_batch(images_bgr[start : start + self.batch_size]))
        return out

    def _detect_batch(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        import torch

        inputs, samples = [], []
        for i, image in enumerate(images_bgr):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"image {i}: expected (H, W, 3) uint8 BGR, got {image.shape} {image.dtype}")
            packed = self.pipeline(dict(img=np.ascontiguousarray(image), img_id=i))
            inputs.append(packed["inputs"])
            samples.append(packed["data_samples"])
        model, head = self.model, self.model.bbox_head
        with torch.inference_mode():
            # What ``model.test_step`` does (preprocess, extract_feat, bbox_head.predict), split so that
            # only the backbone and neck run under autocast.
            data = model.data_preprocessor({"inputs": inputs, "data_samples": samples}, False)
            with autocast(self.device, self.precision):
                feats = model.extract_feat(data["inputs"])
            with torch.autocast(self.device.type, enabled=False):
                outs = head(tuple(f.float() for f in feats))
                metas = [sample.metainfo for sample in data["data_samples"]]
                results = head.predict_by_feat(
                    *outs, batch_img_metas=metas, cfg=self._test_cfg, rescale=True
                )
            return [_to_detections(r, img.shape[:2]) for r, img in zip(results, images_bgr, strict=True)]


KEEP_LABEL_KEY = "bmp_keep_label"
KEEP_SCORE_KEY = "bmp_keep_score_thr"


def _to_detections(pred: Any, image_hw: tuple[int, int]) -> Detections:
    """mmdet's ``InstanceData`` (on the device) -> host ``Detections``; copies only what was kept."""
    n = len(pred)
    if n == 0:
        return Detections.empty(*image_hw)
    masks = pred.masks.detach().cpu().numpy().astype(bool) if "masks" in pred else None
    if masks is None or masks.shape[1:] != tuple(image_hw):
        got = None if masks is None else masks.shape
        raise RuntimeError(f"detector returned masks {got}, image {image_hw}")
    return Detections(
        boxes_xyxy=pred.bboxes.detach().float().cpu().numpy().astype(np.float32),
        scores=pred.scores.detach().float().cpu().numpy().astype(np.float32),
        labels=pred.labels.detach().cpu().numpy().astype(np.int64),
        masks=masks,
        mask_windows_xyxy=tight_windows(pred.masks.detach()),  # found on the device
    )


def install_kept_post_process(head: Any) -> None:
    """Make ``head._bbox_mask_post_process`` honour our keep filter (idempotent, this head only).

    Without the filter keys in its cfg the head runs mmdet's own method unchanged, so ``test_step`` and
    any other caller get exactly mmdet's results.
    """
    if getattr(head, "_bmp_kept_post_process", False):
        return
    original = type(head)._bbox_mask_post_process

    def post_process(
        results: Any,
        mask_feat: Any,
        cfg: Any,
        rescale: bool = False,
        with_nms: bool = True,
        img_meta: dict[str, Any] | None = None,
    ) -> Any:
        if cfg.get(KEEP_LABEL_KEY) is None and cfg.get(KEEP_SCORE_KEY) is None:
            return original(head, results, mask_feat, cfg, rescale, with_nms, img_meta)
        return kept_post_process(head, results, mask_feat, cfg, rescale, with_nms, img_meta)

    head._bbox_mask_post_process = post_process
    head._bmp_kept_post_process = True


def kept_post_process(
    head: Any,
    results: Any,
    mask_feat: Any,
    cfg: Any,
    rescale: bool,
    with_nms: bool,
    img_meta: dict[str, Any] | None,
) -> Any:
    """RTMDet-Ins's box/mask post-processing (mmdet 3.3 ``RTMDetInsHead._bbox_mask_post_process``) with
    the keep filter between the top-``max_per_img`` cut and the mask upsampling.

    Same steps and order as mmdet: rescale boxes to the original image, multiply score factors, drop
    tiny boxes, class-aware NMS, keep the first ``max_per_img``, dynamic-conv mask logits at stride 8
    (for all of them: cheap, and the very same call as mmdet's, so no kernel sees other shapes); then
    (ours) keep ``label == keep_label`` and ``score > keep_score_thr``; then only the kept logits are
    upsampled x8 and to the original size (bilinear, per channel) and thresholded (sigmoid >
    ``mask_thr_binary``). So every kept instance gets exactly mmdet's box, score and mask.
    """
    import math

    import torch
    import torch.nn.functional as F
    from mmcv.ops import batched_nms
    from mmdet.structures.bbox import get_box_tensor, get_box_wh, scale_boxes

    if not with_nms:
        raise ValueError("RTMDet-Ins post-processing needs with_nms=True (as in mmdet)")
    stride = head.prior_generator.strides[0][0]
    scale_factor = None
    if rescale:
        if img_meta is None or img_meta.get("scale_factor") is None:
            raise ValueError("rescale=True needs img_meta['scale_factor']")
        scale_factor = [1 / s for s in img_meta["scale_factor"]]
        results.bboxes = scale_boxes(results.bboxes, scale_factor)
    if hasattr(results, "score_factors"):
        results.scores = results.scores * results.pop("score_factors")
    if cfg.get("min_bbox_size", -1) >= 0:
        w, h = get_box_wh(results.bboxes)
        valid = (w > cfg.min_bbox_size) & (h > cfg.min_bbox_size)
        if not valid.all():
            results = results[valid]
    out_h, out_w = img_meta["ori_shape"][:2] if rescale else img_meta["img_shape"][:2]
    if results.bboxes.numel() > 0:
        boxes = get_box_tensor(results.bboxes)
        det_bboxes, keep_idxs = batched_nms(boxes, results.scores, results.labels, cfg.nms)
        results = results[keep_idxs]
        results.scores = det_bboxes[:, -1]  # some NMS variants reweight scores
        results = results[: cfg.max_per_img]
        mask_logits = head._mask_predict_by_feat_single(mask_feat, results.kernels, results.priors)
        kept = torch.ones(len(results), dtype=torch.bool, device=results.scores.device)
        if cfg.get(KEEP_LABEL_KEY) is not None:
            kept &= results.labels == int(cfg[KEEP_LABEL_KEY])
        if cfg.get(KEEP_SCORE_KEY) is not None:
            kept &= results.scores > float(cfg[KEEP_SCORE_KEY])  # float32 compare, as the loop's numpy
        results, mask_logits = results[kept], mask_logits[kept]
    if len(results) == 0:
        results.masks = torch.zeros((0, out_h, out_w), dtype=torch.bool, device=results.bboxes.device)
        return results
    mask_logits = F.interpolate(mask_logits.unsqueeze(0), scale_factor=stride, mode="bilinear")
    if rescale:
        assert scale_factor is not None
        h, w = mask_logits.shape[-2:]
        size = [math.ceil(h * scale_factor[0]), math.ceil(w * scale_factor[1])]
        mask_logits = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
        mask_logits = mask_logits[..., :out_h, :out_w]
    results.masks = mask_logits.sigmoid().squeeze(0) > cfg.mask_thr_binary
    return results


def build_rtmdet(
    cfg: DetectorModelConfig, device: Any, state_dict: dict[str, Any] | None, precision: str
) -> RtmdetDetector:
    """Build the RTMDet-Ins adapter; ``state_dict=None`` keeps the (seeded) random initialisation.

    Raises:
        CheckpointError: the state dict does not match the architecture (keys named).
    """
    _compat.apply()
    from mmdet.apis import init_detector
    from mmengine.model import revert_sync_batchnorm

    from bmp_core.models.checkpoints import load_strict
    from bmp_core.models.device import construction_device

    mm_cfg = build_rtmdet_config(cfg)
    # init_detector with checkpoint=None: builds the model, sets COCO dataset_meta, no torch.load.
    model = init_detector(mm_cfg, checkpoint=None, device=construction_device(device), palette="none")
    model = revert_sync_batchnorm(model)  # the head's SyncBN needs a process group; plain BN at inference
    if state_dict is not None:
        load_strict(model, state_dict, f"detector ({cfg.config})")
    model.to(device).eval()
    return RtmdetDetector(
        model, mm_cfg, device, cfg.batch_size, precision, cfg.keep_label, cfg.keep_score_thr
    )
