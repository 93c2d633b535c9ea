"""MaskPose's input and decoding against independent implementations (issue 14; issue 18's CPU items).

- background blending equals ``cv2.addWeighted`` (the reference's call) on every pixel of the real images;
- crops blended only inside their source window equal crops of the whole blended image, byte for byte,
  on real people and on crops and masks that touch or cross the image border;
- crops normalised on the device equal the numpy definition;
- the vectorised decoding equals mmpose 1.3.2's own UDP codec / ``refine_keypoints_dark_udp`` run one
  instance at a time, on clean, broad and two-mode heatmaps (no clamp), and the opt-in clamp binds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.models
torch = pytest.importorskip("torch")
pytest.importorskip("mmpose")
cv2 = pytest.importorskip("cv2")
mask_utils = pytest.importorskip("pycocotools.mask")

from bmp_core.config import PoseModelConfig
from bmp_core.models import _compat

_compat.apply()

from bmp_core.models import pose_maskpose as pm
from bmp_core.testing.pose_reference import crops_to_tensor, whole_image_crop
from tests.conftest import read_bgr

INPUT_WH = (192, 256)
HEATMAP_WH = (48, 64)


@dataclasses.dataclass(frozen=True)
class Person:
    """A real annotated person: (4,) float32 xyxy box and (H, W) bool mask of its image."""

    box_xyxy: np.ndarray
    mask: np.ndarray


def _people(testdata: Path, folder: str, annotations: str) -> list[tuple[np.ndarray, list[Person]]]:
    data = json.loads((testdata / folder / annotations).read_text())
    out = []
    for info in data["images"]:
        h, w = info["height"], info["width"]
        people = []
        for ann in data["annotations"]:
            if ann["image_id"] != info["id"]:
                continue
            seg = ann["segmentation"]
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if isinstance(seg, list) else seg
            if isinstance(rle.get("counts"), list):
                rle = mask_utils.frPyObjects(rle, h, w)
            x, y, bw, bh = ann["bbox"]
            people.append(Person(np.array([x, y, x + bw, y + bh], np.float32), mask_utils.decode(rle) > 0))
        out.append((read_bgr(testdata / folder / info["file_name"]), people))
    return out


@pytest.fixture(scope="module")
def real_people(testdata: Path) -> list[tuple[np.ndarray, list[Person]]]:
    """The annotated test images (4 COCO, and 3 OCHuman with the shared set) with their people's boxes and
    masks: a plain clone has the COCO ones in examples/."""
    people = _people(testdata, "coco", "test_coco.json")
    if (testdata / "ochuman" / "test_ochuman.json").is_file():
        people += _people(testdata, "ochuman", "test_ochuman.json")
    return people


# --------------------------------------------------------------------------------------------
# Blending = cv2.addWeighted


def test_blend_equals_cv2_add_weighted_on_every_pixel_of_the_real_images(real_people: Any) -> None:
    differs_from_truncation = 0
    for image, people in real_people:
        union = np.logical_or.reduce([p.mask for p in people])
        for mask in [union, *(p.mask for p in people[:2])]:
            expected = cv2.addWeighted(image, 0.8, image * mask[..., None].astype(np.uint8), 0.2, 0)
            np.testing.assert_array_equal(pm.blend_background(image, mask, 0.2), expected)
        truncated = np.where(union[..., None], image, (image.astype(np.float32) * 0.8).astype(np.uint8))
        differs_from_truncation += int((truncated != expected).sum())
    # The old float-cast definition is really different (so this test catches a return to it).
    assert differs_from_truncation > 1000


# --------------------------------------------------------------------------------------------
# Crops: blended inside their source window only, byte-identical to the whole-image definition


class _Head:
    out_channels = 21

    def __init__(self) -> None:
        from mmpose.codecs import UDPHeatmap

        self.decoder = UDPHeatmap(input_size=INPUT_WH, heatmap_size=HEATMAP_WH, sigma=2)


class _NoNetwork:
    """Just enough of a TopdownPoseEstimator for preprocessing and decoding."""

    head = _Head()


def _estimator(**overrides: Any) -> pm.MaskPoseEstimator:
    cfg = PoseModelConfig(config="maskpose-b", checkpoint=None, **overrides)
    return pm.MaskPoseEstimator(_NoNetwork(), torch.device("cpu"), cfg)


def _reference_crop(
    image: np.ndarray, box: np.ndarray, mask: np.ndarray | None, polygons: bool
) -> np.ndarray:
    """Whole image blended with cv2.addWeighted, then mmpose's UDP crop (the plain, unwindowed path)."""
    center, scale = pm.box_center_scale(box, 1.25, INPUT_WH[0] / INPUT_WH[1])
    warp = pm.udp_warp_matrix(center, scale, INPUT_WH)
    return whole_image_crop(image, warp, INPUT_WH, mask, 0.2, polygons)


