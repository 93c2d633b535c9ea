"""Checkpoint resolution (local, http on 127.0.0.1, hf:// via HF_ENDPOINT, S3 on a moto server) and strict
loading of random-init checkpoints written in the published formats."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.models
torch = pytest.importorskip("torch")

from bmp_core.models.checkpoints import (
    CheckpointError,
    cache_path_for,
    hf_to_https,
    load_state_dict,
    load_strict,
    resolve_checkpoint,
)
from tests.models.pickle_payloads import Opaque, RunsACommand  # noqa: E402

# --------------------------------------------------------------------------------------------
# A local http server that counts requests


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_local_path_and_sha256(tmp_path: Path) -> None:
    f = tmp_path / "w.pth"
    f.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert resolve_checkpoint(str(f), tmp_path / "cache", sha256=digest) == f
    assert resolve_checkpoint(f"file://{f}", tmp_path / "cache") == f
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        resolve_checkpoint(str(f), tmp_path / "cache", sha256="0" * 64)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(str(tmp_path / "missing.pth"), tmp_path / "cache")


def test_http_download_once_then_cache_hit(tmp_path: Path, http_folder: Any) -> None:
    base, root, handler = http_folder
    (root / "model.pth").write_bytes(b"x" * 3_000_000)
    cache = tmp_path / "cache"
    first = resolve_checkpoint(
        f"{base}/model.pth", cache, sha256=hashlib.sha256(b"x" * 3_000_000).hexdigest()
    )
    assert first.read_bytes() == b"x" * 3_000_000
    assert first == cache_path_for(f"{base}/model.pth", cache) and first.name == "model.pth"
    second = resolve_checkpoint(f"{base}/model.pth", cache)
    assert second == first
    assert handler.requests == ["/model.pth"]  # the second call never touched the network
    assert _leftovers(cache) == ["model.pth"]


def test_sha256_mismatch_leaves_nothing_in_the_cache(tmp_path: Path, http_folder: Any) -> None:
    base, root, _ = http_folder
    (root / "model.pth").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        resolve_checkpoint(f"{base}/model.pth", cache, sha256=hashlib.sha256(b"original").hexdigest())
    assert _leftovers(cache) == []


def test_failed_download_names_the_url_and_leaves_no_partial_file(tmp_path: Path, http_folder: Any) -> None:
    base, _, _ = http_folder
    with pytest.raises(CheckpointError, match=r"could not download checkpoint .*/absent\.pth"):
        resolve_checkpoint(f"{base}/absent.pth", tmp_path / "cache")
    assert _leftovers(tmp_path / "cache") == []


def test_offline_without_cache_is_one_clear_error(tmp_path: Path, http_folder: Any, monkeypatch: Any) -> None:
    base, root, handler = http_folder
    (root / "model.pth").write_bytes(b"w")
    uri = f"{base}/model.pth"
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(uri, tmp_path / "cache", offline=True)
    message = str(err.value)
    assert (
        uri in message and str(cache_path_for(uri, tmp_path / "cache")) in message and "Pre-stage" in message
    )
    monkeypatch.setenv("BMP_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="offline"):
        resolve_checkpoint(uri, tmp_path / "cache")
    assert handler.requests == []
    # Pre-staged exactly where the error said: found offline.
    staged = cache_path_for(uri, tmp_path / "cache")
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"w")
    assert resolve_checkpoint(uri, tmp_path / "cache") == staged


def test_concurrent_resolvers_download_once(tmp_path: Path, http_folder: Any) -> None:
    base, root, handler = http_folder
    payload = os.urandom(2_000_000)
    (root / "big.pth").write_bytes(payload)
    handler.delay_s = 0.5  # every resolver arrives while the first download is still running
    results: list[Any] = []

    def worker() -> None:
        try:
            results.append(resolve_checkpoint(f"{base}/big.pth", tmp_path / "cache").read_bytes() == payload)
        except Exception as err:  # pragma: no cover - reported below
            results.append(err)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [True] * 6
    assert handler.requests == ["/big.pth"]


def test_hf_uri_goes_to_the_hub_resolve_url(tmp_path: Path, http_folder: Any, monkeypatch: Any) -> None:
    base, root, handler = http_folder
    target = root / "vrg-prague" / "BBoxMaskPose" / "resolve" / "main" / "MaskPose"
    target.mkdir(parents=True)
    (target / "MaskPose-b-1.0.0.pth").write_bytes(b"hf")
    monkeypatch.setenv("HF_ENDPOINT", base)
    path = resolve_checkpoint(
        "hf://vrg-prague/BBoxMaskPose/MaskPose/MaskPose-b-1.0.0.pth", tmp_path / "cache"
    )
    assert path.read_bytes() == b"hf"
    assert handler.requests == ["/vrg-prague/BBoxMaskPose/resolve/main/MaskPose/MaskPose-b-1.0.0.pth"]
    monkeypatch.delenv("HF_ENDPOINT")
    assert hf_to_https("hf://o/r/a/b.pt@v1") == "https://huggingface.co/o/r/resolve/v1/a/b.pt"


def test_an_encoded_plus_in_the_url_is_fetched_and_cached_under_the_plain_name(
    tmp_path: Path, http_folder: Any, monkeypatch: Any
) -> None:
    """SAM-pose2seg's published URL ends in ``SAM-pose2seg_hiera_b%2B.pt`` (``+`` encoded): the request keeps
    the encoding, the cache file is named ``...b+.pt``, and the ``hf://`` spelling with a literal ``+``
    resolves to the same request."""
    base, root, handler = http_folder
    (root / "SAM-pose2seg_hiera_b+.pt").write_bytes(b"sam-pose2seg")
    url = f"{base}/SAM-pose2seg_hiera_b%2B.pt"
    path = resolve_checkpoint(url, tmp_path / "cache")
    assert path.name == "SAM-pose2seg_hiera_b+.pt" and path.read_bytes() == b"sam-pose2seg"
    assert handler.requests == ["/SAM-pose2seg_hiera_b%2B.pt"]
    assert resolve_checkpoint(url, tmp_path / "cache") == path and len(handler.requests) == 1  # cache hit
    target = root / "vrg-prague" / "BBoxMaskPose" / "resolve" / "main"
    target.mkdir(parents=True)
    (target / "SAM-pose2seg_hiera_b+.pt").write_bytes(b"via hf")
    monkeypatch.setenv("HF_ENDPOINT", base)
    hf_path = resolve_checkpoint("hf://vrg-prague/BBoxMaskPose/SAM-pose2seg_hiera_b+.pt", tmp_path / "cache")
    assert hf_path.name == "SAM-pose2seg_hiera_b+.pt" and hf_path.read_bytes() == b"via hf"
    assert handler.requests[-1] == "/vrg-prague/BBoxMaskPose/resolve/main/SAM-pose2seg_hiera_b%2B.pt"


def test_sam_pose2seg_has_the_sam_2_1_b_plus_layout() -> None:
    """SAM-pose2seg is a weights swap: its layout is SAM 2.1 b+'s, which the D3 build loads strictly
    (test_published_layouts_load_strictly_into_bmp_d3_with_the_default_settings)."""
    from tests.models import published_format as pf

    assert pf.layout("sam-pose2seg") == pf.layout("sam2") and len(pf.layout("sam2")) == 615


@pytest.fixture()
def moto_s3(monkeypatch: Any) -> Iterator[Any]:
    """A moto S3 server on 127.0.0.1; s3fs/boto3 reach it through AWS_ENDPOINT_URL."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    for key, value in dict(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    ).items():
        monkeypatch.setenv(key, value)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bmp-weights")
    try:
        yield client
    finally:
        server.stop()


