"""BMP v2's pose family behind the ``PoseEstimator`` port: PMPose-{s,b,l,h} and MaskPose-{s,b,l,h}-1.1.

Both take the MaskPose input (docs/real-models.md "BMP v2 pose models"): the background outside the
instance mask dimmed by ``mask_alpha`` (0.25 in v2), a UDP crop of 192x256, the ViTPose trunk, 23
channels (COCO-17, then six midline extras that map to themselves under the flip). What differs:

- **MaskPose-1.1** is the stock mmpose ViTPose heatmap head (``pose_maskpose``'s network with 23
  channels); the keypoint score is the heatmap maximum, and it predicts no presence or visibility.
- **PMPose** (ProbPose head, which upstream mmpose cannot build: ``ProbPoseHead`` below is ours):
  1. heatmaps: two deconv blocks and a 1x1 conv give logits Z (B, 23, 64, 48); each channel is
     ``clamp(1.0 * sparsemax(Z / 0.5), 0, 1)`` over its 3072 pixels, a sparse map of mass 1,
  2. four scalar branches on the *backbone* map (B, C, 16, 12), not on the deconv output: 3 x [3x3 conv,
     BN, max-pool, ReLU] down to 1x1, then a 1x1 conv to 23: presence = P(inside the crop), visibility =
     P(visible), expected OKS (sigmoids) and an error branch that was frozen at its initialisation in
     training (its keys are loaded, it is never run),
  3. the keypoint score is the predicted OKS.

The flip test averages the heatmaps (mirrored back, left/right channels swapped, as v1) AND the
scalars (channels swapped); the head always runs in fp32 (sparsemax sorts, and every downstream 0.5
threshold reads these values). Decoding is the v1 UDP codec with the Hessian's pseudo-inverse
(``pose_maskpose.taylor_offsets``), then the first 17 channels are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bmp_core.config import PoseModelConfig
from bmp_core.models import _compat
from bmp_core.models.pose_maskpose import (
    _VIT_ARCHS,
    MaskPoseEstimator,
    build_maskpose,
    udp_codec_config,
    vit_backbone_config,
)
from bmp_core.records import NUM_KEYPOINTS, PoseOutput

PMPOSE_ARCHITECTURES = {f"pmpose-{size}": size for size in _VIT_ARCHS}
MASKPOSE_V11_ARCHITECTURES = {f"maskpose-{size}-1.1": size for size in _VIT_ARCHS}
V2_ARCHITECTURES = PMPOSE_ARCHITECTURES | MASKPOSE_V11_ARCHITECTURES
V2_NUM_KEYPOINTS = 23
PMPOSE_INPUT_SIZE_WH = (192, 256)  # the scalar branches' pooling (4x3, 2, 2) brings 16x12 tokens to 1x1
SPARSEMAX_TEMPERATURE = 0.5
HEATMAP_NORMALIZE = 1.0
# (name in the published state dict, meaning); the error branch is loaded but never run (see above).
SCALAR_BRANCHES = ("probability", "visibility", "oks", "error")


def sparsemax(logits: Any, dim: int = -1) -> Any:
    """Sparsemax (Martins & Astudillo 2016) along ``dim``, in fp32: the Euclidean projection onto the simplex.

    ``max(z - tau, 0)`` with tau such that the result sums to 1: sort z descending, the support is the
    largest k with ``1 + k z_(k) > sum_{j<=k} z_(j)``, and ``tau = (sum_{j<=k} z_(j) - 1) / k``. The
    maximum is subtracted first (the projection is shift-invariant) so the cumulative sums stay small.
    """
    import torch

    z = logits.float().movedim(dim, -1)
    z = z - z.amax(dim=-1, keepdim=True)
    z_sorted = torch.sort(z, dim=-1, descending=True).values
    cumulative = z_sorted.cumsum(dim=-1)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    support_size = (1 + k * z_sorted > cumulative).sum(dim=-1, keepdim=True)  # the support is a prefix
    tau = (cumulative.gather(-1, support_size - 1) - 1) / support_size.to(z.dtype)
    return torch.clamp(z - tau, min=0).movedim(-1, dim)


@dataclass(frozen=True)
class ProbPoseHeadOutput:
    """The ProbPose head's forward for B crops (torch tensors, fp32).

    Attributes:
        heatmaps: (B, K, H, W) sparse heatmaps, each channel summing to 1 (before the [0, 1] clamp).
        presence, visibility, oks: (B, K) sigmoids: P(inside the crop), P(visible), expected OKS.
    """

    heatmaps: Any
    presence: Any
    visibility: Any
    oks: Any


def _build_head_module() -> type:
    """``ProbPoseHead`` as a torch Module class (built lazily: importing this file needs no torch)."""
    from torch import nn

    class ProbPoseHead(nn.Module):
        """ProbPose's ``MultiHead`` at inference, with the published checkpoints' parameter names.

        ``deconv_layers`` {0, 3} ConvTranspose 4x4/2 (no bias), {1, 4} BN, {2, 5} ReLU; ``final_layer`` 1x1
        conv to K; ``{probability,visibility,oks,error}_layers``: conv 0/4/8, BN 1/5/9, max-pool 2/6/10,
        ReLU 3/7/11, 1x1 conv 12, so the state dict loads strictly with no renaming.
        """

        def __init__(self, in_channels: int, out_channels: int, input_size_wh: tuple[int, int]) -> None:
            super().__init__()
            from mmpose.registry import KEYPOINT_CODECS

            self.out_channels = out_channels
            self.decoder = KEYPOINT_CODECS.build(udp_codec_config(input_size_wh))  # DARK-UDP constants
            layers: list[nn.Module] = []
            channels = in_channels
            for _ in range(2):
                layers += [
                    nn.ConvTranspose2d(channels, 256, 4, stride=2, padding=1, output_padding=0, bias=False),
                    nn.BatchNorm2d(256),
                    nn.ReLU(inplace=True),
                ]
                channels = 256
            self.deconv_layers = nn.Sequential(*layers)
            self.final_layer = nn.Conv2d(256, out_channels, kernel_size=1)
            for name in SCALAR_BRANCHES:
                setattr(self, f"{name}_layers", self._scalar_branch(in_channels, out_channels))

        @staticmethod
        def _scalar_branch(channels: int, out_channels: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for pool in ((4, 3), (2, 2), (2, 2)):  # 16x12 -> 4x4 -> 2x2 -> 1x1
                layers += [
                    nn.Conv2d(channels, channels, 3, padding=1),
                    nn.BatchNorm2d(channels),
                    nn.MaxPool2d(pool, stride=pool),
                    nn.ReLU(inplace=True),
                ]
            layers.append(nn.Conv2d(channels, out_channels, 1))
            return nn.Sequential(*layers)

        def forward(self, feats: Sequence[Any]) -> ProbPoseHeadOutput:
            import torch

            x = feats[-1].float()
            logits = self.final_layer(self.deconv_layers(x))
            b, k, h, w = logits.shape
            heatmaps = sparsemax(logits.reshape(b, k, h * w) / SPARSEMAX_TEMPERATURE, dim=-1)
            heatmaps = torch.clamp(heatmaps * HEATMAP_NORMALIZE, 0.0, 1.0).reshape(b, k, h, w)

            def scalar(branch: nn.Module) -> Any:
                return torch.sigmoid(branch(x).flatten(1))  # (B, K, 1, 1) -> (B, K)

            return ProbPoseHeadOutput(
                heatmaps=heatmaps,
                presence=scalar(self.probability_layers),
                visibility=scalar(self.visibility_layers),
                oks=scalar(self.oks_layers),
            )

    return ProbPoseHead


def _build_network_module() -> type:
    from torch import nn

    class PMPoseNetwork(nn.Module):
        """``backbone`` (mmpretrain ViT) + ``head`` (``ProbPoseHead``): the published keys' two prefixes."""

        def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
            super().__init__()
            self.backbone = backbone
            self.head = head

        def extract_feat(self, x: Any) -> tuple[Any, ...]:
            return tuple(self.backbone(x))

    return PMPoseNetwork


