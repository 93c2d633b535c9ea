"""Configuration: YAML files parsed into frozen dataclasses, with ``key.path=value`` overrides.

Every threshold of the loop is a field here, with the reference default and where it comes from
(docs/method.md, docs/decisions.md). Unknown keys are errors that name the full dotted key, values are
type-checked, and ``dump_config`` writes the resolved config back as YAML (stored in every output).

Example:
    >>> cfg = load_config("configs/bmp_d3.yaml", ["loop.iterations=3"])
    >>> cfg.loop.pose_nms.oks_thr
    0.8
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bmp_core.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the key and says what to fix."""

    default_hint = "see docs/configuration.md; 'bmp-label validate-config --config FILE' prints the resolved config"


# --------------------------------------------------------------------------------------------
# The loop (docs/method.md#the-loop, docs/decisions.md#the-loop)


@dataclass(frozen=True)
class DetectFilterConfig:
    person_label: int = 0  # COCO class id of `person` in the detector's label space
    score_thr: float = 0.3  # keep detections with score > this (strict), docs/method.md#detect
    nms_iou_thr: float = 0.3  # greedy box NMS: suppress when IoU > this, DEFAULT_NMS_THR
    nms_pixel_offset: float = 1.0  # box areas as (x2-x1+offset)*(y2-y1+offset); mmpose nms uses +1


@dataclass(frozen=True)
class PoseNmsConfig:
    oks_thr: float = 0.8  # remove one of a pair when OKS > this (oks_nms_thr)
    keypoint_thr: float = 0.3  # a keypoint is "valid"/visible for OKS when score > this (confidence_thr)
    # Old instances that lose pose-NMS are removed: false (D3 as decided) in every pass; true (BMP v2) only in a
    # pass where at least one new instance survives it (docs/method.md).
    remove_losing_old: bool = False  # true (v2): losing old instances go only when a new one survives; false: always


@dataclass(frozen=True)
class PromptConfig:
    num_pos_keypoints: int = 6  # positive SAM points per instance (D3: 6, J1: 4)
    confidence_thr: float = 0.3  # score < this zeroed before selection (k_most_visible: gate on score > this)
    visibility_thr: float = 0.3  # keypoints with score >= this may become prompts (k_most_visible: visibility >=)
    selection_method: str = "distance+confidence"  # or "confidence" (by score), "k_most_visible" (v2: by visibility)
    collapse_face: bool = True  # nose + eyes become their single most confident point
    confidence_percentile: float = 80.0  # distance+confidence draws from the top (100-p)% band

    def __post_init__(self) -> None:
        if self.selection_method not in ("distance+confidence", "confidence", "k_most_visible"):
            raise ConfigError(
                f"loop.prompt.selection_method: {self.selection_method!r} is not one of "
                "'distance+confidence', 'confidence', 'k_most_visible'"
            )
        if self.num_pos_keypoints < 1:
            raise ConfigError("loop.prompt.num_pos_keypoints must be >= 1")


@dataclass(frozen=True)
class MaskConfig:
    exclusive: bool = True  # each contested pixel goes to the highest SAM score (docs/method.md#exclusive-masks)
    mask_out_dilate_px: int = 0  # grow the masked-out region by this many pixels (0 = reference)

    def __post_init__(self) -> None:
        if self.mask_out_dilate_px < 0:
            raise ConfigError("loop.masks.mask_out_dilate_px must be >= 0")


@dataclass(frozen=True)
class LoopConfig:
    iterations: int = 2  # BMP 2x (configs D3 and J1)
    detect: DetectFilterConfig = field(default_factory=DetectFilterConfig)
    pose_nms: PoseNmsConfig = field(default_factory=PoseNmsConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"loop.iterations must be >= 1, got {self.iterations}")
        for key, value in (
            ("loop.detect.score_thr", self.detect.score_thr),
            ("loop.detect.nms_iou_thr", self.detect.nms_iou_thr),
            ("loop.pose_nms.oks_thr", self.pose_nms.oks_thr),
            ("loop.pose_nms.keypoint_thr", self.pose_nms.keypoint_thr),
            ("loop.prompt.confidence_thr", self.prompt.confidence_thr),
            ("loop.prompt.visibility_thr", self.prompt.visibility_thr),
        ):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key} must be in [0, 1], got {value}")


