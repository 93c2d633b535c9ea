"""BMP v2's pose family (bmp_core/models/pose_pmpose.py): sparsemax, the ProbPose head against its formulas,
the flip test, DARK with the pseudo-inverse, and strict loading of the published v2 layouts at every size."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.models
torch = pytest.importorskip("torch")
pytest.importorskip("mmpose")
F = torch.nn.functional

from bmp_core.coco_meta import FLIP_INDICES, flip_indices  # noqa: E402
from bmp_core.config import ConfigError, PoseModelConfig  # noqa: E402
from bmp_core.models import pose_maskpose as pm  # noqa: E402
from bmp_core.models import pose_pmpose as pp  # noqa: E402
from bmp_core.models.checkpoints import CheckpointError, load_strict  # noqa: E402
from bmp_core.records import PoseOutput  # noqa: E402
from tests.models import published_format as pf  # noqa: E402

CPU = torch.device("cpu")
SIZES = "sblh"


def _pmpose_cfg(**changes: Any) -> PoseModelConfig:
    return dataclasses.replace(
        PoseModelConfig(config="pmpose-s", num_keypoints=23, mask_alpha=0.25, batch_size=8), **changes
    )


@pytest.fixture(scope="module")
def pmpose_s() -> pp.PMPoseEstimator:
    """PMPose-s, random weights with BatchNorm statistics made non-trivial (so BN is not an identity)."""
    torch.manual_seed(0)
    estimator = pp.build_pose_v2(_pmpose_cfg(), CPU, None, "fp32")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in estimator.model.head.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return estimator


# --------------------------------------------------------------------------------------------
# Sparsemax


def _sparsemax_brute_force(z: np.ndarray) -> np.ndarray:
    """The Euclidean projection of ``z`` onto the simplex by trying every support: for a support S the
    closest point with that support is ``z_S - (sum z_S - 1) / |S|``; keep the feasible one nearest to z."""
    best, best_distance = None, np.inf
    for size in range(1, len(z) + 1):
        for support in itertools.combinations(range(len(z)), size):
            idx = list(support)
            p = np.zeros_like(z)
            p[idx] = z[idx] - (z[idx].sum() - 1.0) / size
            if (p >= 0).all() and ((p - z) ** 2).sum() < best_distance:
                best, best_distance = p, ((p - z) ** 2).sum()
    assert best is not None
    return best


def _sparsemax_bisection(z: Any) -> Any:
    """Sparsemax as ``max(z - tau, 0)`` with tau found by bisection on ``sum(max(z - tau, 0)) = 1`` (float64)."""
    z = z.double()
    lo = z.amax(-1, keepdim=True) - 1.0  # the sum is >= 1 here
    hi = z.amax(-1, keepdim=True)  # and 0 here
    for _ in range(200):
        mid = (lo + hi) / 2
        too_low = torch.clamp(z - mid, min=0).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(too_low, mid, lo), torch.where(too_low, hi, mid)
    return torch.clamp(z - (lo + hi) / 2, min=0)


def test_sparsemax_equals_the_brute_force_projection_on_small_inputs() -> None:
    rng = np.random.default_rng(0)
    cases = [rng.normal(size=n) * scale for n in (1, 2, 3, 5, 7) for scale in (0.1, 1.0, 5.0)]
    cases += [np.array([1.0, 1.0, 1.0]), np.array([0.3, 0.3, -2.0, 0.3]), np.array([10.0, -10.0, 0.0])]
    for z in cases:
        got = pp.sparsemax(torch.tensor(z, dtype=torch.float32)).numpy()
        np.testing.assert_allclose(got, _sparsemax_brute_force(z), atol=2e-6, err_msg=str(z))


def test_sparsemax_satisfies_its_definition_on_heatmap_sized_inputs() -> None:
    """Sums to 1, non-negative, the support is exactly {z > tau}, p = z - tau on it, along any dim, fp32."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 23, 64 * 48, generator=generator) * 3
    p = pp.sparsemax(logits, dim=-1)
    assert p.dtype == torch.float32
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 23), atol=1e-5, rtol=0)
    assert (p >= 0).all()
    shifted = logits - logits.amax(-1, keepdim=True)
    support = p > 0
    tau = ((shifted - p) * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
    assert ((shifted - p - tau).abs()[support] < 1e-4).all()  # p = z - tau on the support
    assert (shifted[~support] <= (tau + 1e-5).expand_as(shifted)[~support]).all()  # z <= tau off it
    assert 0 < (p > 0).float().mean() < 0.5  # sparse: most pixels exactly 0
    torch.testing.assert_close(p, _sparsemax_bisection(logits).float(), atol=1e-5, rtol=0)
    # any dim, and a bf16 input still computes in fp32
    torch.testing.assert_close(pp.sparsemax(logits.transpose(1, 2), dim=1), p.transpose(1, 2))
    assert pp.sparsemax(logits.bfloat16()).dtype == torch.float32


def test_a_lower_temperature_makes_sparsemax_sparser_and_peakier() -> None:
    """The head divides by 0.5: half the temperature, fewer pixels and a higher maximum (one-hot in the limit)."""
    logits = torch.randn(23, 3072, generator=torch.Generator().manual_seed(3))
    hot, cold = pp.sparsemax(logits), pp.sparsemax(logits / pp.SPARSEMAX_TEMPERATURE)
    assert ((cold > 0).sum(-1) <= (hot > 0).sum(-1)).all() and (cold.amax(-1) >= hot.amax(-1)).all()
    one_hot = pp.sparsemax(logits / 1e-4)
    torch.testing.assert_close(one_hot, F.one_hot(logits.argmax(-1), 3072).float())


# --------------------------------------------------------------------------------------------
# The head against its formulas


def _bn(x: Any, sd: dict[str, Any], prefix: str) -> Any:
    return F.batch_norm(
        x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"],
        training=False, eps=1e-5,
    )


def _head_by_formula(sd: dict[str, Any], x: Any) -> dict[str, Any]:
    """ProbPose's MultiHead at inference written directly with functional ops from its description."""
    y = x
    for conv, bn in (("deconv_layers.0", "deconv_layers.1"), ("deconv_layers.3", "deconv_layers.4")):
        y = F.relu(_bn(F.conv_transpose2d(y, sd[f"{conv}.weight"], stride=2, padding=1), sd, bn))
    logits = F.conv2d(y, sd["final_layer.weight"], sd["final_layer.bias"])
    b, k, h, w = logits.shape
    heatmaps = torch.clamp(1.0 * _sparsemax_bisection(logits.reshape(b, k, h * w) / 0.5), 0, 1).reshape(b, k, h, w)
    out = {"heatmaps": heatmaps.float()}
    for name, branch in (("presence", "probability"), ("visibility", "visibility"), ("oks", "oks")):
        z = x
        for conv, bn, pool in ((0, 1, (4, 3)), (4, 5, (2, 2)), (8, 9, (2, 2))):
            z = F.conv2d(z, sd[f"{branch}_layers.{conv}.weight"], sd[f"{branch}_layers.{conv}.bias"], padding=1)
            z = F.relu(F.max_pool2d(_bn(z, sd, f"{branch}_layers.{bn}"), pool, pool))
        z = F.conv2d(z, sd[f"{branch}_layers.12.weight"], sd[f"{branch}_layers.12.bias"])
        out[name] = torch.sigmoid(z)[:, :, 0, 0]
    return out


def test_head_outputs_equal_the_formulas_and_the_error_branch_never_runs(pmpose_s: pp.PMPoseEstimator) -> None:
    head = pmpose_s.model.head
    sd = {k: v.detach() for k, v in head.state_dict().items()}
    x = torch.randn(4, 384, 16, 12, generator=torch.Generator().manual_seed(2))
    ran: list[str] = []
    hook = head.error_layers.register_forward_hook(lambda *a: ran.append("error"))
    try:
        with torch.no_grad():
            got = head((x,))
    finally:
        hook.remove()
    expected = _head_by_formula(sd, x)
    assert ran == []
    assert got.heatmaps.shape == (4, 23, 64, 48) and got.presence.shape == (4, 23)
    torch.testing.assert_close(got.heatmaps, expected["heatmaps"], atol=1e-6, rtol=0)
    for name in ("presence", "visibility", "oks"):
        torch.testing.assert_close(getattr(got, name), expected[name], atol=1e-6, rtol=1e-5, msg=name)
    torch.testing.assert_close(got.heatmaps.sum((2, 3)), torch.ones(4, 23), atol=1e-5, rtol=0)


def test_under_mixed_precision_only_the_backbone_is_autocast(
    pmpose_s: pp.PMPoseEstimator, monkeypatch: Any
) -> None:
    """The head (sparsemax, sigmoids read by 0.5 thresholds) gets fp32 features and runs in fp32."""
    estimator = pp.PMPoseEstimator(pmpose_s.model, CPU, pmpose_s.cfg, "bf16")
    # autocast is a no-op on CPU in the adapter (device.autocast); force CPU bf16 autocast to see the split.
    monkeypatch.setattr(pm, "autocast", lambda device, precision: torch.autocast("cpu", dtype=torch.bfloat16))
    seen: dict[str, Any] = {}
    hooks = [
        estimator.model.backbone.layers[0].attn.qkv.register_forward_hook(
            lambda m, i, o: seen.__setitem__("backbone", o.dtype)
        ),
        estimator.model.head.final_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("heatmap", o.dtype)),
        estimator.model.head.oks_layers[0].register_forward_hook(
            lambda m, i, o: seen.update(oks_in=i[0].dtype, oks_out=o.dtype)
        ),
    ]
    try:
        poses = estimator.crop_poses(np.zeros((2, 256, 192, 3), np.uint8))
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {
        "backbone": torch.bfloat16, "heatmap": torch.float32, "oks_in": torch.float32, "oks_out": torch.float32
    }
    assert poses.heatmaps.dtype == np.float32 and poses.oks is not None and poses.oks.dtype == np.float32


