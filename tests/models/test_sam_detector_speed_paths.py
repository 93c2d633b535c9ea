"""The detector's and SAM's speed paths against the paths they replace, on real images (random weights).

- SAM: preprocessing on the device from a uint8 upload equals ``SAM2Transforms`` bit for bit; the
  embeddings of a batch in one encoder call equal ``SAM2ImagePredictor.set_image`` of each image; masks
  and scores equal the predictor's own ``predict`` (the old adapter path, kept here as ``_predictor_*``).
- SAM's hole/sprinkle post-processing gives the same masks with and without ``sam2._C`` (a stand-in
  module with an independent scipy implementation plays the compiled one), and equals sam2's own
  post-processing when ``_C`` exists.
- Precision: under (CPU-forced) bf16 autocast the detector head and SAM's decoder run in fp32; fp16 SAM
  is a config error; a non-finite SAM score raises; TF32 is set explicitly both ways.
- The detector's keep filter: only person / score-kept instances leave the device, and they equal
  ``model.test_step`` + the loop's numpy filter exactly (boxes, scores, labels, masks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import types
import warnings
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.models
torch = pytest.importorskip("torch")
pytest.importorskip("mmdet")
pytest.importorskip("sam2")
ndimage = pytest.importorskip("scipy.ndimage")

from bmp_core.config import ConfigError, DetectorModelConfig, load_config
from bmp_core.models import detector_rtmdet as dr
from bmp_core.models import segmenter_sam2 as ss
from bmp_core.models.device import apply_speed_options
from tests.models.conftest import REPO

IMAGES = ("004806", "003799")  # 686x948 and 900x864: different sizes and aspect ratios


def _prompts(h: int, w: int) -> list[np.ndarray]:
    rel = [
        [[0.3, 0.3], [0.35, 0.45], [0.33, 0.6]],
        [[0.6, 0.2]],
        [[0.15, 0.1], [0.2, 0.2], [0.18, 0.3]],
        [[0.7, 0.7], [0.75, 0.8]],
        [[0.5, 0.5], [0.52, 0.55], [0.48, 0.6], [0.5, 0.7], [0.45, 0.4], [0.55, 0.4]],
    ]
    return [np.asarray(p, np.float32) * np.array([w, h], np.float32) for p in rel]


# --------------------------------------------------------------------------------------------
# The old adapter path: sam2's predictor with its own state and post-processing


def _predictor_features(predictor: Any, image_bgr: np.ndarray) -> dict[str, Any]:
    with torch.inference_mode():
        predictor.set_image(np.ascontiguousarray(image_bgr[..., ::-1]))
    features = predictor._features
    predictor.reset_predictor()
    return features


def _predictor_segment(
    predictor: Any, features: dict[str, Any], image_hw: tuple[int, int], prompts: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One ``predict`` per prompt-length group, exactly as bmp-label's adapter did before."""
    h, w = image_hw
    masks = np.zeros((len(prompts), h, w), bool)
    scores = np.zeros(len(prompts), np.float32)
    for k in sorted({len(p) for p in prompts}):
        idx = [i for i, p in enumerate(prompts) if len(p) == k]
        coords = np.stack([prompts[i] for i in idx])
        predictor._features, predictor._orig_hw = features, [image_hw]
        predictor._is_image_set, predictor._is_batch = True, False
        try:
            with torch.inference_mode():
                m, s, _ = predictor.predict(
                    point_coords=coords, point_labels=np.ones(coords.shape[:2], np.int32), box=None,
                    multimask_output=False,
                )
        finally:
            predictor.reset_predictor()
        masks[idx] = m.reshape(len(idx), h, w) > 0.5
        scores[idx] = s.reshape(len(idx))
    return masks, scores


def _predictor(segmenter: Any, max_hole_area: float, max_sprinkle_area: float) -> Any:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    p = SAM2ImagePredictor(segmenter.predictor.model, 0.0, max_hole_area, max_sprinkle_area)
    p._bb_feat_sizes = segmenter.predictor._bb_feat_sizes
    return p