def build_pmpose_network(arch: str, num_keypoints: int, input_size_wh: tuple[int, int]) -> Any:
    """The PMPose torch Module (random initialisation) for ``arch`` in ``PMPOSE_ARCHITECTURES``.

    Builds on torch's current default device, so ``with torch.device("meta")`` gives a weightless
    model whose keys and shapes can be checked against a layout.
    """
    if arch not in PMPOSE_ARCHITECTURES:
        raise ValueError(f"unknown PMPose architecture {arch!r}; known: {', '.join(sorted(PMPOSE_ARCHITECTURES))}")
    if tuple(input_size_wh) != PMPOSE_INPUT_SIZE_WH:
        raise ValueError(
            f"PMPose needs models.pose.input_size_wh {list(PMPOSE_INPUT_SIZE_WH)} (its scalar branches pool the "
            f"16x12 token grid to 1x1), got {list(input_size_wh)}"
        )
    _compat.apply()
    from mmengine.registry import init_default_scope
    from mmpose.registry import MODELS

    init_default_scope("mmpose")
    size = PMPOSE_ARCHITECTURES[arch]
    backbone = MODELS.build(vit_backbone_config(size, input_size_wh))
    head = _build_head_module()(_VIT_ARCHS[size][0]["embed_dims"], num_keypoints, input_size_wh)
    return _build_network_module()(backbone, head)


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropPoses:
    """Flip-averaged model outputs for N crops (numpy, float32).

    Attributes:
        heatmaps: (N, K, H, W).
        presence, visibility, oks: (N, K), or None for a model without the scalar branches (MaskPose-1.1).
    """

    heatmaps: np.ndarray
    presence: np.ndarray | None = None
    visibility: np.ndarray | None = None
    oks: np.ndarray | None = None


