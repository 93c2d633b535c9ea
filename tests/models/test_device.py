"""Device selection and the precision context."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.models
torch = pytest.importorskip("torch")

from bmp_core.models.device import apply_speed_options, autocast, resolve_device


def test_auto_picks_cuda_only_when_present() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_autocast_is_a_no_op_on_cpu_and_for_fp32() -> None:
    x = torch.ones(2, 2)
    for precision in ("fp32", "bf16", "fp16"):
        with autocast(torch.device("cpu"), precision):
            assert (x @ x).dtype == torch.float32  # CPU always computes in fp32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_autocast_on_cuda_uses_the_requested_dtype() -> None:
    x = torch.ones(2, 2, device="cuda")
    with autocast(torch.device("cuda"), "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(torch.device("cuda"), "fp32"):
        assert (x @ x).dtype == torch.float32


def test_compile_and_tf32_are_no_ops_on_cpu() -> None:
    class Untouchable:  # any attribute access would mean the option was applied
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"touched .{name} on CPU")

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    assert apply_speed_options(torch.device("cpu"), True, True, Untouchable(), Untouchable()) == []
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


# --- A GPU node runs on its GPU or says why (CPU tests: torch's CUDA state is monkeypatched) ---

TOO_OLD = "The NVIDIA driver on your system is too old (found version 12040)."


@pytest.fixture()
def no_usable_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch built for CUDA, on a node whose driver it cannot use (torch.cuda.init raises the reason)."""
    def init() -> None:
        raise RuntimeError(TOO_OLD)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(torch.version, "cuda", "13.0")


@pytest.fixture()
def one_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Ray GPU actor sees: exactly one device, cuda:0."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index=None: SimpleNamespace(total_memory=141 * 2**30))
    monkeypatch.setattr(torch.version, "cuda", "13.0")


def test_auto_on_a_gpu_worker_without_usable_cuda_fails_with_torchs_reason(no_usable_cuda: None) -> None:
    from bmp_core.models.device import DeviceError

    with pytest.raises(DeviceError, match="given a GPU") as info:
        resolve_device("auto", gpu_assigned=True)
    assert TOO_OLD in str(info.value) and "models.device: cpu" in str(info.value)
    assert resolve_device("auto") == torch.device("cpu")  # no GPU given: CPU is what auto means
    with pytest.raises(DeviceError, match="too old"):
        resolve_device("cuda")


def test_a_cpu_only_torch_build_is_named_as_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from bmp_core.models.device import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(DeviceError, match="build without CUDA"):
        resolve_device("auto", gpu_assigned=True)


def test_cuda_index_is_validated_against_the_visible_devices(one_visible_gpu: None) -> None:
    from bmp_core.models.device import DeviceError

    assert resolve_device("auto", gpu_assigned=True) == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceError, match=r"sees 1 CUDA device\(s\) \(cuda:0 to cuda:0\).*under Ray"):
        resolve_device("cuda:1")
    with pytest.raises(DeviceError, match="not a device torch knows"):
        resolve_device("cuda:x")


def test_device_info_names_the_gpu_cuda_driver_and_threads(one_visible_gpu: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import bmp_core.models.device as device_mod

    monkeypatch.setattr(device_mod, "nvidia_driver_version", lambda: "580.65.06")
    info = device_mod.describe_device(resolve_device("auto", gpu_assigned=True))
    assert (info.device, info.gpu_name, info.driver_version, info.torch_cuda) == \
        ("cuda:0", "NVIDIA H200", "580.65.06", "13.0")
    assert info.torch_threads == torch.get_num_threads()
    summary = info.summary()
    for part in ("device cuda:0 (NVIDIA H200, 141.0 GiB)", "CUDA 13.0", "driver 580.65.06",
                 f"{torch.get_num_threads()} torch threads"):
        assert part in summary, summary


@pytest.mark.parametrize("line, version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024",
     "535.183.01"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs@U16)",
     "580.65.06"),
])
def test_driver_version_from_proc_without_nvml(monkeypatch: pytest.MonkeyPatch, line: str,
                                               version: str) -> None:
    import io
    import sys

    import bmp_core.models.device as device_mod

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails: the /proc path is used
    monkeypatch.setattr(device_mod, "open", lambda path: io.StringIO(line + "\n"), raising=False)
    assert device_mod.nvidia_driver_version() == version


def test_a_gpu_worker_fails_at_start_before_building_anything(no_usable_cuda: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """jobs/: the Ray actor given a GPU (and BmpWorker for it) stops at start with torch's reason."""
    import bmp_core.models
    from bmp_core.config import config_from_dict
    from bmp_core.models.device import DeviceError
    from jobs.actor_pool import RayWorker
    from jobs.worker import BmpWorker

    def must_not_build(cfg: object) -> None:
        raise AssertionError("the models were built on a GPU worker without CUDA")

    monkeypatch.setattr(bmp_core.models, "build_models", must_not_build)
    cfg = config_from_dict({"models": {"kind": "bmp", "device": "auto"}})
    with pytest.raises(DeviceError, match="too old"):
        BmpWorker(cfg, gpu_assigned=True)
    # The Ray actor keeps the error for info() to raise (the driver's first call): a constructor that raised
    # would have Ray print its traceback on the driver (docs/clusters.md#when-something-is-wrong-one-line-and-a-hint).
    actor = RayWorker(cfg, None, None, True)
    with pytest.raises(DeviceError, match="too old"):
        actor.info()


def test_worker_start_line_reports_the_resolved_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import bmp_core.models
    from bmp_core.config import config_from_dict
    from bmp_core.testing import build_fake_models
    from jobs.worker import BmpWorker

    monkeypatch.setattr(bmp_core.models, "build_models", lambda cfg: build_fake_models())
    info = BmpWorker(config_from_dict({"models": {"kind": "bmp", "device": "cpu"}})).info()
    assert info.device == "cpu" and info.device_info.torch_threads == torch.get_num_threads()
    assert info.device_info.summary().startswith("device cpu, torch ") and "torch threads" in info.summary


def test_torch_cuda_out_of_memory_on_one_image_is_its_error_row(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """jobs/worker.py recognises torch's own OutOfMemoryError class (no torch import in the worker)."""
    from tests.unit.test_worker import check_out_of_memory_is_one_error_row, three_images_in

    def oom() -> Exception:
        return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 38.00 GiB")

    check_out_of_memory_is_one_error_row(three_images_in(tmp_path), tmp_path, monkeypatch, oom)