# --------------------------------------------------------------------------------------------
# Flip test, decoding, the port


def test_flip_table_has_the_head_length_and_swaps_only_coco_pairs() -> None:
    table = flip_indices(23)
    assert table == list(FLIP_INDICES) + [17, 18, 19, 20, 21, 22]
    assert len(flip_indices(21)) == 21 and flip_indices(21) == table[:21]


def _random_crops(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (n, 256, 192, 3), dtype=np.uint8)
    crops[:, 40:200, 20:100] //= 3  # some left/right structure, so mirroring changes the input
    return crops


def test_a_mirrored_crop_gives_mirrored_keypoints_and_swapped_scalars(pmpose_s: pp.PMPoseEstimator) -> None:
    crops = _random_crops(2, seed=4)
    plain = pmpose_s.crop_poses(crops)
    mirrored = pmpose_s.crop_poses(np.ascontiguousarray(crops[:, :, ::-1]))
    flip = flip_indices(23)
    np.testing.assert_allclose(mirrored.heatmaps, plain.heatmaps[:, flip, :, ::-1], atol=1e-6)
    for name in ("presence", "visibility", "oks"):
        np.testing.assert_allclose(getattr(mirrored, name), getattr(plain, name)[:, flip], atol=1e-6, err_msg=name)
    # The flip-averaged scalars are the mean of the crop's and the swapped mirror's single-pass values.
    single = dataclasses.replace(pmpose_s.cfg, flip_test=False)
    one = pp.PMPoseEstimator(pmpose_s.model, CPU, single).crop_poses(crops)
    other = pp.PMPoseEstimator(pmpose_s.model, CPU, single).crop_poses(np.ascontiguousarray(crops[:, :, ::-1]))
    np.testing.assert_allclose(plain.oks, (one.oks + other.oks[:, flip]) / 2, atol=1e-6)
    # Decoded: the argmax column u -> 47 - u with left and right swapped, so x -> 192 - x in crop pixels;
    # DARK's mixed derivative reads the (+1, +1) / (-1, -1) diagonal only (mmpose's stencil), which a mirror
    # turns into the other diagonal, so refined points agree to a fraction of a pixel, not exactly.
    from mmpose.codecs.utils import get_heatmap_maximum

    argmax, _ = get_heatmap_maximum(plain.heatmaps[:, :17])
    argmax_mirrored, _ = get_heatmap_maximum(mirrored.heatmaps[:, :17])
    np.testing.assert_array_equal(argmax_mirrored[..., 0], 47 - argmax[:, FLIP_INDICES, 0])
    np.testing.assert_array_equal(argmax_mirrored[..., 1], argmax[:, FLIP_INDICES, 1])
    centers = np.tile(np.float32([[96.0, 128.0]]), (len(crops), 1))  # crop pixels: centre and size of the crop
    scales = np.tile(np.float32([[192.0, 256.0]]), (len(crops), 1))
    kp = pmpose_s.decode(plain.heatmaps[:, :17], centers, scales)
    kp_mirrored = pmpose_s.decode(mirrored.heatmaps[:, :17], centers, scales)
    np.testing.assert_allclose(kp_mirrored[..., 0], 192.0 - kp[:, FLIP_INDICES, 0], atol=0.5)
    np.testing.assert_allclose(kp_mirrored[..., 1], kp[:, FLIP_INDICES, 1], atol=0.5)