class PMPoseEstimator(MaskPoseEstimator):
    """``PoseEstimator`` port for the v2 family (PMPose, MaskPose-1.1): returns ``PoseOutput`` records.

    The crops, batching and UDP decoding are ``MaskPoseEstimator``'s (with the pseudo-inverse in DARK);
    ``crop_poses`` runs the network and flip-averages heatmaps and scalars. For PMPose the keypoint score
    is the predicted OKS and presence/visibility are filled; for MaskPose-1.1 the score is the heatmap
    maximum and both are None.
    """

    pseudo_inverse = True

    def estimate(  # the v2 port: list[PoseOutput] (the loop's pose contract)
        self,
        images_bgr: Sequence[np.ndarray],
        boxes_xyxy: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None],
    ) -> list[PoseOutput]:
        """17 COCO keypoints per box, with presence and visibility where the model predicts them."""
        counts, crops, centers, scales = self.batch_crops(images_bgr, boxes_xyxy, masks)
        total = sum(counts)
        keypoints = np.zeros((total, NUM_KEYPOINTS, 3), np.float32)
        presence = visibility = None
        if self.predicts_scalars:
            presence = np.zeros((total, NUM_KEYPOINTS), np.float32)
            visibility = np.zeros((total, NUM_KEYPOINTS), np.float32)
        if total:
            poses = self.crop_poses(crops)
            keypoints = self.decode(poses.heatmaps[:, :NUM_KEYPOINTS], centers, scales)  # COCO first
            if poses.oks is not None:
                keypoints[..., 2] = poses.oks[:, :NUM_KEYPOINTS]  # the score: predicted OKS, not the maximum
                presence = poses.presence[:, :NUM_KEYPOINTS]
                visibility = poses.visibility[:, :NUM_KEYPOINTS]
        bounds = np.cumsum(counts)[:-1]

        def split(values: np.ndarray | None) -> list[np.ndarray | None]:
            return [None] * len(counts) if values is None else list(np.split(values, bounds))

        return [
            PoseOutput(kps, p, v)
            for kps, p, v in zip(np.split(keypoints, bounds), split(presence), split(visibility), strict=True)
        ]

    @property
    def predicts_scalars(self) -> bool:
        return hasattr(self.model.head, "oks_layers")

    def crop_poses(self, crops_bgr: np.ndarray) -> CropPoses:
        """Flip-averaged heatmaps (and scalars) of (N, h, w, 3) uint8 BGR crops, in chunks of ``batch_size``.

        Under bf16/fp16 only the backbone runs in autocast; the head runs in fp32.
        """
        import torch
        from mmpose.models.utils.tta import flip_heatmaps

        heatmaps, scalars = [], []
        for n, out in self.forward_chunks(crops_bgr):
            if isinstance(out, ProbPoseHeadOutput):
                hm = out.heatmaps.float()
                values = torch.stack([out.presence, out.visibility, out.oks]).float()  # (3, B, K)
            else:  # the stock heatmap head (MaskPose-1.1)
                hm, values = out.float(), None
            if self.cfg.flip_test:
                flipped = flip_heatmaps(
                    hm[n:], flip_indices=self.flip_indices, flip_mode="heatmap", shift_heatmap=False
                )
                hm = (hm[:n] + flipped) * 0.5
                if values is not None:
                    values = (values[:, :n] + values[:, n:][..., self.flip_indices]) * 0.5
            heatmaps.append(hm.cpu().numpy())
            if values is not None:
                scalars.append(values.cpu().numpy())
        if not scalars:
            return CropPoses(np.concatenate(heatmaps).astype(np.float32))
        presence, visibility, oks = np.concatenate(scalars, axis=1).astype(np.float32)
        return CropPoses(np.concatenate(heatmaps).astype(np.float32), presence, visibility, oks)

    def heatmaps(self, crops_bgr: np.ndarray) -> np.ndarray:
        """(N, K, h/4, w/4) flip-averaged heatmaps (the v1 adapter's method, for the stage benchmarks)."""
        return self.crop_poses(crops_bgr).heatmaps