def _border_cases(image: np.ndarray, people: list[Person]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Crops and masks at the image's edges: people moved into each corner (box partly outside the image,
    mask cut by the border), a ring whose hole the crop window cuts, specks only, no mask, a box wholly
    outside the image."""
    h, w = image.shape[:2]
    person = max(people, key=lambda p: p.mask.sum())
    x1, y1, x2, y2 = person.box_xyxy.astype(int)
    cases: list[tuple[np.ndarray, np.ndarray | None]] = []
    for dx, dy in ((-x1 - (x2 - x1) // 3, -y1 - 5), (w - x2 + (x2 - x1) // 3, h - y2 + 7), (-x1, h - y2)):
        moved = np.zeros_like(person.mask)
        src = person.mask[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
        moved[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
        cases.append((person.box_xyxy + np.float32([dx, dy, dx, dy]), moved))
    ring = np.zeros((h, w), bool)
    ring[: h // 2, : w // 2] = True
    ring[h // 8 : h // 2 - h // 8, w // 8 : w // 2 - w // 8] = False  # a hole, filled by the polygons
    cases.append((np.float32([w // 6, h // 6, w // 3, h // 3]), ring))  # crop window inside the ring's hole
    specks = np.zeros((h, w), bool)
    specks[10, 10] = specks[20, 40] = True  # contours of < 4 points: no polygon, posed from the box
    cases.append((np.float32([0, 0, 60, 60]), specks))
    cases.append((np.float32([w - 50, h - 80, w + 30, h + 20]), None))
    cases.append((np.float32([w + 100, 10, w + 300, 200]), person.mask))  # wholly outside the image
    return cases


@pytest.mark.parametrize("polygons", [True, False])
def test_windowed_crops_equal_whole_image_crops_byte_for_byte(real_people: Any, polygons: bool) -> None:
    estimator = _estimator(mask_as_polygons=polygons)
    checked = 0
    for image, people in real_people:
        cases = [(p.box_xyxy, p.mask) for p in people] + _border_cases(image, people)
        boxes = np.stack([box for box, _ in cases])
        masks = [mask for _, mask in cases]
        crops, _, _ = estimator.prepare_crops(
            image, boxes, np.stack([np.zeros(image.shape[:2], bool) if m is None else m for m in masks])
        )
        for (box, mask), crop in zip(cases, crops, strict=True):
            np.testing.assert_array_equal(crop, _reference_crop(image, box, mask, polygons))
            checked += 1
    # 19 people and 7 images with the shared set (12 and 4 with the demo set): 7 border cases per image.
    assert checked == sum(len(people) for _, people in real_people) + 7 * len(real_people) > 0


def test_crop_window_covers_what_warp_affine_reads(real_people: Any) -> None:
    """Outside the window, changing the image changes no crop (so the window is never too small)."""
    image, people = real_people[4 if len(real_people) > 4 else -1]  # a crowded OCHuman image when present
    for box in [p.box_xyxy for p in people] + [b for b, _ in _border_cases(image, people)]:
        center, scale = pm.box_center_scale(box, 1.25, 0.75)
        warp = pm.udp_warp_matrix(center, scale, INPUT_WH)
        y0, y1, x0, x1 = pm.crop_source_window(warp, INPUT_WH, image.shape[:2])
        scrambled = 255 - image
        scrambled[y0:y1, x0:x1] = image[y0:y1, x0:x1]
        np.testing.assert_array_equal(
            pm.crop_to_input(scrambled, warp, INPUT_WH), pm.crop_to_input(image, warp, INPUT_WH)
        )


def test_crops_normalised_on_the_device_equal_the_numpy_definition(real_people: Any) -> None:
    estimator = _estimator()
    image, people = real_people[0]
    crops, _, _ = estimator.prepare_crops(image, np.stack([p.box_xyxy for p in people]), None)
    on_device = pm.normalize_on_device(crops, torch.device("cpu"))
    expected = torch.from_numpy(crops_to_tensor(list(crops), pm.IMAGENET_MEAN_RGB, pm.IMAGENET_STD_RGB))
    assert on_device.dtype == torch.float32 and on_device.shape == expected.shape
    assert torch.equal(on_device, expected)  # identical on CPU, not merely close


# --------------------------------------------------------------------------------------------
# Decoding = mmpose's UDP codec, one instance at a time, no clamp


def _gaussian(u: float, v: float, amplitude: float, sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[: HEATMAP_WH[1], : HEATMAP_WH[0]]
    return amplitude * np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma**2))


def _heatmaps(kind: str, rng: np.random.Generator, k: int = 17) -> np.ndarray:
    """(K, 64, 48) float32: ``clean`` (sharp peaks), ``broad`` (low, wide: where DARK moves far),
    ``two_mode`` (two peaks), ``noise`` (random, like an untrained network, with channel 0 all <= 0)."""
    out = []
    for _ in range(k):
        u, v = rng.uniform(4, 44), rng.uniform(4, 60)
        if kind == "clean":
            hm = _gaussian(u, v, rng.uniform(0.6, 1.0), 2.0)
        elif kind == "broad":
            noise = rng.normal(0, 0.004, (64, 48))
            hm = _gaussian(u, v, rng.uniform(0.02, 0.08), rng.uniform(6, 12)) + noise
        elif kind == "two_mode":
            u2, v2 = rng.uniform(4, 44), rng.uniform(4, 60)
            hm = _gaussian(u, v, 0.5, 2.0) + _gaussian(u2, v2, rng.uniform(0.3, 0.5), 2.5)
        else:
            hm = rng.normal(0, 0.05, (64, 48))
        out.append(hm)
    stack = np.stack(out).astype(np.float32)
    if kind == "noise":
        stack[0] = -np.abs(stack[0])  # maximum <= 0: mmpose marks the location -1 and still refines it
    return stack


def _per_instance_mmpose(
    estimator: pm.MaskPoseEstimator, heatmaps: np.ndarray, centers: Any, scales: Any
) -> np.ndarray:
    """The plain path: mmpose's codec on each instance, then its crop -> image mapping."""
    out = np.zeros((len(heatmaps), heatmaps.shape[1], 3), np.float32)
    for i, hm in enumerate(heatmaps):
        xy, scores = estimator.codec.decode(hm)
        out[i, :, :2] = xy[0] / np.array(INPUT_WH, np.float32) * scales[i] + centers[i] - 0.5 * scales[i]
        out[i, :, 2] = scores[0]
    return out


