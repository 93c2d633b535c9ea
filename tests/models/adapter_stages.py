"""The adapter-stage parity harness: the real-model adapters' CPU-side stages (issue 18) and the ways they
replaced, on the same inputs, with their outputs compared exactly (``np.array_equal`` / ``torch.equal``)
and both timed. tests/models/test_adapter_stages.py runs it once on the COCO-size case (outputs only);
``benchmarks/adapter_stages.py`` prints its rows as a benchmark (stages (a)-(e), cases, and what "the old
way" is: see there). The reference pose crop itself is ``bmp_core.testing.pose_reference``.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
STACK = ("torch", "cv2", "mmdet", "mmpose", "sam2")
COCO_IMAGE = REPO / "examples" / "images" / "000000000785.jpg"
SECOND_COCO_IMAGE = REPO / "examples" / "images" / "000000196141.jpg"  # 640x429: the batch's other size
SMALL_CASE = "COCO-size, 8 people"
LARGE_CASE = "1920x1080, 20 people"
ENCODER_CASE = "batch of 2 COCO-size images"
ENCODER_REPEAT = 2  # SAM's encoder runs at most this many times per path (it dominates the run time)
STAGES = (
    "(a) pose crops: blend+polygons in crop window",
    "(b) pose normalise on device (uint8 upload)",
    "(c) pose decode: all instances at once",
    "(d) detector: keep filter before mask upsample",
    "(e) SAM preprocess on device (uint8 upload)",
    "(e) SAM embeddings: one encoder call per batch",
)
BEFORE = {
    STAGES[0]: "whole image blended per person, then crop",
    STAGES[1]: "numpy float32 on CPU, then upload",
    STAGES[2]: "mmpose codec, one instance at a time",
    STAGES[3]: "all top-40 masks upsampled + copied, then filtered",
    STAGES[4]: "SAM2Transforms on CPU, float32 upload",
    STAGES[5]: "set_image per image",
}


@dataclasses.dataclass(frozen=True)
class AdapterStageRow:
    """One stage on one case: ms of ours and of the old way (min over runs), outputs equal or not."""

    stage: str
    case: str
    ours_ms: float
    before_ms: float
    identical: bool

    @property
    def speedup(self) -> float:
        return self.before_ms / self.ours_ms if self.ours_ms > 0 else float("inf")


def missing_stack() -> str | None:
    """None when the model stack imports, else why not (one line)."""
    for name in STACK:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a broken install (version assert, missing .so) counts as absent too
            return f"{name}: {type(exc).__name__}: {exc}".splitlines()[0]
    return None


# --------------------------------------------------------------------------------------------
# Inputs


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    image: np.ndarray  # (H, W, 3) uint8 BGR
    boxes: np.ndarray  # (N, 4) float32 xyxy
    masks: np.ndarray  # (N, H, W) bool


def read_bgr(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(path)
    return image


def synthetic_people(
    image_hw: tuple[int, int], n: int, seed: int, height_frac: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` person-like masks (ellipse body with a hole, head, one arm) and their tight xyxy boxes; some
    reach over the image border (cut there)."""
    import cv2

    h, w = image_hw
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), bool)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        ph = rng.uniform(*height_frac) * h
        pw = ph * rng.uniform(0.3, 0.5)
        x0 = rng.uniform(-0.15 * pw, w - 0.85 * pw)
        y0 = rng.uniform(-0.1 * ph, h - 0.9 * ph)
        cx = x0 + pw / 2
        canvas = np.zeros((h, w), np.uint8)
        body = (round(cx), round(y0 + 0.6 * ph))
        cv2.ellipse(canvas, body, (round(pw / 2), round(0.38 * ph)), 0, 0, 360, 1, -1)
        cv2.circle(canvas, (round(cx), round(y0 + 0.12 * ph)), max(2, round(0.1 * ph)), 1, -1)
        arm_end = (round(x0 + pw * rng.uniform(-0.3, 1.3)), round(y0 + ph * rng.uniform(0.2, 0.5)))
        cv2.line(canvas, (round(cx), round(y0 + 0.3 * ph)), arm_end, 1, max(2, round(0.05 * ph)))
        hole = (round(cx + 0.1 * pw), round(y0 + 0.6 * ph))
        cv2.ellipse(canvas, hole, (max(2, round(0.08 * pw)), max(2, round(0.06 * ph))), 0, 0, 360, 0, -1)
        masks[i] = canvas.astype(bool)
        bx, by, bw, bh = cv2.boundingRect(canvas)
        boxes[i] = (bx, by, bx + bw, by + bh)
    return boxes, masks