def check_v2_config(cfg: PoseModelConfig) -> None:
    """The v2 family has 23 channels (also checked by the config; here for configs built in code)."""
    if cfg.num_keypoints != V2_NUM_KEYPOINTS:
        raise ValueError(
            f"models.pose.config {cfg.config} has {V2_NUM_KEYPOINTS} heatmap channels: set "
            f"models.pose.num_keypoints: {V2_NUM_KEYPOINTS} (got {cfg.num_keypoints})"
        )


def build_pose_v2(
    cfg: PoseModelConfig, device: Any, state_dict: dict[str, Any] | None, precision: str
) -> PMPoseEstimator:
    """Build a v2 pose model (``V2_ARCHITECTURES``); ``state_dict=None`` keeps the seeded random weights.

    Raises:
        CheckpointError: the state dict does not match the architecture (keys named).
    """
    from bmp_core.models.checkpoints import load_strict

    check_v2_config(cfg)
    if cfg.config in MASKPOSE_V11_ARCHITECTURES:
        estimator = build_maskpose(cfg, device, state_dict, precision, estimator_class=PMPoseEstimator)
        assert isinstance(estimator, PMPoseEstimator)
        return estimator
    input_wh = (int(cfg.input_size_wh[0]), int(cfg.input_size_wh[1]))
    model = build_pmpose_network(cfg.config, cfg.num_keypoints, input_wh)
    if state_dict is not None:
        load_strict(model, state_dict, f"pose ({cfg.config})")
    model.to(device).eval()
    return PMPoseEstimator(model, device, cfg, precision)