@pytest.fixture(scope="module")
def designed_heatmaps() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(14)
    kinds = ("clean", "broad", "two_mode", "noise")
    return {kind: np.stack([_heatmaps(kind, rng) for _ in range(5)]) for kind in kinds}


def test_vectorised_dark_equals_mmpose_refine_keypoints_dark_udp(
    designed_heatmaps: dict[str, np.ndarray],
) -> None:
    from mmpose.codecs.utils import get_heatmap_maximum, refine_keypoints_dark_udp

    heatmaps = np.concatenate(list(designed_heatmaps.values()))  # all kinds in one batch of 20
    argmax, _ = get_heatmap_maximum(heatmaps)
    mine = pm.refine_dark_udp_batch(argmax, heatmaps, 11)
    for i, hm in enumerate(heatmaps):
        theirs = refine_keypoints_dark_udp(argmax[i : i + 1].copy(), hm.copy(), blur_kernel_size=11)[0]
        np.testing.assert_array_equal(mine[i], theirs)


@pytest.mark.parametrize("kind", ["clean", "broad", "two_mode", "noise"])
def test_decode_equals_the_mmpose_codec_per_instance(
    designed_heatmaps: dict[str, np.ndarray], kind: str
) -> None:
    estimator = _estimator()
    heatmaps = designed_heatmaps[kind]
    rng = np.random.default_rng(1)
    centers = rng.uniform(100, 500, (len(heatmaps), 2)).astype(np.float32)
    scales = rng.uniform(50, 400, (len(heatmaps), 2)).astype(np.float32)
    expected = _per_instance_mmpose(estimator, heatmaps, centers, scales)
    np.testing.assert_array_equal(estimator.decode(heatmaps, centers, scales), expected)