def test_estimate_returns_pose_outputs_with_the_predicted_oks_as_the_score(
    pmpose_s: pp.PMPoseEstimator, ochuman_images: dict[str, np.ndarray]
) -> None:
    image = ochuman_images["004806"]
    boxes = np.array([[60, 40, 260, 420], [200, 30, 420, 400]], np.float32)
    masks = np.zeros((2, *image.shape[:2]), bool)
    masks[0, 60:400, 80:240] = True
    out = pmpose_s.estimate([image, image], [boxes, boxes[:0]], [masks, None])
    assert [type(o) for o in out] == [PoseOutput, PoseOutput]
    assert out[0].keypoints_xys.shape == (2, 17, 3) and out[0].presence.shape == (2, 17)
    assert out[1].keypoints_xys.shape == (0, 17, 3) and out[1].visibility.shape == (0, 17)
    crops, centers, scales = pmpose_s.prepare_crops(image, boxes, masks)
    poses = pmpose_s.crop_poses(crops)
    np.testing.assert_array_equal(out[0].keypoints_xys[..., 2], poses.oks[:, :17])
    np.testing.assert_array_equal(out[0].presence, poses.presence[:, :17])
    np.testing.assert_array_equal(out[0].visibility, poses.visibility[:, :17])
    decoded = pmpose_s.decode(poses.heatmaps[:, :17], centers, scales)
    np.testing.assert_array_equal(out[0].keypoints_xys[..., :2], decoded[..., :2])
    assert not np.array_equal(out[0].keypoints_xys[..., 2], poses.heatmaps[:, :17].max(axis=(2, 3)))