def small_case() -> Case:
    image = read_bgr(COCO_IMAGE)
    boxes, masks = synthetic_people(image.shape[:2], 8, seed=1, height_frac=(0.3, 0.8))
    return Case(SMALL_CASE, image, boxes, masks)


def large_case() -> Case:
    rng = np.random.default_rng(2)
    image = rng.integers(1, 256, (1080, 1920, 3), dtype=np.uint8)
    boxes, masks = synthetic_people((1080, 1920), 20, seed=3, height_frac=(0.2, 0.6))
    colours = rng.integers(0, 256, (len(masks), 3), dtype=np.uint8)
    for mask, colour in zip(masks, colours, strict=True):
        image[mask] = colour // 2 + image[mask] // 2  # the people are visible in the picture
    return Case(LARGE_CASE, image, boxes, masks)


def synthetic_heatmaps(n: int, seed: int, hm_wh: tuple[int, int] = (48, 64), k: int = 17) -> np.ndarray:
    """(n, k, H, W) float32: one Gaussian peak (sigma 2, amplitude 0.3-0.9) per channel, plus noise."""
    rng = np.random.default_rng(seed)
    w, h = hm_wh
    ys, xs = np.mgrid[:h, :w].astype(np.float32)
    u = rng.uniform(3, w - 3, (n, k, 1, 1)).astype(np.float32)
    v = rng.uniform(3, h - 3, (n, k, 1, 1)).astype(np.float32)
    amp = rng.uniform(0.3, 0.9, (n, k, 1, 1)).astype(np.float32)
    peaks = amp * np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / np.float32(8.0))
    return (peaks + rng.normal(0, 0.01, peaks.shape)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Timing


def timed_pair(
    ours: Callable[[], Any], before: Callable[[], Any], repeat: int, warmup: bool = True
) -> tuple[float, float, Any, Any]:
    """Min wall ms of ``ours`` and ``before`` over ``repeat`` interleaved runs, and their last outputs.

    With ``warmup`` each runs once untimed first (lazy imports, caches, allocator)."""
    if warmup:
        ours(), before()
    best_o = best_b = float("inf")
    out_o = out_b = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out_o = ours()
        t1 = time.perf_counter()
        out_b = before()
        t2 = time.perf_counter()
        best_o, best_b = min(best_o, t1 - t0), min(best_b, t2 - t1)
    return 1000 * best_o, 1000 * best_b, out_o, out_b


def _arrays_equal(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


# --------------------------------------------------------------------------------------------
# (a)-(c) MaskPose


class _PoseHead:
    """What ``MaskPoseEstimator`` reads of the network for preprocessing and decoding: the channel count
    and the UDP codec, built from the adapter's own mmpose config."""

    def __init__(self, cfg: Any) -> None:
        from mmpose.registry import KEYPOINT_CODECS

        from bmp_core.models import pose_maskpose as pm

        wh = (int(cfg.input_size_wh[0]), int(cfg.input_size_wh[1]))
        head = pm.vitpose_model_config(cfg.config, cfg.num_keypoints, wh)["head"]
        self.out_channels = head["out_channels"]
        self.decoder = KEYPOINT_CODECS.build(head["decoder"])


def pose_estimator() -> Any:
    """The MaskPose adapter with the default (published) pose settings and no network (not needed here)."""
    import torch

    from bmp_core.config import PoseModelConfig
    from bmp_core.models import _compat

    _compat.apply()
    from mmengine.registry import init_default_scope

    from bmp_core.models import pose_maskpose as pm

    init_default_scope("mmpose")
    cfg = PoseModelConfig()
    model = type("NoNetwork", (), {"head": _PoseHead(cfg)})()
    return pm.MaskPoseEstimator(model, torch.device("cpu"), cfg)


def whole_image_crops(estimator: Any, image: np.ndarray, boxes: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The old way: per person, the whole-image mask's outer polygons (> 3 points) rasterised with
    pycocotools, ``cv2.addWeighted`` on the whole image, then the UDP crop
    (``bmp_core.testing.pose_reference.whole_image_crop``)."""
    from bmp_core.models import pose_maskpose as pm
    from bmp_core.testing.pose_reference import whole_image_crop

    cfg = estimator.cfg
    w, h = estimator.input_size_wh
    crops = np.zeros((len(boxes), h, w, 3), np.uint8)
    for i, (box, mask) in enumerate(zip(boxes, masks, strict=True)):
        center, scale = pm.box_center_scale(box, cfg.bbox_padding, w / h)
        warp = pm.udp_warp_matrix(center, scale, (w, h))
        crops[i] = whole_image_crop(image, warp, (w, h), mask, float(cfg.mask_alpha))
    return crops


def per_instance_decode(estimator: Any, heatmaps: np.ndarray, centers: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The old way: mmpose's UDP codec on each instance, then crop -> image pixels."""
    out = np.zeros((len(heatmaps), heatmaps.shape[1], 3), np.float32)
    input_wh = np.array(estimator.input_size_wh, np.float32)
    for i, hm in enumerate(heatmaps):
        xy, scores = estimator.codec.decode(hm)
        out[i, :, :2] = xy[0] / input_wh * scales[i] + centers[i] - 0.5 * scales[i]
        out[i, :, 2] = scores[0]
    return out


def pose_rows(estimator: Any, case: Case, repeat: int) -> list[AdapterStageRow]:
    import torch

    from bmp_core.models import pose_maskpose as pm
    from bmp_core.testing.pose_reference import crops_to_tensor

    cpu = torch.device("cpu")
    ours_ms, before_ms, ours, before = timed_pair(
        lambda: estimator.prepare_crops(case.image, case.boxes, case.masks),
        lambda: whole_image_crops(estimator, case.image, case.boxes, case.masks),
        repeat,
    )
    crops, centers, scales = ours
    rows = [AdapterStageRow(STAGES[0], case.name, ours_ms, before_ms, _arrays_equal(crops, before))]

    ours_ms, before_ms, x, y = timed_pair(
        lambda: pm.normalize_on_device(crops, cpu),
        lambda: torch.from_numpy(crops_to_tensor(list(crops), pm.IMAGENET_MEAN_RGB, pm.IMAGENET_STD_RGB)).to(cpu),
        repeat,
    )
    same = x.dtype == y.dtype and x.shape == y.shape and bool(torch.equal(x, y))
    rows.append(AdapterStageRow(STAGES[1], case.name, ours_ms, before_ms, same))

    heatmaps = synthetic_heatmaps(len(crops), seed=len(crops))
    ours_ms, before_ms, kp, kp_before = timed_pair(
        lambda: estimator.decode(heatmaps, centers, scales),
        lambda: per_instance_decode(estimator, heatmaps, centers, scales),
        repeat,
    )
    rows.append(AdapterStageRow(STAGES[2], case.name, ours_ms, before_ms, _arrays_equal(kp, kp_before)))
    return rows


# --------------------------------------------------------------------------------------------
# (d) RTMDet-Ins


def detector() -> tuple[Any, Any]:
    """RTMDet-Ins tiny, random weights, 3 classes, the published top-40; the head made to look like a
    detector's (partial masks, most of the 40 people, spread scores, a few thousand anchors over
    score_thr). Returns (adapter, mmengine config)."""
    import torch

    from bmp_core.config import DetectorModelConfig
    from bmp_core.models import detector_rtmdet as dr

    cfg = DetectorModelConfig(
        config="rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py", checkpoint=None, num_classes=3, max_per_img=40
    )
    torch.manual_seed(0)
    det = dr.build_rtmdet(cfg, torch.device("cpu"), None, "fp32")
    with torch.no_grad():
        for conv in det.model.bbox_head.rtm_cls:
            # Random class logits all sit at ~0 (scores ~0.5, so every anchor passes score_thr 0.05 and NMS
            # costs seconds): spread them and move them down, so that a few thousand anchors pass, as
            # with a trained detector, and raise "person" a little, so that most of the 40 are people.
            conv.weight.mul_(3000.0)
            conv.bias.fill_(-3.8)
            conv.bias[0] = -3.25
        for conv in det.model.bbox_head.rtm_kernel:
            conv.weight.mul_(10.0)  # partial masks (random ones are all-on or all-off)
            conv.bias.mul_(10.0)
    return det, dr.build_rtmdet_config(cfg)


def _head_outputs(det: Any, image: np.ndarray) -> tuple[Any, list[dict[str, Any]]]:
    """The detector head's raw outputs and image metas for one image (what ``_detect_batch`` computes
    before the post-processing)."""
    import torch

    packed = det.pipeline(dict(img=np.ascontiguousarray(image), img_id=0))
    model = det.model
    with torch.inference_mode():
        data = model.data_preprocessor({"inputs": [packed["inputs"]], "data_samples": [packed["data_samples"]]}, False)
        feats = model.extract_feat(data["inputs"])
        outs = model.bbox_head(tuple(f.float() for f in feats))
    return outs, [s.metainfo for s in data["data_samples"]]


def _keep_threshold(scores: np.ndarray, labels: np.ndarray, people: int) -> float:
    """A score threshold that keeps the ``people`` best-scoring people (more on ties, all if fewer)."""
    person = np.unique(scores[labels == 0])[::-1]  # distinct, descending
    if len(person) == 0:
        return 0.5
    if len(person) <= people:
        return float(np.nextafter(person[-1], np.float32(0)))
    return float((np.float64(person[people - 1]) + np.float64(person[people])) / 2)


def detector_row(det: Any, mm_cfg: Any, case: Case, repeat: int) -> AdapterStageRow:
    import torch

    from bmp_core.models import detector_rtmdet as dr

    head = det.model.bbox_head
    outs, metas = _head_outputs(det, case.image)
    hw = case.image.shape[:2]

    def mmdets_own() -> Any:
        with torch.inference_mode():
            (pred,) = head.predict_by_feat(*outs, batch_img_metas=metas, cfg=head.test_cfg, rescale=True)
        return pred

    first = mmdets_own()
    thr = _keep_threshold(first.scores.numpy(), first.labels.numpy(), len(case.boxes))
    kept = dr.RtmdetDetector(det.model, mm_cfg, "cpu", 4, "fp32", keep_label=0, keep_score_thr=thr)

    def ours() -> Any:  # RtmdetDetector._detect_batch after the head: its filter in the post-processing
        with torch.inference_mode():
            (pred,) = head.predict_by_feat(*outs, batch_img_metas=metas, cfg=kept._test_cfg, rescale=True)
        return dr._to_detections(pred, hw)

    def before() -> tuple[np.ndarray, ...]:  # the old adapter: everything to the host; the loop's filter
        pred = mmdets_own()
        boxes = pred.bboxes.detach().float().cpu().numpy().astype(np.float32)
        scores = pred.scores.detach().float().cpu().numpy().astype(np.float32)
        labels = pred.labels.detach().cpu().numpy().astype(np.int64)
        masks = pred.masks.detach().cpu().numpy().astype(bool)
        keep = np.flatnonzero((labels == 0) & (scores > thr))
        return boxes[keep], scores[keep], labels[keep], masks[keep]

    ours_ms, before_ms, got, want = timed_pair(ours, before, repeat)
    mine = (got.boxes_xyxy, got.scores, got.labels, got.masks)
    same = len(got.scores) > 0 and all(_arrays_equal(a, b) for a, b in zip(mine, want, strict=True))
    return AdapterStageRow(STAGES[3], case.name, ours_ms, before_ms, same)


# --------------------------------------------------------------------------------------------
# (e) SAM 2.1


def segmenter() -> Any:
    import torch

    from bmp_core.config import SegmenterModelConfig
    from bmp_core.models.segmenter_sam2 import build_sam2_segmenter

    torch.manual_seed(0)
    cfg = SegmenterModelConfig(config="configs/sam2.1/sam2.1_hiera_t.yaml", checkpoint=None, image_size=1024)
    return build_sam2_segmenter(cfg, torch.device("cpu"), None, "fp32")


def sam_preprocess_row(seg: Any, case: Case, repeat: int) -> AdapterStageRow:
    import torch

    from bmp_core.models.segmenter_sam2 import sam_input

    def ours() -> Any:  # what prepare_batch does per image
        with torch.inference_mode():
            return sam_input(torch.from_numpy(np.ascontiguousarray(case.image)).to(seg.device), seg.image_size)

    def before() -> Any:  # what SAM2ImagePredictor.set_image does with the RGB image
        with torch.inference_mode():
            rgb = np.ascontiguousarray(case.image[..., ::-1])
            return seg.predictor._transforms(rgb)[None].to(seg.device)

    ours_ms, before_ms, x, y = timed_pair(ours, before, repeat)
    same = x.dtype == y.dtype and x.shape == y.shape and bool(torch.equal(x, y))
    return AdapterStageRow(STAGES[4], case.name, ours_ms, before_ms, same)


def sam_embeddings_row(seg: Any, images: list[np.ndarray], repeat: int) -> AdapterStageRow:
    import torch

    predictor = seg.predictor  # its state is not used by the adapter

    def before() -> list[dict[str, Any]]:
        out = []
        for image in images:
            with torch.inference_mode():
                predictor.set_image(np.ascontiguousarray(image[..., ::-1]))
            out.append(predictor._features)
            predictor.reset_predictor()
        return out

    ours_ms, before_ms, got, want = timed_pair(
        lambda: seg.prepare_batch(images), before, min(repeat, ENCODER_REPEAT), warmup=False
    )
    same = len(got) == len(want) == len(images)
    for prepared, expected in zip(got, want, strict=True):
        pairs = [(prepared.features["image_embed"], expected["image_embed"])]
        pairs += list(zip(prepared.features["high_res_feats"], expected["high_res_feats"], strict=True))
        same = same and all(a.shape == b.shape and bool(torch.equal(a, b)) for a, b in pairs)
    return AdapterStageRow(STAGES[5], ENCODER_CASE, ours_ms, before_ms, same)


# --------------------------------------------------------------------------------------------


def adapter_stage_rows(repeat: int = 5, small_only: bool = False) -> list[AdapterStageRow]:
    """Time stages (a)-(e) of the real adapters against the old ways, on CPU (see the module docstring).

    Args:
        repeat: timed runs per stage and path (the minimum counts; SAM's encoder at most ``ENCODER_REPEAT``).
        small_only: only the COCO-size case (and the encoder row); otherwise also 1920x1080 with 20 people.

    Returns:
        Rows in stage order per case: small case (a)-(e) and the encoder row, then the large case (a)-(e).

    Raises:
        ImportError: the model stack is missing (``missing_stack`` says which part).
    """
    import torch

    from bmp_core.models import _compat

    _compat.apply()
    with torch.random.fork_rng():
        estimator = pose_estimator()
        det, mm_cfg = detector()
        seg = segmenter()
        cases = [small_case()] if small_only else [small_case(), large_case()]
        rows: list[AdapterStageRow] = []
        for case in cases:
            rows += pose_rows(estimator, case, repeat)
            rows.append(detector_row(det, mm_cfg, case, repeat))
            rows.append(sam_preprocess_row(seg, case, repeat))
            if case.name == SMALL_CASE:
                rows.append(sam_embeddings_row(seg, [case.image, read_bgr(SECOND_COCO_IMAGE)], repeat))
    return rows