def test_the_opt_in_clamp_binds_on_broad_peaks_only(designed_heatmaps: dict[str, np.ndarray]) -> None:
    reference, clamped = _estimator(), _estimator(dark_max_offset_px=1.0)
    centers = np.full((5, 2), 300, np.float32)
    scales = np.tile(np.float32([250, 250 / 0.75]), (5, 1))
    clean = designed_heatmaps["clean"]
    np.testing.assert_array_equal(
        clamped.decode(clean, centers, scales), reference.decode(clean, centers, scales)
    )
    broad = designed_heatmaps["broad"]
    moved = np.abs(clamped.decode(broad, centers, scales) - reference.decode(broad, centers, scales))[..., :2]
    crop_px_per_heatmap_px = 250 / 47
    assert moved.max() > 3 * crop_px_per_heatmap_px  # without the clamp DARK moves these points far


def test_dark_max_offset_must_be_positive() -> None:
    from bmp_core.config import ConfigError

    with pytest.raises(ConfigError, match="dark_max_offset_px"):
        PoseModelConfig(dark_max_offset_px=0.0)


def test_under_mixed_precision_only_the_backbone_is_autocast(monkeypatch: Any) -> None:
    """The heatmap head gets fp32 features and gives fp32 heatmaps (keypoint scores are thresholded)."""
    from bmp_core.models.pose_maskpose import build_maskpose

    cfg = PoseModelConfig(config="vitpose-s", checkpoint=None, flip_test=False)
    torch.manual_seed(0)
    estimator = build_maskpose(cfg, torch.device("cpu"), None, "bf16")
    # autocast is a no-op on CPU in the adapter (device.autocast); force CPU bf16 autocast to see the split.
    monkeypatch.setattr(pm, "autocast", lambda device, precision: torch.autocast("cpu", dtype=torch.bfloat16))
    seen: dict[str, Any] = {}
    backbone_linear = estimator.model.backbone.layers[0].attn.qkv
    backbone_linear.register_forward_hook(lambda m, i, o: seen.__setitem__("backbone", o.dtype))
    head_layer = estimator.model.head.final_layer  # the 1x1 conv that makes the heatmaps
    head_layer.register_forward_hook(lambda m, i, o: seen.update(head_in=i[0].dtype, head_out=o.dtype))
    estimator.heatmaps(np.zeros((2, 256, 192, 3), np.uint8))
    assert seen == {"backbone": torch.bfloat16, "head_in": torch.float32, "head_out": torch.float32}