def test_maskpose_1_1_returns_heatmap_maxima_and_no_presence_or_visibility(
    ochuman_images: dict[str, np.ndarray],
) -> None:
    cfg = PoseModelConfig(config="maskpose-s-1.1", num_keypoints=23, mask_alpha=0.25, batch_size=8)
    torch.manual_seed(0)
    estimator = pp.build_pose_v2(cfg, CPU, None, "fp32")
    assert estimator.model.head.out_channels == 23 and estimator.pseudo_inverse
    image = ochuman_images["000817"]
    boxes = np.array([[30, 30, 300, 400]], np.float32)
    (out,) = estimator.estimate([image], [boxes], [None])
    assert out.presence is None and out.visibility is None
    crops, centers, scales = estimator.prepare_crops(image, boxes, None)
    heatmaps = estimator.heatmaps(crops)[:, :17]
    np.testing.assert_array_equal(out.keypoints_xys[..., 2], heatmaps.max(axis=(2, 3)))


def test_v2_configs_need_23_channels() -> None:
    with pytest.raises(ConfigError, match="num_keypoints: 23"):
        PoseModelConfig(config="pmpose-b")
    with pytest.raises(ConfigError, match="num_keypoints: 23"):
        PoseModelConfig(config="maskpose-l-1.1", num_keypoints=21)
    with pytest.raises(ValueError, match="input_size_wh"):
        pp.build_pose_v2(_pmpose_cfg(input_size_wh=(256, 256)), CPU, None, "fp32")


