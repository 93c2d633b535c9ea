"""Device selection and the precision context."""

from __future__ import annotations

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