# --------------------------------------------------------------------------------------------
# The models (docs/method.md#the-models, docs/real-models.md)


@dataclass(frozen=True)
class DetectorModelConfig:
    config: str = "rtmdet/rtmdet-ins_l_8xb32-300e_coco.py"  # mmdet config, relative to mmdet's shipped configs
    checkpoint: str | None = None  # path, s3://, https:// or hf:// URL; None = random weights (tests only)
    score_thr: float = 0.05  # RTMDet test_cfg (docs/method.md#detect)
    nms_iou_thr: float = 0.6  # RTMDet's own NMS IoU
    max_per_img: int = 40  # detections kept per image (BMP: 40; upstream mmdet: 100)
    mask_thr_binary: float = 0.5  # mask logit-probability threshold of RTMDet-Ins
    num_classes: int | None = None  # override the head's class count (1 = person-only); None = the config's (80)
    batch_size: int = 4  # images per forward pass
    sha256: str | None = None  # expected hex digest of the checkpoint file (checked on download)
    # The loop keeps only `person` scoring > loop.detect.score_thr; filtering on the device first means
    # only those instances' masks are upsampled to full resolution and copied to the host.
    keep_label: int | None = 0  # only this class leaves the device (= loop.detect.person_label); null: all
    keep_score_thr: float | None = 0.3  # and only score > this (<= loop.detect.score_thr); null: all

    def __post_init__(self) -> None:
        if self.keep_score_thr is not None and not 0.0 <= self.keep_score_thr <= 1.0:
            raise ConfigError(
                f"models.detector.keep_score_thr must be in [0, 1], got {self.keep_score_thr}"
            )


@dataclass(frozen=True)
class PoseModelConfig:
    config: str = "maskpose-b"  # architecture: maskpose-b, vitpose-{s,b,l,h}; v2: pmpose-X, maskpose-X-1.1
    checkpoint: str | None = None  # path, s3://, https:// or hf:// URL; None = random weights (tests only)
    sha256: str | None = None  # expected hex digest of the checkpoint file
    num_keypoints: int = 21  # heatmap channels (MaskPose/ViTPose multi: 21; v2 family: 23); the first 17 are kept
    mask_conditioning: bool = True  # MaskPose: dim the background before the crop; False for plain ViTPose
    mask_alpha: float = 0.2  # background becomes (1 - alpha) of its intensity (MaskPose 1.0.0; v2 family: 0.25)
    mask_as_polygons: bool = True  # blend with the mask's outer polygons, holes filled (reference)
    bbox_padding: float = 1.25  # crop = box grown by this factor, aspect fixed to the input's
    flip_test: bool = True  # average with the horizontally flipped crop's heatmaps
    input_size_wh: tuple[int, ...] = (192, 256)  # crop (width, height) in pixels
    batch_size: int = 64  # crops per forward pass
    dark_max_offset_px: float | None = None  # opt-in: keep DARK within this many heatmap px of the argmax

    def __post_init__(self) -> None:
        # BMP v2's PMPose and MaskPose-1.1 heads have 23 channels (COCO-17 + 6 midline extras).
        if (self.config.startswith("pmpose-") or self.config.endswith("-1.1")) and self.num_keypoints != 23:
            raise ConfigError(
                f"models.pose.config {self.config} has a 23-channel head, got num_keypoints "
                f"{self.num_keypoints}; set models.pose.num_keypoints: 23 (docs/real-models.md)"
            )
        if self.dark_max_offset_px is not None and not self.dark_max_offset_px > 0:
            raise ConfigError(
                f"models.pose.dark_max_offset_px must be > 0 or null, got {self.dark_max_offset_px}"
            )