# --------------------------------------------------------------------------------------------
# DARK with the pseudo-inverse


def test_pinv_steps_only_along_curvature_where_inv_fails() -> None:
    """A Hessian with ``H + eps I`` singular (no curvature along y): inv raises, pinv steps along x only;
    a well-conditioned one: both give the same Newton step."""
    eps = np.finfo(np.float32).eps
    singular = np.array([[-2.0, 0.0], [0.0, -eps]])  # + eps I = diag(-2 + eps, 0)
    gradient = np.array([[0.5], [0.25]])
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.inv(singular + eps * np.eye(2))
    step = pm.taylor_offsets(singular[None, None], gradient[None, None])
    np.testing.assert_allclose(step[0, 0], [0.5 / (-2.0 + eps), 0.0])
    regular = np.array([[-1.5, 0.3], [0.3, -0.8]])
    np.testing.assert_allclose(
        pm.taylor_offsets(regular[None, None], gradient[None, None])[0, 0],
        (np.linalg.inv(regular + eps * np.eye(2)) @ gradient)[:, 0],
    )


def _ridge_heatmaps() -> np.ndarray:
    """(2, 17, 64, 48): instance 0 a vertical ridge (flat along y: a near-singular Hessian), instance 1
    ordinary blobs."""
    yy, xx = np.mgrid[0:64, 0:48].astype(np.float32)
    heatmaps = np.zeros((2, 17, 64, 48), np.float32)
    for k in range(17):
        heatmaps[0, k] = np.exp(-((xx - 10.3 - k) ** 2) / 8) * (1 + 1e-6 * (yy == 30 + k % 3))
        heatmaps[1, k] = np.exp(-((xx - 20.6) ** 2 + (yy - 15.2 - 2 * k) ** 2) / 8)
    return heatmaps


def test_decoding_with_pinv_on_a_near_singular_ridge_equals_inv_and_stays_on_the_ridge() -> None:
    """Near-singular (cond ~1e6, far from pinv's 1e-15 cut-off): pinv and inv give the same step, so v2's
    pinv changes results only where ``H + eps I`` is exactly singular (above), where inv fails."""
    heatmaps = _ridge_heatmaps()
    argmax = np.stack(np.unravel_index(heatmaps.reshape(2, 17, -1).argmax(-1), (64, 48))[::-1], -1).astype(np.float32)
    with_inv = pm.refine_dark_udp_batch(argmax, heatmaps, 11)
    with_pinv = pm.refine_dark_udp_batch(argmax, heatmaps, 11, pseudo_inverse=True)
    np.testing.assert_allclose(with_pinv, with_inv, atol=1e-5)
    np.testing.assert_allclose(with_pinv[0, :, 0], 10.3 + np.arange(17), atol=0.05)  # the ridge's x
    assert (np.abs(with_pinv[0, :, 1] - argmax[0, :, 1]) < 1.0).all()  # no runaway step along the ridge
    np.testing.assert_allclose(with_pinv[1, :, 0], 20.6, atol=0.05)
    # A NaN heatmap makes the SVD fail: that instance keeps its argmax, the other is refined as before.
    broken = heatmaps.copy()
    broken[0, 3] = np.nan
    fallback = pm.refine_dark_udp_batch(argmax, broken, 11, pseudo_inverse=True)
    np.testing.assert_array_equal(fallback[0], argmax[0])
    np.testing.assert_allclose(fallback[1], with_pinv[1], atol=1e-6)


# --------------------------------------------------------------------------------------------
# Published layouts, every size


def _v2_network_on_meta(arch: str) -> Any:
    """The v2 network for ``arch`` with no memory behind its parameters (keys and shapes only)."""
    from mmpose.registry import MODELS

    with torch.device("meta"):
        if arch.startswith("pmpose-"):
            return pp.build_pmpose_network(arch, 23, (192, 256))
        return MODELS.build(pm.vitpose_model_config(arch, 23, (192, 256)))