@contextlib.contextmanager
def _compiled_sam2_c(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A stand-in for the compiled ``sam2._C``: connected components (8-connected) with scipy."""
    import sam2

    def get_connected_componnets(mask: Any) -> tuple[Any, Any]:  # sam2's spelling
        m = mask.cpu().numpy().astype(bool)
        labels = np.zeros(m.shape, np.int32)
        counts = np.zeros(m.shape, np.int32)
        for idx in np.ndindex(*m.shape[:2]):
            lab, _ = ndimage.label(m[idx], structure=np.ones((3, 3), int))
            labels[idx] = lab
            areas = np.bincount(lab.ravel())
            counts[idx] = np.where(lab > 0, areas[lab], 0)
        return torch.from_numpy(labels), torch.from_numpy(counts)

    fake = types.ModuleType("sam2._C")
    fake.get_connected_componnets = get_connected_componnets  # type: ignore[attr-defined]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "sam2._C", fake)
        m.setattr(sam2, "_C", fake, raising=False)
        yield


# --------------------------------------------------------------------------------------------
# SAM: preprocessing, batched embeddings, decoding


def test_sam_input_on_the_device_equals_sam2_transforms(ochuman_images: dict[str, np.ndarray]) -> None:
    from sam2.utils.transforms import SAM2Transforms

    square = ochuman_images["000817"][:512, :512]  # already S x S for S = 512: no resize, as torchvision
    for image, size in [(ochuman_images[n], 1024) for n in IMAGES] + [(square, 512)]:
        expected = SAM2Transforms(size, 0.0)(np.ascontiguousarray(image[..., ::-1]))
        got = ss.sam_input(torch.from_numpy(image), size)
        assert got.shape == (1, 3, size, size) and got.dtype == torch.float32
        assert torch.equal(got[0], expected), float((got[0] - expected).abs().max())
    # RGB order: a pure-blue BGR pixel is channel 2 for SAM.
    blue = np.zeros((8, 8, 3), np.uint8)
    blue[..., 0] = 255
    x = ss.sam_input(torch.from_numpy(blue), 8)[0, :, 0, 0]
    np.testing.assert_allclose(x.numpy(), [-0.485 / 0.229, -0.456 / 0.224, (1 - 0.406) / 0.225], rtol=1e-6)


@pytest.fixture(scope="module")
def sam_batch(tiny_models: Any, ochuman_images: dict[str, np.ndarray]) -> list[Any]:
    return tiny_models.segmenter.prepare_batch([ochuman_images[n] for n in IMAGES])


def test_sam_batch_embeddings_equal_set_image_one_by_one(
    tiny_models: Any, ochuman_images: dict[str, np.ndarray], sam_batch: list[Any]
) -> None:
    predictor = _predictor(tiny_models.segmenter, 0.0, 0.0)
    for name, prepared in zip(IMAGES, sam_batch, strict=True):
        expected = _predictor_features(predictor, ochuman_images[name])
        assert prepared.image_hw == ochuman_images[name].shape[:2]
        # Exact on CPU: the same ops on the same device, and the encoder's batch rows are independent.
        assert torch.equal(prepared.features["image_embed"], expected["image_embed"])
        for got, want in zip(prepared.features["high_res_feats"], expected["high_res_feats"], strict=True):
            assert torch.equal(got, want)


def test_sam_masks_and_scores_equal_the_predictors_own(
    tiny_models: Any, ochuman_images: dict[str, np.ndarray], sam_batch: list[Any]
) -> None:
    # The old default (10 / 50) without sam2._C: sam2 warns and skips it, i.e. today's masks.
    predictor = _predictor(tiny_models.segmenter, 10.0, 50.0)
    for _name, prepared in zip(IMAGES, sam_batch, strict=True):
        h, w = prepared.image_hw
        prompts = _prompts(h, w)
        out = tiny_models.segmenter.segment(prepared, prompts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            masks, scores = _predictor_segment(predictor, prepared.features, (h, w), prompts)
        assert out.masks.dtype == np.bool_ and out.masks.shape == (len(prompts), h, w)
        np.testing.assert_array_equal(out.masks, masks)  # byte-identical
        np.testing.assert_array_equal(out.scores, scores)
        assert out.masks.any(axis=(1, 2)).all() and not out.masks.all(axis=(1, 2)).any()  # real masks


# --------------------------------------------------------------------------------------------
# SAM: hole/sprinkle post-processing independent of sam2._C


def _blobby_logits(seed: int) -> Any:
    """(3, 1, 256, 256) logits with holes and specks of many sizes around the thresholds 10 and 50."""
    rng = np.random.default_rng(seed)
    logits = np.where(rng.random((3, 1, 256, 256)) < 0.5, -3.0, 3.0).astype(np.float32)
    logits[:, :, 40:200, 40:200] = 4.0
    for b in range(3):
        for _ in range(60):
            y, x = rng.integers(0, 250, 2)
            hh, ww = rng.integers(1, 10, 2)
            logits[b, 0, y : y + hh, x : x + ww] *= -1
    return torch.from_numpy(logits)


def test_hole_sprinkle_equals_sam2s_own_with_compiled_c(monkeypatch: pytest.MonkeyPatch) -> None:
    from sam2.utils.transforms import SAM2Transforms

    logits = _blobby_logits(0)
    for hole, sprinkle in [(10.0, 50.0), (10.0, 0.0), (0.0, 50.0), (3.0, 7.0)]:
        ours = torch.nn.functional.interpolate(
            ss.fill_holes_and_sprinkles(logits, 0.0, hole, sprinkle), (300, 200), mode="bilinear",
            align_corners=False,
        )
        transforms = SAM2Transforms(256, 0.0, hole, sprinkle)
        with _compiled_sam2_c(monkeypatch), warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # sam2 must not fall back to skipping
            theirs = transforms.postprocess_masks(logits, (300, 200))
        assert torch.equal(ours, theirs), (hole, sprinkle)
        changed = ss.fill_holes_and_sprinkles(logits, 0.0, hole, sprinkle) != logits
        assert changed.any(), "the synthetic logits must have holes/specks to fill/drop"
    assert torch.equal(ss.fill_holes_and_sprinkles(logits, 0.0, 0.0, 0.0), logits)


def test_segmenter_masks_do_not_depend_on_sam2_c(
    tiny_models: Any, sam_batch: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = sam_batch[0]
    prompts = _prompts(*prepared.image_hw)
    seg = tiny_models.segmenter
    with_pp = ss.Sam2Segmenter(seg.predictor, seg.device, "fp32", 10.0, 50.0)
    results = {}
    for name, adapter in (("off", seg), ("on", with_pp)):
        plain = adapter.segment(prepared, prompts)
        with _compiled_sam2_c(monkeypatch):
            compiled = adapter.segment(prepared, prompts)
        np.testing.assert_array_equal(plain.masks, compiled.masks)
        np.testing.assert_array_equal(plain.scores, compiled.scores)
        results[name] = plain.masks
    # Non-vacuous: with random weights the low-res masks do have small holes/specks.
    assert (results["on"] != results["off"]).any()
    # "on" is what sam2's own predictor gives when its _C is compiled.
    reference = _predictor(seg, 10.0, 50.0)
    with _compiled_sam2_c(monkeypatch), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # sam2 must not fall back to skipping
        masks, _ = _predictor_segment(reference, prepared.features, prepared.image_hw, prompts)
    np.testing.assert_array_equal(results["on"], masks)


def test_hole_sprinkle_defaults_are_the_references_effective_setting() -> None:
    cfg = load_config(REPO / "configs" / "bmp_d3.yaml")
    assert cfg.models.segmenter.max_hole_area == 0.0 and cfg.models.segmenter.max_sprinkle_area == 0.0
    with pytest.raises(ConfigError, match="max_hole_area"):
        load_config(REPO / "configs" / "bmp_d3.yaml", ["models.segmenter.max_hole_area=-1"])


# --------------------------------------------------------------------------------------------
# Precision


def _cpu_bf16(device: Any, precision: str) -> Any:
    """Stands in for ``device.autocast`` so that CPU runs really switch to bf16 (CUDA-only otherwise)."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _output_dtypes(module: Any, sink: list[Any]) -> Any:
    def hook(_m: Any, _inputs: Any, output: Any) -> None:
        flat = output if isinstance(output, (tuple, list)) else [output]
        for item in flat:
            for t in item if isinstance(item, (tuple, list)) else [item]:
                if isinstance(t, torch.Tensor):
                    sink.append(t.dtype)

    return module.register_forward_hook(hook)


def test_detector_head_runs_in_fp32_under_bf16_autocast(
    tiny_models: Any, ochuman_images: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    det = tiny_models.detector
    monkeypatch.setattr(dr, "autocast", _cpu_bf16)
    neck, head = [], []
    hooks = [_output_dtypes(det.model.neck, neck), _output_dtypes(det.model.bbox_head, head)]
    try:
        (dets,) = det.detect([ochuman_images["004806"]])
    finally:
        for h in hooks:
            h.remove()
    assert neck and set(neck) == {torch.bfloat16}  # the backbone and neck did run in bf16
    assert head and set(head) == {torch.float32}  # box distances, scores, kernels: fp32
    assert len(dets) and dets.scores.dtype == np.float32


def test_sam_decoder_runs_in_fp32_under_bf16_autocast(
    tiny_models: Any, ochuman_images: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    seg = tiny_models.segmenter
    model = seg.predictor.model
    monkeypatch.setattr(ss, "autocast", _cpu_bf16)
    small = np.ascontiguousarray(ochuman_images["003896"][::4, ::4])
    encoder, decoder = [], []
    hooks = [
        _output_dtypes(model.image_encoder.trunk, encoder), _output_dtypes(model.sam_mask_decoder, decoder)
    ]
    try:
        prepared = seg.prepare(small)
        out = seg.segment(prepared, _prompts(*small.shape[:2]))
    finally:
        for h in hooks:
            h.remove()
    assert torch.bfloat16 in encoder  # the Hiera trunk did run under bf16
    assert prepared.features["image_embed"].dtype == torch.float32
    assert decoder and set(decoder) == {torch.float32}  # mask logits and IoU scores
    assert np.isfinite(out.scores).all()


def test_a_nan_sam_score_raises(
    tiny_models: Any, sam_batch: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = tiny_models.segmenter.predictor.model.sam_mask_decoder
    forward = decoder.forward

    def nan_scores(*args: Any, **kwargs: Any) -> Any:
        masks, iou, *rest = forward(*args, **kwargs)
        return (masks, iou.clone().index_fill_(0, torch.tensor([0]), float("nan")), *rest)

    monkeypatch.setattr(decoder, "forward", nan_scores)
    prepared = sam_batch[1]
    with pytest.raises(ss.NonFiniteScoreError, match="non-finite scores"):
        tiny_models.segmenter.segment(prepared, _prompts(*prepared.image_hw))


def test_fp16_sam_is_a_config_error() -> None:
    d3 = REPO / "configs" / "bmp_d3.yaml"
    with pytest.raises(ConfigError, match="models.segmenter.precision=bf16"):
        load_config(d3, ["models.precision=fp16"])
    with pytest.raises(ConfigError, match="fp16 is refused"):
        load_config(d3, ["models.segmenter.precision=fp16"])
    mixed = load_config(d3, ["models.precision=fp16", "models.segmenter.precision=bf16"])
    assert mixed.models.precision == "fp16" and mixed.models.segmenter.precision == "bf16"
    assert load_config(d3, ["models.precision=bf16"]).models.segmenter.precision is None
    with pytest.raises(ValueError, match="fp16"):
        ss.Sam2Segmenter(object(), torch.device("cpu"), "fp16")


def test_tf32_is_set_explicitly_both_ways() -> None:
    cuda = types.SimpleNamespace(type="cuda")  # apply_speed_options only reads the device's type
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cudnn.allow_tf32 = True  # torch's default
        assert apply_speed_options(cuda, False, False, None, None) == []
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        assert apply_speed_options(cuda, True, False, None, None) == ["tf32"]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# --------------------------------------------------------------------------------------------
# Detector: the keep filter before masks leave the device


@pytest.fixture(scope="module")
def detector_3(tiny_cfg: Any) -> Any:
    """RTMDet-Ins tiny with 3 classes and the published top-40, random weights made to look like a
    detector's output: class biases zeroed so that every class competes (persons and other labels come
    back mixed, as from the real 80 classes, which would cost seconds of NMS per image here), and the
    mask-kernel head x10 so that masks are partial (random ones are all-on or all-off)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_cfg.models.detector, num_classes=3, max_per_img=40)
    det = dr.build_rtmdet(cfg, torch.device("cpu"), None, "fp32")
    with torch.no_grad():
        for conv in det.model.bbox_head.rtm_cls:
            conv.bias.zero_()
        for conv in det.model.bbox_head.rtm_kernel:
            conv.weight.mul_(10.0)
            conv.bias.mul_(10.0)
    return det


def _test_step_filtered(det: Any, image: np.ndarray, label: int | None, thr: float | None) -> Any:
    """The old path: ``model.test_step`` on all classes, then the loop's numpy filter."""
    packed = det.pipeline({"img": np.ascontiguousarray(image), "img_id": 0})
    with torch.inference_mode():
        data = {"inputs": [packed["inputs"]], "data_samples": [packed["data_samples"]]}
        (result,) = det.model.test_step(data)
    pred = result.pred_instances
    boxes, scores = pred.bboxes.numpy(), pred.scores.numpy()
    labels, masks = pred.labels.numpy(), pred.masks.numpy()
    keep = np.ones(len(scores), bool)
    if label is not None:
        keep &= labels == label
    if thr is not None:
        keep &= scores > thr
    return boxes[keep], scores[keep], labels[keep], masks[keep], len(scores)


def _upsampled_channels(monkeypatch: pytest.MonkeyPatch, image_hw: tuple[int, int]) -> list[int]:
    """Record the channel count of every interpolation to the image's full resolution."""
    seen: list[int] = []
    interpolate = torch.nn.functional.interpolate

    def spy(x: Any, *args: Any, **kwargs: Any) -> Any:
        out = interpolate(x, *args, **kwargs)
        if out.shape[-2] >= image_hw[0] and out.shape[-1] >= image_hw[1]:
            seen.append(int(out.shape[1]))
        return out

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    return seen


@pytest.mark.parametrize("which", ["person-only head", "3 classes"])
def test_detector_keep_filter_equals_test_step_then_filter(
    which: str, tiny_models: Any, detector_3: Any, ochuman_images: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = tiny_models.detector if which == "person-only head" else detector_3
    for name in IMAGES:
        image = ochuman_images[name]
        all_scores = _test_step_filtered(base, image, None, None)[1]
        thr = float(np.median(all_scores))  # drops about half: the filter must really bite
        det = dr.RtmdetDetector(base.model, _tiny_mm_cfg(), base.device, 4, "fp32", 0, thr)
        boxes, scores, labels, masks, n_all = _test_step_filtered(base, image, 0, thr)
        assert 0 < len(scores) < n_all
        with monkeypatch.context() as m:
            upsampled = _upsampled_channels(m, image.shape[:2])  # type: ignore[arg-type]
            (got,) = det.detect([image])
        assert upsampled == [len(scores)]  # only the kept instances' masks reach full resolution
        np.testing.assert_array_equal(got.boxes_xyxy, boxes)
        np.testing.assert_array_equal(got.scores, scores)
        np.testing.assert_array_equal(got.labels, labels)
        np.testing.assert_array_equal(got.masks, masks)
        if which == "3 classes":
            assert 0.05 < masks.mean() < 0.95  # partial masks, so their pixels are really compared


def test_detector_without_a_keep_filter_is_mmdets_own(
    detector_3: Any, ochuman_images: dict[str, np.ndarray]
) -> None:
    det = dr.RtmdetDetector(detector_3.model, _tiny_mm_cfg(), detector_3.device, 4, "fp32")
    image = ochuman_images["003799"]
    boxes, scores, labels, masks, _ = _test_step_filtered(det, image, None, None)
    (got,) = det.detect([image])
    assert len(set(labels.tolist())) > 1  # several classes come back
    np.testing.assert_array_equal(got.boxes_xyxy, boxes)
    np.testing.assert_array_equal(got.scores, scores)
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_array_equal(got.masks, masks)


def test_detector_keep_filter_must_not_be_stricter_than_the_loop() -> None:
    d3 = REPO / "configs" / "bmp_d3.yaml"
    with pytest.raises(ConfigError, match="keep_score_thr=0.2"):
        load_config(d3, ["loop.detect.score_thr=0.2"])
    assert load_config(d3, ["loop.detect.score_thr=0.2", "models.detector.keep_score_thr=0.2"])
    with pytest.raises(ConfigError, match="keep_label"):
        load_config(d3, ["loop.detect.person_label=1"])
    assert load_config(d3, ["loop.detect.person_label=1", "models.detector.keep_label=null"])
    assert DetectorModelConfig().keep_label == 0 and DetectorModelConfig().keep_score_thr == 0.3


def _tiny_mm_cfg() -> Any:
    """The mmengine config an adapter takes its test pipeline from (the same for every tiny variant)."""
    return dr.build_rtmdet_config(DetectorModelConfig(config="rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py"))