@dataclass(frozen=True)
class SegmenterModelConfig:
    config: str = "configs/sam2.1/sam2.1_hiera_b+.yaml"  # sam2 package config
    checkpoint: str | None = None  # path, s3://, https:// or hf:// URL; None = random weights (tests only)
    sha256: str | None = None  # expected hex digest of the checkpoint file
    image_size: int = 1024  # SAM input side (SAMURAI b+ config; the repo's sam2.1 copy says 512)
    dynamic_multimask_via_stability: bool = True  # docs/decisions.md#dynamic-multimask-via-stability-on
    stability_delta: float = 0.05  # logit offset of the stability score
    stability_thresh: float = 0.98  # below it, the best of SAM's 3 multimask outputs is used
    # The reference asks for 10 / 50 but its install lacks sam2._C, so sam2 skips both: 0 is what it runs.
    # Non-zero values run bmp-label's own implementation, the same with or without sam2._C.
    max_hole_area: float = 0.0  # fill background holes up to this many low-res (256x256) pixels; 0 = off
    max_sprinkle_area: float = 0.0  # drop foreground specks up to this many low-res pixels; 0 = off
    precision: str | None = None  # SAM's image encoder: "fp32" or "bf16"; null = models.precision

    def __post_init__(self) -> None:
        if self.max_hole_area < 0 or self.max_sprinkle_area < 0:
            raise ConfigError("models.segmenter.max_hole_area and max_sprinkle_area must be >= 0")
        if self.precision not in (None, "fp32", "bf16"):
            raise ConfigError(
                f"models.segmenter.precision: {self.precision!r} is not one of 'fp32', 'bf16' (fp16 is "
                "refused for SAM 2.1: its activations overflow fp16's range and give NaN scores)"
            )


@dataclass(frozen=True)
class FakeModelsConfig:
    num_people: int = 8  # candidate people the fake detector places in each image
    seed: int = 0  # changes where the fake people stand
    latency_ms: float = 0.0  # simulated time per image of each detector pass, its own compute included (benchmarks)
    fail_width: int = 0  # fault tests: the fake detector fails on batches with an image this wide (0: never)
    fail_with: str = "bug"  # "bug": ValueError (a model bug, fails the shard); "oom": CUDA out of memory
    visibility: bool = False  # the fake pose also predicts per-keypoint presence + visibility (as PMPose does)

    def __post_init__(self) -> None:
        if self.fail_with not in ("bug", "oom"):
            raise ConfigError(f"models.fake.fail_with: {self.fail_with!r} is not one of 'bug', 'oom'")


@dataclass(frozen=True)
class LiteModelsConfig:
    """MediaPipe BlazePose backend (models.kind: lite; bmp_core/models/lite/blazepose.py)."""

    crop_padding: float = 1.25  # person crop = box grown by this factor about its centre (MaskPose: 1.25)
    square_crop: bool = True  # grow the crop's short side to its long one (BlazePose's ROI is square)
    mask_conditioning: bool = True  # dim the background outside the conditioning mask, as MaskPose does
    mask_alpha: float = 0.2  # background becomes (1 - alpha) of its intensity (MaskPose 1.0.0)
    model_complexity: int = 1  # BlazePose landmark model: only 1 (full) ships in the mediapipe wheel
    min_detection_confidence: float = 0.5  # BlazePose's in-crop person detector threshold (mediapipe default)
    mask_thr: float = 0.5  # BlazePose person probability -> mask pixel
    match_tol: float = 0.05  # prompt -> posed person: mean point distance / box diagonal accepted as a match
    cache_images: int = 16  # images whose posed people the segmenter can look up (>= job.batch_size)
    detect_people: bool = True  # BlazePose's own person detector (false: job.given_boxes only, 1 pass)
    detector_windows: tuple[float, ...] = (1.0, 0.6)  # besides the whole image: square windows, x its short side
    detector_overlap: float = 0.5  # neighbouring detector windows overlap by this fraction of their side
    detector_score_thr: float = 0.5  # BlazePose detector score kept per window (MediaPipe's own threshold)
    detector_merge_dist: float = 0.3  # windows' detections are one person: hips and faces within this x its size
    detector_duplicate_overlap: float = 0.9  # a person whose mask lies this much inside a bigger one's is that one

    def __post_init__(self) -> None:
        if any(not 0.0 < f <= 1.0 for f in self.detector_windows):
            raise ConfigError(f"models.lite.detector_windows must be fractions in (0, 1], got "
                              f"{list(self.detector_windows)}")
        if not 0.0 <= self.detector_overlap < 1.0:
            raise ConfigError(f"models.lite.detector_overlap must be in [0, 1), got {self.detector_overlap}")
        if not 0.0 <= self.detector_score_thr <= 1.0:
            raise ConfigError(f"models.lite.detector_score_thr must be in [0, 1], got {self.detector_score_thr}")
        if not 0.0 < self.detector_duplicate_overlap <= 1.0:
            raise ConfigError(f"models.lite.detector_duplicate_overlap must be in (0, 1], got "
                              f"{self.detector_duplicate_overlap}")
        if self.detector_merge_dist < 0.0:
            raise ConfigError(f"models.lite.detector_merge_dist must be >= 0, got {self.detector_merge_dist}")
        if self.model_complexity not in (0, 1, 2):
            raise ConfigError(f"models.lite.model_complexity must be 0, 1 or 2, got {self.model_complexity}")
        if self.cache_images < 1:
            raise ConfigError(f"models.lite.cache_images must be >= 1, got {self.cache_images}")