@pytest.mark.parametrize("arch", [f"pmpose-{s}" for s in SIZES] + [f"maskpose-{s}-1.1" for s in SIZES])
def test_every_size_has_exactly_the_published_v2_layout_and_loads_strictly(arch: str) -> None:
    """ViT-H PMPose is ~3.3 GB in fp32: built on the meta device, so only keys and shapes exist. The
    synthetic state dict shares one storage (the largest tensor's size)."""
    import warnings

    model = _v2_network_on_meta(arch)
    expected = pf.layout(arch)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op": the point here
        load_strict(model, pf.synthetic_state_dict(expected), f"pose ({arch})")


def test_a_renamed_key_or_changed_shape_is_refused_with_its_name() -> None:
    model = _v2_network_on_meta("pmpose-b")
    layout = pf.layout("pmpose-b")
    renamed = pf.synthetic_state_dict(layout)
    renamed["head.oks_layer.12.weight"] = renamed.pop("head.oks_layers.12.weight")
    with pytest.raises(CheckpointError, match=r"head\.oks_layers\.12\.weight.*head\.oks_layer\.12\.weight"):
        load_strict(model, renamed, "pose (pmpose-b)")
    # A v1 MaskPose-b (21 channels) into the 23-channel MaskPose-1.1: the final layer is named.
    v1 = pf.synthetic_state_dict(pf.layout("maskpose-b-1.0.0"))
    mis_shaped = r"head\.final_layer\.weight \(21, 256, 1, 1\) vs model \(23, 256, 1, 1\)"
    with pytest.raises(CheckpointError, match=mis_shaped):
        load_strict(_v2_network_on_meta("maskpose-b-1.1"), v1, "pose (maskpose-b-1.1)")
    # A MaskPose-1.1 file for PMPose: the 92 scalar-branch keys are missing.
    with pytest.raises(CheckpointError, match=r"missing keys \(92\): head\.error_layers"):
        load_strict(model, pf.synthetic_state_dict(pf.layout("maskpose-b-1.1")), "pose (pmpose-b)")


@pytest.mark.parametrize("arch", ["pmpose-s", "maskpose-s-1.1"])
def test_a_published_format_file_loads_through_the_builder(arch: str, tmp_path: Path) -> None:
    """The mmengine file format (numpy meta, HistoryBuffers) -> build_bmp_models' pose path, weights copied."""
    from bmp_core.config import ModelsConfig
    from bmp_core.models.build import checkpoint_state_dict

    state = pf.synthetic_state_dict(pf.layout(arch))
    path = pf.save_mmengine(tmp_path / f"{arch}.pth", pf.mmengine_checkpoint(state, num_keypoints=23))
    cfg = PoseModelConfig(config=arch, checkpoint=str(path), num_keypoints=23, mask_alpha=0.25)
    models_cfg = ModelsConfig(pose=cfg, cache_dir=str(tmp_path / "cache"))
    estimator = pp.build_pose_v2(cfg, CPU, checkpoint_state_dict(cfg.checkpoint, models_cfg), "fp32")
    loaded = estimator.model.state_dict()
    assert set(loaded) == set(state)
    scalar_keys = [] if "1.1" in arch else ["head.oks_layers.12.bias"]
    for key in ("head.final_layer.weight", "backbone.pos_embed", *scalar_keys):
        torch.testing.assert_close(loaded[key], state[key], msg=key)


def test_build_models_builds_pmpose_for_a_v2_pose_config(tiny_cfg: Any) -> None:
    """``models.pose.config: pmpose-s`` through the public builder: the v2 estimator, seeded like v1's."""
    from bmp_core.models import build_models

    cfg = dataclasses.replace(tiny_cfg.models, pose=_pmpose_cfg())
    models = build_models(cfg)
    assert type(models.pose) is pp.PMPoseEstimator and models.pose.predicts_scalars
    again = pp.build_pose_v2(_pmpose_cfg(), CPU, None, "fp32")  # not seeded here: differs from the built one
    torch.manual_seed(cfg.seed)
    seeded = pp.build_pose_v2(_pmpose_cfg(), CPU, None, "fp32")
    key = "head.oks_layers.12.weight"
    assert torch.equal(models.pose.model.state_dict()[key], seeded.model.state_dict()[key])
    assert not torch.equal(again.model.state_dict()[key], seeded.model.state_dict()[key])