def test_s3_download_through_moto(tmp_path: Path, moto_s3: Any) -> None:
    moto_s3.put_object(Bucket="bmp-weights", Key="w/sam.pt", Body=b"s3 weights")
    path = resolve_checkpoint("s3://bmp-weights/w/sam.pt", tmp_path / "cache")
    assert path.read_bytes() == b"s3 weights" and path.name == "sam.pt"


# --------------------------------------------------------------------------------------------
# Reading and strict loading




def test_load_state_dict_formats_and_pickle_policy(tmp_path: Path, caplog: Any) -> None:
    sd = {"a.weight": torch.ones(2, 2), "b.bias": torch.zeros(3)}
    torch.save({"state_dict": sd}, tmp_path / "mm_plain.pth")
    torch.save({"model": sd}, tmp_path / "sam.pt")
    torch.save({"module.a.weight": sd["a.weight"], "module.b.bias": sd["b.bias"]}, tmp_path / "bare.pth")
    # mmengine checkpoints carry numpy objects in `meta`: on the allow-list, read by the safe loader.
    torch.save(
        {"meta": {"epoch": np.int64(210), "hist": np.arange(3)}, "state_dict": sd}, tmp_path / "mm_meta.pth"
    )
    for name in ("mm_plain.pth", "sam.pt", "bare.pth", "mm_meta.pth"):
        got = load_state_dict(tmp_path / name)
        assert sorted(got) == sorted(sd) and torch.equal(got["a.weight"], sd["a.weight"])
    # Anything else is refused by default, naming the file and what it asks for ...
    torch.save({"meta": {"x": Opaque()}, "state_dict": sd}, tmp_path / "custom.pth")
    with pytest.raises(CheckpointError) as err:
        load_state_dict(tmp_path / "custom.pth")
    assert str(tmp_path / "custom.pth") in str(err.value) and "Opaque" in str(err.value)
    assert "models.allow_pickle_checkpoints: true" in str(err.value)
    # ... and read only on opt-in, with a warning naming the file.
    with caplog.at_level("WARNING", logger="bmp_core.models.checkpoints"):
        assert sorted(load_state_dict(tmp_path / "custom.pth", allow_pickle=True)) == sorted(sd)
    assert any(
        str(tmp_path / "custom.pth") in r.getMessage() and "FULLY" in r.getMessage() for r in caplog.records
    )
    torch.save({"optimizer": {"lr": torch.ones(1)}}, tmp_path / "nosd.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_state_dict(tmp_path / "nosd.pth")


@pytest.mark.parametrize("func", ["os.system", "builtins.exec", "getattr gadget"])
def test_a_checkpoint_that_runs_code_is_refused_and_runs_nothing(tmp_path: Path, func: str) -> None:
    marker = tmp_path / "pwned"
    payloads = {
        "os.system": RunsACommand(os.system, f"touch {marker}"),
        "builtins.exec": RunsACommand(exec, f"open({str(marker)!r}, 'w').close()"),
    }
    if func == "getattr gadget":
        # getattr is on the allow-list only as HistoryBuffer's statistics methods; anything else is refused.
        from mmengine.logging.history_buffer import HistoryBuffer

        evil: Any = type("G", (), {"__reduce__": lambda self: (getattr, (HistoryBuffer, "__init__"))})()
    else:
        evil = payloads[func]
    file = tmp_path / "evil.pth"
    torch.save({"meta": {"hook": evil}, "state_dict": {"w": torch.ones(1)}}, file)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(file)  # the default: allow_pickle=False
    message = str(err.value)
    assert str(file) in message and "refused by the safe loader" in message
    assert not marker.exists()
    if func != "getattr gadget":
        assert func.split(".")[-1] in message or "posix.system" in message  # names what the file asks for
        # The payload is real: a full unpickle (what the old default did) runs it.
        torch.load(file, weights_only=False)
        assert marker.exists()


def test_load_strict_names_renamed_and_mis_shaped_keys() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    sd = dict(model.state_dict())
    sd["0.weights"] = sd.pop("0.weight")
    with pytest.raises(CheckpointError) as err:
        load_strict(model, sd, "toy")
    assert "missing keys (1): 0.weight" in str(err.value) and "unexpected keys (1): 0.weights" in str(
        err.value
    )
    sd = dict(model.state_dict())
    sd["1.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): 1.bias \(5,\) vs model \(2,\)"):
        load_strict(model, sd, "toy")


# --------------------------------------------------------------------------------------------
# Published formats through build_bmp_models: outputs identical to the in-memory models


def test_checkpoints_via_path_http_and_s3_reproduce_the_in_memory_models(
    tmp_path: Path,
    http_folder: Any,
    moto_s3: Any,
    tiny_cfg: Any,
    tiny_models: Any,
    ochuman_images: dict[str, np.ndarray],
) -> None:
    from bmp_core.models.build import build_bmp_models

    base, root, _ = http_folder
    # Published formats: mmengine {'meta', 'state_dict'} for RTMDet and MaskPose, sam2 {'model'}.
    meta = {"epoch": np.int64(300), "mmdet_version": "3.3.0"}
    # (The smallest file, RTMDet tiny's ~22 MB, goes through moto, the slowest of the three transports.)
    det_file = tmp_path / "rtmdet.pth"
    torch.save({"meta": meta, "state_dict": tiny_models.detector.model.state_dict()}, det_file)
    moto_s3.put_object(Bucket="bmp-weights", Key="weights/rtmdet-ins-tiny.pth", Body=det_file.read_bytes())
    torch.save({"meta": meta, "state_dict": tiny_models.pose.model.state_dict()}, tmp_path / "maskpose.pth")
    torch.save({"model": tiny_models.segmenter.predictor.model.state_dict()}, root / "sam2.1_hiera_tiny.pt")

    m = tiny_cfg.models
    cfg = dataclasses.replace(
        m,
        seed=m.seed + 1,  # a different random init: only the checkpoints can make the outputs agree
        cache_dir=str(tmp_path / "cache"),
        detector=dataclasses.replace(m.detector, checkpoint="s3://bmp-weights/weights/rtmdet-ins-tiny.pth"),
        pose=dataclasses.replace(m.pose, checkpoint=str(tmp_path / "maskpose.pth")),
        segmenter=dataclasses.replace(m.segmenter, checkpoint=f"{base}/sam2.1_hiera_tiny.pt"),
    )
    loaded = build_bmp_models(cfg)

    image = ochuman_images["003896"]
    (d0,), (d1,) = tiny_models.detector.detect([image]), loaded.detector.detect([image])
    np.testing.assert_array_equal(d1.boxes_xyxy, d0.boxes_xyxy)
    np.testing.assert_array_equal(d1.masks, d0.masks)
    boxes = d0.boxes_xyxy[:3]
    np.testing.assert_array_equal(
        loaded.pose.estimate([image], [boxes], [d0.masks[:3]])[0].keypoints_xys,
        tiny_models.pose.estimate([image], [boxes], [d0.masks[:3]])[0].keypoints_xys,
    )
    small = image[::4, ::4].copy()  # SAM resizes to 1024 anyway; a small image keeps the upsampling cheap
    points = [np.array([[40, 60], [80, 120]], np.float32)]
    s0 = tiny_models.segmenter.segment(tiny_models.segmenter.prepare(small), points)
    s1 = loaded.segmenter.segment(loaded.segmenter.prepare(small), points)
    np.testing.assert_array_equal(s1.masks, s0.masks)
    np.testing.assert_array_equal(s1.scores, s0.scores)

    # ...and the seed really changes a random model (so the agreement above is the checkpoints' doing).
    from bmp_core.models.pose_maskpose import build_maskpose

    torch.manual_seed(cfg.seed)
    other = build_maskpose(cfg.pose, torch.device("cpu"), None, "fp32")
    assert not torch.equal(
        other.model.head.final_layer.weight, tiny_models.pose.model.head.final_layer.weight
    )


def test_a_renamed_key_fails_loudly_through_the_builder(tiny_models: Any, tiny_cfg: Any) -> None:
    from bmp_core.models.pose_maskpose import build_maskpose

    sd = dict(tiny_models.pose.model.state_dict())
    sd["head.final_layer.weights"] = sd.pop("head.final_layer.weight")
    with pytest.raises(CheckpointError) as err:
        build_maskpose(tiny_cfg.models.pose, torch.device("cpu"), sd, "fp32")
    assert "head.final_layer.weight" in str(err.value) and "head.final_layer.weights" in str(err.value)
    # A 17-channel head checkpoint in the 21-channel model: named as a shape mismatch.
    sd = dict(tiny_models.pose.model.state_dict())
    sd["head.final_layer.weight"] = sd["head.final_layer.weight"][:17]
    sd["head.final_layer.bias"] = sd["head.final_layer.bias"][:17]
    with pytest.raises(CheckpointError, match="shape mismatches .*head.final_layer"):
        build_maskpose(tiny_cfg.models.pose, torch.device("cpu"), sd, "fp32")


# --------------------------------------------------------------------------------------------
# The published layouts and file formats into the models configs/bmp_d3.yaml builds (real sizes)


def test_published_layouts_load_strictly_into_bmp_d3_with_the_default_settings(
    published_layout_models: Any,
) -> None:
    built = published_layout_models
    assert built.cfg.allow_pickle_checkpoints is False  # the default
    assert built.load_calls == [True, True, True]  # one safe load per file, no full unpickle
    # The files are in the published formats: mmengine's pickles name numpy 1.x's functions, the
    # message hub's HistoryBuffer (and its statistics methods through getattr); sam2's is tensors only.
    for name in ("rtmdet", "maskpose"):
        needs = set(torch.serialization.get_unsafe_globals_in_checkpoint(built.files[name]))
        assert {
            "numpy.core.multiarray._reconstruct",
            "numpy.core.multiarray.scalar",
            "mmengine.logging.history_buffer.HistoryBuffer",
            "builtins.getattr",
        } <= needs
    assert torch.serialization.get_unsafe_globals_in_checkpoint(built.files["sam2"]) == []
    modules = {
        "rtmdet": built.models.detector.model,
        "maskpose": built.models.pose.model,
        "sam2": built.models.segmenter.predictor.model,
    }
    for name, module in modules.items():
        own = module.state_dict()
        written = built.state_dicts[name]
        assert sorted(own) == sorted(written)
        for key in list(written)[:: max(1, len(written) // 25)]:  # the values really arrived
            assert torch.equal(own[key].cpu(), written[key]), (name, key)


def test_vitpose_multi_layout_is_the_maskpose_network(published_layout_models: Any) -> None:
    from bmp_core.models.checkpoints import load_strict
    from tests.models import published_format as pf

    sd = pf.synthetic_state_dict(pf.layout("vitpose"))
    load_strict(published_layout_models.models.pose.model, sd, "pose (vitpose-b)")  # raises on any mismatch


def _module(built: Any, name: str) -> Any:
    return {
        "rtmdet": built.models.detector.model,
        "maskpose": built.models.pose.model,
        "sam2": built.models.segmenter.predictor.model,
    }[name]


@pytest.mark.parametrize("name", ["rtmdet", "maskpose", "sam2"])
def test_one_renamed_key_or_one_changed_shape_is_refused_naming_it(
    published_layout_models: Any, name: str
) -> None:
    from bmp_core.models.checkpoints import load_strict
    from tests.models import published_format as pf

    shapes = pf.layout(name)
    keys = list(shapes)
    renamed_key = next(k for k in keys[len(keys) // 2 :] if shapes[k])
    sd = pf.synthetic_state_dict(shapes)
    sd[renamed_key + "_v2"] = sd.pop(renamed_key)
    with pytest.raises(CheckpointError) as err:
        load_strict(_module(published_layout_models, name), sd, name)
    assert f"missing keys (1): {renamed_key}" in str(err.value)
    assert f"unexpected keys (1): {renamed_key}_v2" in str(err.value)

    reshaped_key = next(k for k in reversed(keys) if len(shapes[k]) >= 1 and shapes[k][0] > 1)
    changed = dict(shapes, **{reshaped_key: (shapes[reshaped_key][0] - 1, *shapes[reshaped_key][1:])})
    with pytest.raises(CheckpointError) as err:
        load_strict(_module(published_layout_models, name), pf.synthetic_state_dict(changed), name)
    expected = f"shape mismatches (1): {reshaped_key} {changed[reshaped_key]} vs model {shapes[reshaped_key]}"
    assert expected in str(err.value)
    assert "missing keys" not in str(err.value) and "unexpected keys" not in str(err.value)


def test_a_person_only_rtmdet_layout_gets_the_num_classes_hint(
    published_layout_models: Any
) -> None:
    from bmp_core.models.checkpoints import load_strict
    from tests.models import published_format as pf

    shapes = pf.layout("rtmdet")
    person_only = {
        k: ((1, *shape[1:]) if k.startswith("bbox_head.rtm_cls.") else shape) for k, shape in shapes.items()
    }
    assert person_only != shapes
    with pytest.raises(CheckpointError) as err:
        load_strict(
            published_layout_models.models.detector.model, pf.synthetic_state_dict(person_only), "detector"
        )
    assert "bbox_head.rtm_cls.0.weight (1, 256, 1, 1) vs model (80, 256, 1, 1)" in str(err.value)
    assert "set models.detector.num_classes: 1" in str(err.value)