@dataclass(frozen=True)
class ModelsConfig:
    kind: str = "bmp"  # "bmp" = RTMDet-Ins + MaskPose + SAM 2.1; "fake" = bmp_core.testing fakes
    device: str = "auto"  # "auto" = cuda when present (a Ray GPU worker must have it), else cpu; "cuda:N"
    precision: str = "fp32"  # "fp32", "bf16", "fp16" (autocast on CUDA only)
    compile: bool = False  # torch.compile the SAM image encoder and the pose backbone (CUDA only)
    tf32: bool = False  # TF32 matmuls and cuDNN convolutions (CUDA); false = IEEE fp32 for both
    cache_dir: str = "~/.cache/bmp-label"  # downloaded checkpoints
    stage_uri: str | None = None  # cluster: the driver copies checkpoints here once for all nodes; null: OUT/_weights
    offline: bool = False  # never download; a checkpoint missing from cache_dir is an error (also BMP_OFFLINE=1)
    allow_pickle_checkpoints: bool = False  # true: fully unpickle what the safe loader refuses (runs its code)
    seed: int = 0  # torch seed for random initialisation (checkpoint: null)
    detector: DetectorModelConfig = field(default_factory=DetectorModelConfig)
    pose: PoseModelConfig = field(default_factory=PoseModelConfig)
    segmenter: SegmenterModelConfig = field(default_factory=SegmenterModelConfig)
    fake: FakeModelsConfig = field(default_factory=FakeModelsConfig)
    lite: LiteModelsConfig = field(default_factory=LiteModelsConfig)

    @property
    def has_detector(self) -> bool:
        """Whether the models built from this config detect people (lite: with ``lite.detect_people``)."""
        return self.kind != "lite" or self.lite.detect_people

    @property
    def uses_torch_device(self) -> bool:
        """Whether the models built from this config run on ``device`` through torch (the real models):
        only then is the device resolved and checked; the fakes and the lite backend run on the CPU."""
        return self.kind == "bmp"

    def __post_init__(self) -> None:
        if self.kind not in ("bmp", "fake", "lite"):
            raise ConfigError(f"models.kind: {self.kind!r} is not one of 'bmp', 'fake', 'lite'")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"models.precision: {self.precision!r} is not one of 'fp32', 'bf16', 'fp16'")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ConfigError(f"models.device: {self.device!r} is not 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.kind == "bmp" and self.precision == "fp16" and self.segmenter.precision is None:
            raise ConfigError(
                "models.precision: fp16 would run SAM 2.1 in fp16, whose activations overflow fp16's range "
                "and give NaN scores; use models.precision=bf16, or keep fp16 for the detector and pose "
                "with models.segmenter.precision=bf16 (or fp32)"
            )


# --------------------------------------------------------------------------------------------
# The job (jobs/)


@dataclass(frozen=True)
class JobConfig:
    shard_size: int = 256  # images per shard (the unit of work and of commit); a tar input: one shard per tar
    max_attempts: int = 3  # tries per shard before the job fails
    max_image_pixels: int = 100_000_000  # refuse larger images (decompression bombs)
    image_extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # listed in folders
    min_image_side: int = 16  # refuse images narrower or shorter than this (1x1 pixels, broken exports)
    batch_size: int = 4  # images per run_bmp_batch call inside a shard
    decode_threads: int = 4  # threads per worker reading + decoding images ahead of the models
    queue_depth: int = 2  # shards in flight per worker: one labels while the previous commits (no idle gap)
    mask_pool_mb: int = 1024  # finished images' mask memory a worker keeps to lend to later images (0: none)
    lock_ttl_s: float = 120.0  # the output lock expires this long after the last heartbeat of a dead job
    coco_keypoint_thr: float = 0.3  # coco.json: keypoints scoring below this are written unlabeled (v=0)
    trace: bool = False  # also store each image's per-pass trace under OUT/traces/<image_id>/ (bmp-label viz --gif)
    given_boxes: str | None = None  # COCO detections list or annotations dataset (path or s3://): pass-0 boxes + scores
    given_boxes_images: str | None = None  # COCO file naming a detections list's image ids (e.g. its ground truth)
    given_boxes_score_thr: float = 0.0  # use given boxes with score >= this (entries without a score count as 1.0)
    image_column: str | None = None  # Parquet input: the column of image bytes or HF Image structs (--image-column)
    id_column: str | None = None  # Parquet input: a column kept as each image's key in the images table (--id-column)
    # Ray gives a num_cpus=0 actor OMP_NUM_THREADS=1, all of a GPU worker's CPU work on one thread:
    gpus_per_worker: float = 1.0  # GPU share per GPU worker; 0.5: two per GPU (CPU and GPU work overlap)
    gpu_worker_cpus: float = 0.0  # CPUs + torch threads per GPU worker; 0: its node's cores split evenly

    def __post_init__(self) -> None:
        if self.mask_pool_mb < 0:
            raise ConfigError(f"job.mask_pool_mb must be >= 0, got {self.mask_pool_mb}")
        if self.given_boxes is not None and not self.given_boxes.strip():
            raise ConfigError("job.given_boxes: an empty path; use null for no given boxes")
        if self.given_boxes_images is not None and self.given_boxes is None:
            raise ConfigError("job.given_boxes_images is set but job.given_boxes is not: it only names the "
                              "image ids of a given-boxes detections list")
        if not math.isfinite(self.given_boxes_score_thr):
            raise ConfigError(f"job.given_boxes_score_thr must be a finite number, got {self.given_boxes_score_thr}")
        if self.shard_size < 1:
            raise ConfigError(f"job.shard_size must be >= 1, got {self.shard_size}")
        if self.max_attempts < 1:
            raise ConfigError(f"job.max_attempts must be >= 1, got {self.max_attempts}")
        for key in ("min_image_side", "batch_size", "decode_threads", "queue_depth"):
            if getattr(self, key) < 1:
                raise ConfigError(f"job.{key} must be >= 1, got {getattr(self, key)}")
        if self.lock_ttl_s <= 0:
            raise ConfigError(f"job.lock_ttl_s must be > 0, got {self.lock_ttl_s}")
        for key in ("image_column", "id_column"):
            if getattr(self, key) is not None and not getattr(self, key).strip():
                raise ConfigError(f"job.{key}: an empty column name; use null for none")
        if self.id_column is not None and self.image_column is None:
            raise ConfigError("job.id_column is set but job.image_column is not: an id column only applies to a "
                              "Parquet input (--image-column)")
        if not (0 < self.gpus_per_worker <= 1):
            raise ConfigError(f"job.gpus_per_worker must be in (0, 1] (e.g. 0.5: two workers per GPU), got "
                              f"{self.gpus_per_worker}")
        if not (math.isfinite(self.gpu_worker_cpus) and self.gpu_worker_cpus >= 0):
            raise ConfigError(f"job.gpu_worker_cpus must be >= 0 (0: split the node's cores), got "
                              f"{self.gpu_worker_cpus}")


@dataclass(frozen=True)
class BmpConfig:
    """The whole resolved configuration of a run."""

    models: ModelsConfig = field(default_factory=ModelsConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    job: JobConfig = field(default_factory=JobConfig)

    def __post_init__(self) -> None:
        if not self.models.has_detector and self.loop.iterations != 1:
            # Every pass after the first one detects.
            raise ConfigError(
                f"models.kind: {self.models.kind} with models.lite.detect_people: false needs loop.iterations: 1 "
                f"(got {self.loop.iterations}): it has no person detector for a second pass (set "
                "models.lite.detect_people: true to detect with BlazePose's own detector)"
            )
        if self.loop.prompt.selection_method == "k_most_visible" and not _pose_predicts_visibility(self.models):
            raise ConfigError(
                "loop.prompt.selection_method: k_most_visible ranks keypoints by the pose model's visibility, "
                f"which {_pose_name(self.models)} does not predict; use a PMPose pose model (models.pose.config: "
                "pmpose-b), models.fake.visibility: true for the fakes, or selection_method: distance+confidence"
            )
        det, people = self.models.detector, self.loop.detect
        bmp = self.models.kind == "bmp"
        if bmp and det.keep_label is not None and det.keep_label != people.person_label:
            raise ConfigError(
                f"models.detector.keep_label={det.keep_label} but loop.detect.person_label="
                f"{people.person_label}: the detector would drop the people the loop keeps; set both to the "
                "same class (or models.detector.keep_label=null)"
            )
        if bmp and det.keep_score_thr is not None and det.keep_score_thr > people.score_thr:
            raise ConfigError(
                f"models.detector.keep_score_thr={det.keep_score_thr} is above loop.detect.score_thr="
                f"{people.score_thr}: the detector would drop people the loop keeps; set "
                f"models.detector.keep_score_thr={people.score_thr} (or null)"
            )


def _pose_predicts_visibility(models: ModelsConfig) -> bool:
    """Whether the pose model these settings build returns per-keypoint visibility (``PoseOutput``)."""
    if models.kind == "fake":
        return models.fake.visibility
    if models.kind == "lite":
        return True  # BlazePose landmarks carry visibility and presence
    return models.pose.config.startswith("pmpose")


def _pose_name(models: ModelsConfig) -> str:
    return "the fake pose model (models.fake.visibility: false)" if models.kind == "fake" else (
        f"models.pose.config {models.pose.config!r}")


def check_job_config(cfg: BmpConfig) -> None:
    """What a job (``bmp-label run/plan/validate-config``, its workers) needs beyond a valid config.

    ``load_config`` alone accepts models without a person detector (``models.kind: lite`` with
    ``models.lite.detect_people: false``) and no ``job.given_boxes`` because ``run_bmp`` takes the boxes
    as an argument; a job has no other way to get them.

    Raises:
        ConfigError: naming the keys to set.
    """
    if not cfg.models.has_detector and cfg.job.given_boxes is None:
        raise ConfigError(
            f"models.kind: {cfg.models.kind} with models.lite.detect_people: false needs job.given_boxes (it "
            "then has no person detector): add job.given_boxes=DETECTIONS_OR_ANNOTATIONS.json (and "
            "job.given_boxes_images=IMAGES.json for a COCO detections list), or drop "
            "models.lite.detect_people=false (docs/lite.md)"
        )


# --------------------------------------------------------------------------------------------
# Loading, overrides, dumping


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover - a coding error


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s}"
            + (f" (and {', '.join(where + u for u in unknown[1:])})" if len(unknown) > 1 else "")
            + f"; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {
        name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except TypeError as err:  # pragma: no cover - dataclass signature mismatch is a coding error
        raise ConfigError(f"{prefix or 'config'}: {err}") from err


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, returning a copy."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> BmpConfig:
    """Build a ``BmpConfig`` from a plain dict (e.g. parsed YAML) plus overrides."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(data).__name__}")
    return _build(BmpConfig, apply_overrides(data, overrides or []), "")


def load_config(path: str | Path, overrides: list[str] | None = None) -> BmpConfig:
    """Load a YAML config file and apply ``key.path=value`` overrides.

    Raises:
        ConfigError: the file is missing, is not valid YAML, or has an unknown key / bad value.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    try:
        return config_from_dict(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain YAML-able data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: Any) -> str:
    """The resolved config as YAML text; ``load_config`` of it gives back an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
