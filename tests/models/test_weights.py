"""The driver's checkpoint check (bmp_core/models/weights.py): the models built on the meta device have
the real models' layouts; ``bmp-label weights --check`` reports each file; a checkpoint with a renamed
key stops ``run`` before Ray starts. Synthetic checkpoints of the tiny models (configs/tiny_random.yaml)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.models
torch = pytest.importorskip("torch")

from bmp_core.models.checkpoints import load_state_dict  # noqa: E402
from bmp_core.models.weights import expected_layouts, file_layout, parameters_on_meta  # noqa: E402
from jobs.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny_random.yaml")


def _shapes(module: Any) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def detector_files(tmp_path_factory: pytest.TempPathFactory, tiny_models: Any) -> dict[str, Path]:
    """RTMDet-Ins tiny's weights in mmengine's format: as built ("good") and with one key renamed ("renamed")."""
    folder = tmp_path_factory.mktemp("weights")
    sd = tiny_models.detector.model.state_dict()
    meta = {"epoch": np.int64(300), "mmdet_version": "3.3.0"}
    torch.save({"meta": meta, "state_dict": sd}, folder / "rtmdet-tiny.pth")
    renamed = dict(sd)
    renamed["bbox_head.rtm_cls.0.weights"] = renamed.pop("bbox_head.rtm_cls.0.weight")
    torch.save({"meta": meta, "state_dict": renamed}, folder / "rtmdet-tiny-renamed.pth")
    return {"good": folder / "rtmdet-tiny.pth", "renamed": folder / "rtmdet-tiny-renamed.pth"}


def test_models_built_on_meta_have_the_built_models_layouts(tiny_cfg: Any, tiny_models: Any) -> None:
    """Every key and shape of each model the config builds, from the same builders on the meta device,
    equals the CPU-built model's; and nothing was allocated for the parameters."""
    layouts = expected_layouts(tiny_cfg.models, {"detector", "pose", "segmenter"})
    assert layouts["detector"] == _shapes(tiny_models.detector.model)
    assert layouts["pose"] == _shapes(tiny_models.pose.model)
    assert layouts["segmenter"] == _shapes(tiny_models.segmenter.predictor.model)

    from bmp_core.models.pose_maskpose import build_maskpose

    with parameters_on_meta():
        pose = build_maskpose(tiny_cfg.models.pose, torch.device("meta"), None, "fp32").model
    assert all(p.is_meta for p in pose.parameters())
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # the patch is undone on the way out


def test_layouts_are_read_memory_mapped_and_legacy_files_still_read(tmp_path: Path, tiny_models: Any) -> None:
    sd = tiny_models.pose.model.state_dict()
    torch.save({"state_dict": sd}, tmp_path / "zip.pth")
    torch.save({"state_dict": sd}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    mapped = load_state_dict(tmp_path / "zip.pth", mmap=True)
    assert sorted(mapped) == sorted(sd) and all(torch.equal(mapped[k], sd[k]) for k in list(sd)[::20])
    assert file_layout(tmp_path / "legacy.pth") == file_layout(tmp_path / "zip.pth") == _shapes(tiny_models.pose.model)


def test_weights_check_prints_size_sha256_and_layout_of_each_file(detector_files: dict[str, Path],
                                                                  capsys: Any) -> None:
    good = detector_files["good"]
    assert main(["weights", TINY, f"models.detector.checkpoint={good}", "--check"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    size_mib = f"{good.stat().st_size / (1 << 20):.1f} MiB"
    assert line.startswith(f"ok     detector {good} -> {good}: {size_mib}, sha256 {digest}, layout ok (")
    assert "tensors fit rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py)" in line

    renamed = detector_files["renamed"]
    assert main(["weights", TINY, f"models.detector.checkpoint={renamed}", "--check"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.out.splitlines()
    assert line.startswith(f"FAILED detector {renamed}: ")
    assert "missing keys (1): bbox_head.rtm_cls.0.weight;" in line
    assert "unexpected keys (1): bbox_head.rtm_cls.0.weights." in line
    assert "Traceback" not in captured.err


def test_a_renamed_key_stops_run_before_ray(detector_files: dict[str, Path], tmp_path: Path, capsys: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from bmp_core.testing.images import write_synthetic_images

    def no_ray(*args: object) -> None:
        raise AssertionError("Ray was started: the checkpoint was not checked before the workers")

    monkeypatch.setattr("jobs.ray_runner._init_ray", no_ray)
    write_synthetic_images(tmp_path / "in")
    renamed = detector_files["renamed"]
    rc = main(["run", "--config", TINY, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
               f"models.detector.checkpoint={renamed}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    first = next(line for line in err.splitlines() if line.startswith("bmp-label run: "))
    assert str(renamed) in first and "bbox_head.rtm_cls.0.weights" in first
    assert "  hint: " in err
    assert not (tmp_path / "out" / "plan.json").exists()
