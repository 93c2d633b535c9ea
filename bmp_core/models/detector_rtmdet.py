"""RTMDet-Ins (mmdet 3.3) behind the ``Detector`` port (bmp-method.md §4).

The model is built from the config mmdet ships (``mmdet/.mim/configs/<config>``), with BMP's test
settings (score_thr 0.05, NMS IoU 0.6, max 40 per image, mask threshold 0.5) and the config's own test
pipeline (keep-ratio resize into 640x640, pad 114) fed from in-memory BGR arrays. Several images go
through ``model.test_step`` as one batch; mmdet's own ``inference_detector`` runs them one by one.
Boxes and masks come back in the original image frame (mmdet's ``rescale=True``).
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
        precision: "fp32" | "bf16" | "fp16" (autocast on CUDA only).
    """

    def __init__(
        self, model: Any, mm_cfg: Any, device: Any, batch_size: int = 4, precision: str = "fp32"
    ) -> None:
        from mmcv.transforms import Compose
        from mmdet.utils import get_test_pipeline_cfg

        self.model = model
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.precision = precision
        steps = copy.deepcopy(get_test_pipeline_cfg(mm_cfg))
        # In-memory arrays instead of files; LoadAnnotations has nothing to load at inference.
        steps = [s for s in steps if s["type"] not in ("LoadAnnotations", "mmdet.LoadAnnotations")]
        steps[0] = dict(type="mmdet.LoadImageFromNDArray")
        self.pipeline = Compose(steps)

    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """Detect all classes in each image (see ``bmp_core.ports.Detector``).

        Args:
            images_bgr: B images, each (H_i, W_i, 3) uint8 BGR (mmdet's native channel order).

        Returns:
            B ``Detections``: boxes (N,4) float32 xyxy pixels, scores (N,) float32, labels (N,) int64,
            masks (N,H_i,W_i) bool.
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
        with torch.inference_mode(), autocast(self.device, self.precision):
            results = self.model.test_step(dict(inputs=inputs, data_samples=samples))
        return [self._to_detections(r, img.shape[:2]) for r, img in zip(results, images_bgr)]

    @staticmethod
    def _to_detections(result: Any, image_hw: tuple[int, int]) -> Detections:
        pred = result.pred_instances
        n = len(pred)
        if n == 0:
            return Detections.empty(*image_hw)
        masks = pred.masks.detach().cpu().numpy().astype(bool) if "masks" in pred else None
        if masks is None or masks.shape[1:] != tuple(image_hw):
            raise RuntimeError(
                f"detector returned masks {None if masks is None else masks.shape}, image {image_hw}"
            )
        return Detections(
            boxes_xyxy=pred.bboxes.detach().float().cpu().numpy().astype(np.float32),
            scores=pred.scores.detach().float().cpu().numpy().astype(np.float32),
            labels=pred.labels.detach().cpu().numpy().astype(np.int64),
            masks=masks,
        )


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

    mm_cfg = build_rtmdet_config(cfg)
    # init_detector with checkpoint=None: builds the model, sets COCO dataset_meta, no torch.load.
    model = init_detector(mm_cfg, checkpoint=None, device="cpu", palette="none")
    model = revert_sync_batchnorm(model)  # the head's SyncBN needs a process group; plain BN at inference
    if state_dict is not None:
        load_strict(model, state_dict, f"detector ({cfg.config})")
    model.to(device).eval()
    return RtmdetDetector(model, mm_cfg, device, cfg.batch_size, precision)
