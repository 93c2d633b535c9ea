"""The safe checkpoint loader and the strict layout check, on small files written by ``torch.save`` (seconds).

What a checkpoint may construct while it is read (the allow-list), whether a wrong-shaped checkpoint is
refused and how, and the failures users meet (a GPU-saved file on a CPU worker, a torch environment that
turns full unpickling on). Written for mutation testing (docs/development.md "Mutation testing"): each test
fails on a planted bug in ``bmp_core/models/checkpoints.py``; every check goes through the public
functions and ``torch``'s own reader/writer.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import warnings
import zipfile
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
from jobs.cli import main  # noqa: E402
from tests.models.pickle_payloads import Opaque, RunsACommand  # noqa: E402


def _as_if_saved_on_cuda(src: Path, dst: Path) -> Path:
    """``src`` with every storage tagged ``cuda`` instead of ``cpu``: what ``torch.save`` writes for GPU
    tensors (the tag is the pickled storage location, a protocol-2 unicode string in ``data.pkl``)."""
    with zipfile.ZipFile(src) as archive:
        entries = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            if name.endswith("/data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x04\x00\x00\x00cuda")
            archive.writestr(name, data)
    return dst


# --------------------------------------------------------------------------------------------
# What a file may construct


def test_a_gpu_saved_checkpoint_loads_onto_the_cpu(tmp_path: Path) -> None:
    sd = {"w": torch.arange(4.0)}
    torch.save({"state_dict": sd}, tmp_path / "a.pth")
    cuda_file = _as_if_saved_on_cuda(tmp_path / "a.pth", tmp_path / "cuda.pth")
    if not torch.cuda.is_available():  # the file really asks for a GPU: torch's plain load fails here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(cuda_file, weights_only=True)
    got = load_state_dict(cuda_file)
    assert got["w"].device.type == "cpu" and torch.equal(got["w"], sd["w"])
    # The opt-in full unpickle lands on the CPU too.
    torch.save({"meta": {"x": Opaque()}, "state_dict": sd}, tmp_path / "b.pth")
    got = load_state_dict(_as_if_saved_on_cuda(tmp_path / "b.pth", tmp_path / "cuda_b.pth"), allow_pickle=True)
    assert got["w"].device.type == "cpu" and torch.equal(got["w"], sd["w"])


def test_the_safe_loader_stays_safe_when_the_environment_turns_full_unpickling_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch reads this variable on every load that does not pass weights_only itself.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    file = tmp_path / "evil.pth"
    torch.save({"meta": {"hook": RunsACommand(os.system, f"touch {marker}")}, "state_dict": {}}, file)
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        load_state_dict(file)
    assert not marker.exists()


def test_mmengine_checkpoints_as_released_load_safely_and_quietly(tmp_path: Path) -> None:
    """numpy 1.x's names (``numpy.core.multiarray``), numpy scalars and arrays, mmengine's HistoryBuffer and
    its statistics methods through ``getattr``: all on the allow-list, read without a full unpickle and
    without numpy's deprecation warning for the old module name."""
    pytest.importorskip("mmengine")
    from tests.models import published_format as pf

    sd = {"backbone.w": torch.arange(6.0).reshape(2, 3), "head.b": torch.ones(2)}
    file = pf.save_mmengine(tmp_path / "mm.pth", pf.mmengine_checkpoint(sd, num_keypoints=17))
    needs = set(torch.serialization.get_unsafe_globals_in_checkpoint(file))
    assert {"numpy.core.multiarray._reconstruct", "builtins.getattr"} <= needs  # the file is what we mean
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        got = load_state_dict(file)  # allow_pickle=False
    assert sorted(got) == sorted(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.mark.parametrize("code", list("?bBhHiIlLqQefdgFDG") + ["S5", "U5"])
def test_numpy_arrays_and_scalars_of_plain_dtypes_are_allowed(tmp_path: Path, code: str) -> None:
    array = np.zeros(3, dtype=code)
    meta = {"a": array} if code[0] in "SU" else {"a": array, "s": array[0]}  # S/U items are bytes/str
    torch.save({"meta": meta, "state_dict": {"w": torch.ones(1)}}, tmp_path / "f.pth")
    assert sorted(load_state_dict(tmp_path / "f.pth")) == ["w"]


@pytest.mark.parametrize("dtype", [object, [("x", "i4"), ("y", "f4")]], ids=["object", "structured"])
def test_numpy_object_and_structured_arrays_are_refused(tmp_path: Path, dtype: Any) -> None:
    torch.save({"meta": {"a": np.zeros(2, dtype=dtype)}, "state_dict": {"w": torch.ones(1)}}, tmp_path / "f.pth")
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        load_state_dict(tmp_path / "f.pth")


@pytest.mark.parametrize("name", ["mean", "min", "max", "current", "__init__", "__class__"])
def test_getattr_is_allowed_only_for_the_history_buffer_statistics(tmp_path: Path, name: str, caplog: Any) -> None:
    pytest.importorskip("mmengine")
    from mmengine.logging.history_buffer import HistoryBuffer

    gadget: Any = type("G", (), {"__reduce__": lambda self: (getattr, (HistoryBuffer, name))})()
    torch.save({"meta": {"m": gadget}, "state_dict": {"w": torch.ones(1)}}, tmp_path / "f.pth")
    if name in ("mean", "min", "max", "current"):
        assert sorted(load_state_dict(tmp_path / "f.pth")) == ["w"]
        return
    with pytest.raises(CheckpointError) as err:
        load_state_dict(tmp_path / "f.pth")
    # The refusal says which call, whole, on one line ...
    message = str(err.value)
    call = rf"getattr\(<class '[\w.]*HistoryBuffer'>, '{name}'\) is not on the allow-list"
    assert re.search(rf"the file asks for {call}, which unpickling", message), message
    assert "\n" not in message
    # ... and so does the warning of an opted-in full unpickle.
    with caplog.at_level("WARNING", logger="bmp_core.models.checkpoints"):
        assert sorted(load_state_dict(tmp_path / "f.pth", allow_pickle=True)) == ["w"]
    assert any(re.search(rf"\(it asks for {call}\); unpickling it FULLY", r.getMessage()) for r in caplog.records)


def test_getattr_on_another_class_is_refused(tmp_path: Path) -> None:
    gadget: Any = type("G", (), {"__reduce__": lambda self: (getattr, (np.ndarray, "mean"))})()
    torch.save({"meta": {"m": gadget}, "state_dict": {"w": torch.ones(1)}}, tmp_path / "f.pth")
    with pytest.raises(CheckpointError, match=r"getattr\(<class 'numpy.ndarray'>, 'mean'\) is not on the allow"):
        load_state_dict(tmp_path / "f.pth")


def test_the_refusal_names_the_globals_and_its_conversion_command_works(tmp_path: Path) -> None:
    sd = {"w": torch.arange(3.0)}
    file = tmp_path / "custom.pth"
    # RunsACommand pickles as the call it makes: len("hi"). (Not print: once Ray's tqdm has run in the
    # process, builtins.print is Ray's safe_print and pickles under that name.)
    torch.save({"meta": {"x": Opaque(), "y": RunsACommand(len, "hi")}, "state_dict": sd}, file)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(file)
    message = str(err.value)
    asked = f"the file asks for builtins.len, {Opaque.__module__}.Opaque, which unpickling would import or call"
    assert asked in message, message
    assert "If you trust where the file comes from, set models.allow_pickle_checkpoints: true (full " in message
    # The command the message gives, run where the file is trusted, makes a file the safe loader reads.
    command = re.search(r"torch\.save\(torch\.load\(path, weights_only=False\)\['state_dict'\], new_path\)\.$",
                        message)
    assert command is not None
    path, new_path = file, tmp_path / "converted.pth"  # noqa: F841 - the names the command uses
    eval(command.group(0).rstrip("."), {"torch": torch, "path": path, "new_path": new_path})
    assert torch.equal(load_state_dict(new_path)["w"], sd["w"])


def test_a_legacy_format_file_is_refused_naming_the_global(tmp_path: Path) -> None:
    """torch's pre-1.6 (non-zip) format: torch cannot list its globals, its own refusal names the one met."""
    file = tmp_path / "legacy.pth"
    torch.save({"meta": {"x": Opaque()}, "state_dict": {"w": torch.ones(1)}}, file,
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(file)
    asked = rf"the file asks for Unsupported global: GLOBAL {Opaque.__module__}.Opaque was not an allowed global"
    assert re.search(asked, str(err.value)), str(err.value)
    torch.save({"state_dict": {"w": torch.ones(1)}}, file, _use_new_zipfile_serialization=False)
    assert sorted(load_state_dict(file)) == ["w"]


def test_the_full_unpickle_warning_names_what_the_file_asks_for(tmp_path: Path, caplog: Any) -> None:
    torch.save({"meta": {"x": Opaque()}, "state_dict": {"w": torch.ones(1)}}, tmp_path / "f.pth")
    with caplog.at_level("WARNING", logger="bmp_core.models.checkpoints"):
        load_state_dict(tmp_path / "f.pth", allow_pickle=True)
    (record,) = [r for r in caplog.records if "FULLY" in r.getMessage()]
    assert record.getMessage() == (
        f"{tmp_path / 'f.pth'}: the safe loader refused it (it asks for {Opaque.__module__}.Opaque); unpickling it "
        "FULLY because models.allow_pickle_checkpoints is true: this runs any code the file contains"
    )


# --------------------------------------------------------------------------------------------
# Mapped reads (the driver's layout check: load_state_dict(mmap=True))


def _mapped_from(tensor: Any) -> str:
    """The path the kernel names for the memory region holding ``tensor``'s bytes (/proc/self/maps): the
    checkpoint file when torch mapped it, ``[heap]`` or empty when the bytes were read into memory."""
    address = tensor.untyped_storage().data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                return fields[5] if len(fields) > 5 else ""
    return ""


def _legacy(path: Path, obj: Any) -> Path:
    """``obj`` in torch's pre-1.6 (non-zip) format, which torch cannot map."""
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads the process's memory map (Linux)")
def test_a_mapped_read_maps_the_file_and_a_plain_read_does_not(tmp_path: Path) -> None:
    sd = {"w": torch.arange(4096.0)}
    torch.save({"state_dict": sd}, tmp_path / "a.pth")
    mapped = load_state_dict(tmp_path / "a.pth", mmap=True)["w"]
    assert _mapped_from(mapped) == str(tmp_path / "a.pth") and torch.equal(mapped, sd["w"])
    read = load_state_dict(tmp_path / "a.pth")["w"]  # the builders' read: in memory, the file free to change
    assert _mapped_from(read) != str(tmp_path / "a.pth") and torch.equal(read, sd["w"])


def test_a_mapped_read_of_a_legacy_file_reads_it_whole_onto_the_cpu(tmp_path: Path) -> None:
    sd = {"w": torch.arange(4.0), "b": torch.ones(2, 3)}
    file = _legacy(tmp_path / "legacy.pth", {"state_dict": sd})
    with pytest.raises(RuntimeError, match="mmap"):  # torch's own refusal to map this format
        torch.load(file, weights_only=True, mmap=True)
    got = load_state_dict(file, mmap=True)
    assert sorted(got) == ["b", "w"] and all(torch.equal(got[k], sd[k]) for k in sd)
    # Saved from a GPU (the storages' location tag in the pickle says cuda): still lands on the CPU.
    cuda_file = tmp_path / "legacy_cuda.pth"
    data = file.read_bytes()
    assert b"X\x03\x00\x00\x00cpu" in data
    cuda_file.write_bytes(data.replace(b"X\x03\x00\x00\x00cpu", b"X\x04\x00\x00\x00cuda"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(cuda_file, weights_only=True)
    got = load_state_dict(cuda_file, mmap=True)
    assert got["w"].device.type == "cpu" and torch.equal(got["w"], sd["w"])


def test_a_mapped_read_of_a_legacy_file_is_as_safe_as_a_plain_one(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry without mapping is the safe loader too, even when the environment turns full unpickling
    on for every load that does not ask for weights_only itself."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    file = _legacy(tmp_path / "evil.pth", {"meta": {"hook": RunsACommand(os.system, f"touch {marker}")},
                                          "state_dict": {"w": torch.ones(1)}})
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        load_state_dict(file, mmap=True)
    assert not marker.exists()


def test_a_legacy_file_calling_into_a_blocked_module_is_refused_naming_the_call(tmp_path: Path) -> None:
    """torch cannot list a legacy file's globals, and its refusal of a blocked module (os, posix,
    subprocess...) is a paragraph of its own, not a ``WeightsUnpickler error:`` line: that paragraph is
    what the message names (it named torch's preamble before)."""
    marker = tmp_path / "pwned"
    file = _legacy(tmp_path / "evil.pth", {"meta": {"hook": RunsACommand(os.system, f"touch {marker}")},
                                          "state_dict": {"w": torch.ones(1)}})
    asked = r"the file asks for Trying to load unsupported GLOBAL (posix|nt)\.system whose module \w+ is blocked"
    for mmap in (True, False):
        with pytest.raises(CheckpointError) as err:
            load_state_dict(file, mmap=mmap)
        message = str(err.value)
        assert re.search(rf"refused by the safe loader .*{asked}\.?, which unpickling would", message), message
        assert "\n" not in message and "Weights only load failed" not in message
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# What counts as a state dict


def test_an_unreadable_file_is_one_error_naming_it(tmp_path: Path) -> None:
    file = tmp_path / "truncated.pth"
    file.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(file))}: not a readable torch checkpoint: "
                       r"RuntimeError: .*zip"):
        load_state_dict(file)


def test_a_file_without_a_state_dict_names_its_top_level(tmp_path: Path) -> None:
    keys = [f"k{i:02d}" for i in range(14, 0, -1)]
    torch.save({k: 1 for k in keys}, tmp_path / "many.pth")
    with pytest.raises(CheckpointError) as err:
        load_state_dict(tmp_path / "many.pth")
    assert str(err.value).endswith(f"no state dict of tensors found (top level: {sorted(keys)[:12]})")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"no state dict of tensors found \(top level: list\)$"):
        load_state_dict(tmp_path / "list.pth")
    torch.save({"state_dict": {"w": torch.ones(1), "step": 3}}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="no state dict of tensors"):
        load_state_dict(tmp_path / "mixed.pth")


def test_state_dict_is_preferred_to_model_and_only_a_leading_module_prefix_goes(tmp_path: Path) -> None:
    torch.save({"state_dict": {"module.a": torch.ones(1), "b.module.c": torch.zeros(1)}, "model": {"x": torch.ones(1)}},
               tmp_path / "both.pth")
    assert sorted(load_state_dict(tmp_path / "both.pth")) == ["a", "b.module.c"]
    # A 'state_dict' entry that is not a mapping: the sam2-style 'model' is used.
    torch.save({"state_dict": "none", "model": {"x": torch.ones(1)}}, tmp_path / "sam.pth")
    assert sorted(load_state_dict(tmp_path / "sam.pth")) == ["x"]


# --------------------------------------------------------------------------------------------
# Strict layout


class _Rtm(torch.nn.Module):
    """The parameter names of an RTMDet head (``bbox_head.rtm_cls.<level>``), small."""

    def __init__(self, num_classes: int = 80, width: int = 8) -> None:
        super().__init__()
        self.neck = torch.nn.BatchNorm2d(width)
        self.bbox_head = torch.nn.Module()
        self.bbox_head.rtm_cls = torch.nn.ModuleList(torch.nn.Conv2d(width, num_classes, 1) for _ in range(3))
        self.bbox_head.rtm_reg = torch.nn.ModuleList(torch.nn.Conv2d(width, 4, 1) for _ in range(3))


def test_load_strict_copies_every_value_into_the_model() -> None:
    torch.manual_seed(0)
    model, source = _Rtm(), _Rtm()
    load_strict(model, source.state_dict(), "detector")
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_one_class_head_gets_the_num_classes_hint() -> None:
    person_only = _Rtm(num_classes=1).state_dict()
    with pytest.raises(CheckpointError) as err:
        load_strict(_Rtm(), person_only, "detector")
    message = str(err.value)
    assert message.startswith("detector: checkpoint does not match the model architecture; shape mismatches (6): ")
    assert "bbox_head.rtm_cls.0.weight (1, 8, 1, 1) vs model (80, 8, 1, 1), " in message
    assert message.endswith(
        "bbox_head.rtm_cls.2.weight (1, 8, 1, 1) vs model (80, 8, 1, 1). "
        "The checkpoint's detector head has 1 classes: set models.detector.num_classes: 1. "
        "Check that the config names the architecture this checkpoint was trained with."
    )
    # With a level the model lacks besides: still the hint (only keys both sides have are compared).
    with pytest.raises(CheckpointError, match="set models.detector.num_classes: 1"):
        load_strict(_Rtm(), dict(person_only, **{"bbox_head.rtm_cls.3.weight": torch.ones(1, 8, 1, 1)}), "detector")


def test_a_layout_mismatch_hints_at_the_architecture_and_names_a_real_command(capsys: Any) -> None:
    """The file is readable and its digest right: the hint points at the architecture (not the default
    hint about checkpoint paths and digests), and the command it names is one the CLI has."""
    with pytest.raises(CheckpointError) as err:
        load_strict(_Rtm(), _Rtm(num_classes=1).state_dict(), "detector")
    assert err.value.hint != CheckpointError.default_hint
    assert err.value.hint == ("point the models section at the checkpoint of the configured architecture (or the "
                              "architecture of this checkpoint); 'bmp-label weights CONFIG --check' checks every file")
    with pytest.raises(SystemExit):
        main(["weights", "--help"])
    usage = capsys.readouterr().out
    assert re.search(r"usage: bmp-label weights .*\bCONFIG\b", usage, re.S) and "--check" in usage, usage


@pytest.mark.parametrize("case", ["wider_neck", "levels_disagree", "reg_mis_shaped", "no_head"])
def test_no_class_count_hint_when_the_head_is_not_the_difference(case: str) -> None:
    model = _Rtm()
    sd = dict(model.state_dict())
    if case == "no_head":  # another network (no rtm_cls) with a wider norm layer
        model, sd = torch.nn.BatchNorm1d(8), dict(torch.nn.BatchNorm1d(16).state_dict())
    elif case == "wider_neck":  # only the (1-D) normalisation differs
        sd["neck.weight"], sd["neck.bias"] = torch.ones(16), torch.zeros(16)
    elif case == "levels_disagree":
        sd["bbox_head.rtm_cls.0.weight"] = torch.ones(1, 8, 1, 1)
        sd["bbox_head.rtm_cls.1.weight"] = torch.ones(2, 8, 1, 1)
    else:  # a 4-D .weight outside rtm_cls
        sd["bbox_head.rtm_reg.0.weight"] = torch.ones(1, 8, 1, 1)
    with pytest.raises(CheckpointError) as err:
        load_strict(model, sd, "detector")
    message = str(err.value)
    assert "num_classes" not in message and "classes:" not in message
    assert re.search(r"vs model \([0-9, ]+\)\. Check that the config names the architecture", message), message


def test_the_first_twelve_keys_of_each_kind_are_named() -> None:
    model = torch.nn.ModuleList(torch.nn.Linear(1, 1, bias=False) for _ in range(13))
    sd = dict(model.state_dict())
    thirteen = sorted(sd)
    with pytest.raises(CheckpointError) as err:
        load_strict(model, {}, "toy")
    assert f"missing keys (13): {', '.join(thirteen[:12])} (+1 more). " in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_strict(model, {k: v for k, v in sd.items() if k != thirteen[-1]}, "toy")
    assert str(err.value).startswith(f"toy: checkpoint does not match the model architecture; missing keys (1): "
                                     f"{thirteen[-1]}. Check")
    twelve = dict(list(sd.items())[:12])
    with pytest.raises(CheckpointError) as err:
        load_strict(torch.nn.Linear(1, 1), twelve, "toy")
    message = str(err.value)
    assert f"unexpected keys (12): {', '.join(sorted(twelve))}. " in message and "more)" not in message
    assert "missing keys (2): bias, weight; unexpected keys" in message


# --------------------------------------------------------------------------------------------
# Resolving a reference: offline switches, headers, names in the cache


@pytest.mark.parametrize("value", ["1", "true", "YES"])
@pytest.mark.parametrize("variable", ["BMP_OFFLINE", "HF_HUB_OFFLINE"])
def test_either_offline_variable_stops_downloads(http_folder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 variable: str, value: str) -> None:
    base, root, handler = http_folder
    (root / "w.pth").write_bytes(b"w")
    monkeypatch.setenv(variable, value)
    with pytest.raises(CheckpointError, match="offline"):
        resolve_checkpoint(f"{base}/w.pth", tmp_path / "cache")
    assert handler.seen == []
    # An explicit offline=False wins over the environment.
    assert resolve_checkpoint(f"{base}/w.pth", tmp_path / "cache", offline=False).read_bytes() == b"w"


def test_other_values_of_the_offline_variables_download(http_folder: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    base, root, handler = http_folder
    (root / "w.pth").write_bytes(b"w")
    monkeypatch.setenv("BMP_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "no")
    assert resolve_checkpoint(f"{base}/w.pth", tmp_path / "cache").read_bytes() == b"w"
    with pytest.raises(CheckpointError, match="offline"):
        resolve_checkpoint(f"{base}/w.pth", tmp_path / "cache2", offline=True)
    assert len(handler.seen) == 1


def test_the_hub_token_goes_to_the_hub_only(http_folder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, root, handler = http_folder
    (root / "o" / "r" / "resolve" / "main").mkdir(parents=True)
    (root / "o" / "r" / "resolve" / "main" / "w.pth").write_bytes(b"hub")
    (root / "plain.pth").write_bytes(b"plain")
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co")
    # Another host than the Hub's: no token.
    assert resolve_checkpoint(f"{base}/plain.pth", tmp_path / "cache").read_bytes() == b"plain"
    monkeypatch.setenv("HF_ENDPOINT", base + "/")
    assert resolve_checkpoint("hf://o/r/w.pth", tmp_path / "cache").read_bytes() == b"hub"
    (plain_path, plain_headers), (hub_path, hub_headers) = handler.seen
    assert plain_path == "/plain.pth" and "Authorization" not in plain_headers
    assert hub_path == "/o/r/resolve/main/w.pth" and hub_headers["Authorization"] == "Bearer secret-token"
    assert plain_headers["User-Agent"] == hub_headers["User-Agent"] == "bmp-label"
    monkeypatch.delenv("HF_TOKEN")
    assert resolve_checkpoint("hf://o/r/w.pth", tmp_path / "cache2").read_bytes() == b"hub"
    assert "Authorization" not in handler.seen[-1][1]
    # No HF_ENDPOINT: the Hub is huggingface.co, so a token never goes to this server.
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    monkeypatch.delenv("HF_ENDPOINT")
    assert resolve_checkpoint(f"{base}/plain.pth", tmp_path / "cache3").read_bytes() == b"plain"
    assert "Authorization" not in handler.seen[-1][1]


def test_a_slow_server_fails_after_the_timeout(http_folder: Any, tmp_path: Path) -> None:
    base, root, handler = http_folder
    (root / "w.pth").write_bytes(b"w")
    handler.delay_s = 1.0
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=rf"could not download checkpoint {base}/w.pth: \w*Timeout\w*: "):
        resolve_checkpoint(f"{base}/w.pth", tmp_path / "cache", timeout_s=0.2)
    assert time.monotonic() - start < 0.9
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("uri", ["hf://org/repo", "hf://org//w.pth", "hf://org/repo/", "hf:///repo/w.pth"])
def test_malformed_hub_references_are_refused(uri: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"must look like hf://ORG/REPO/path/to/file\[@revision\]"):
        resolve_checkpoint(uri, tmp_path / "cache", offline=False)


def test_hub_urls_keep_folders_revisions_and_quote_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hf_to_https("hf://o/r/a/b c.pt") == "https://huggingface.co/o/r/resolve/main/a/b%20c.pt"
    assert hf_to_https("hf://o/r/a/b.pt@refs/pr/1") == "https://huggingface.co/o/r/resolve/refs/pr/1/a/b.pt"
    assert hf_to_https("hf://o/r/x@y/b.pt@v2") == "https://huggingface.co/o/r/resolve/v2/x%40y/b.pt"
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.local:8080/")
    assert hf_to_https("hf://o/r/b.pt") == "http://mirror.local:8080/o/r/resolve/main/b.pt"


def test_cache_entries_are_named_after_the_file_and_apart_per_uri(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    a = cache_path_for("https://h/x/model%20v1.pth?download=1", "~/cache")
    b = cache_path_for("https://h/y/model%20v1.pth", "~/cache")
    assert a.name == b.name == "model v1.pth" and a.parent != b.parent
    assert a.parent.parent == b.parent.parent == tmp_path / "cache"
    assert len(a.parent.name) == 16 and int(a.parent.name, 16) >= 0
    assert cache_path_for("s3://bucket/dir/", tmp_path).name == "dir"
    assert cache_path_for("https://h/", tmp_path).name == "checkpoint"


def test_unsupported_schemes_and_uppercase_digests(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"ftp://h/w.pth: unsupported checkpoint scheme 'ftp' \(use a path"):
        resolve_checkpoint("ftp://h/w.pth", tmp_path / "cache")
    f = tmp_path / "w.pth"
    f.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert resolve_checkpoint(str(f), tmp_path / "cache", sha256=digest.upper()) == f
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(f))}: sha256 mismatch: expected {'a' * 64}, "
                       rf"got {digest}$"):
        resolve_checkpoint(f"file://{f}", tmp_path / "cache", sha256="A" * 64)
    odd = tmp_path / "w#1;v=2?.pth"  # URL delimiters in a plain path are part of the file name
    odd.write_bytes(b"odd")
    assert resolve_checkpoint(str(odd), tmp_path / "cache") == odd
    # Every remote scheme is accepted (offline: not cached, rather than unsupported).
    for uri in ("https://h/w.pth", "http://h/w.pth", "s3://b/w.pth", "hf://o/r/w.pth"):
        with pytest.raises(CheckpointError, match=r"^offline and checkpoint .* is not cached at .*"
                           r"or point the config at a local path or an s3:// copy the cluster can read\.$"):
            resolve_checkpoint(uri, tmp_path / "cache", offline=True)
    big = tmp_path / "big.pth"
    big.write_bytes(b"x" * ((1 << 20) + 5))  # more than one read chunk
    assert resolve_checkpoint(str(big), tmp_path, sha256=hashlib.sha256(big.read_bytes()).hexdigest()) == big


def test_a_download_is_written_beside_its_target_and_renamed_whole(http_folder: Any, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """While the bytes arrive they are in ``<name>.<random>.part`` in the target's folder, never at the
    target's name (a reader never sees half a file); a wrong digest leaves neither."""
    base, root, handler = http_folder
    payload = os.urandom(300_000)
    (root / "w.pth").write_bytes(payload)
    cache = tmp_path / "cache"
    target = cache_path_for(f"{base}/w.pth", cache)
    seen_while_downloading: list[list[str]] = []
    import urllib.request

    real_urlopen = urllib.request.urlopen

    class _Watch:
        def __init__(self, response: Any) -> None:
            self.response = response

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.response.close()

        def read(self, n: int = -1) -> bytes:
            seen_while_downloading.append(sorted(p.name for p in target.parent.iterdir()))
            return self.response.read(n)

    def watching(*args: Any, **kwargs: Any) -> Any:
        return _Watch(real_urlopen(*args, **kwargs))

    import unittest.mock

    with unittest.mock.patch("urllib.request.urlopen", watching), caplog.at_level("INFO",
                                                                                  logger="bmp_core.models.checkpoints"):
        assert resolve_checkpoint(f"{base}/w.pth", cache).read_bytes() == payload
    assert seen_while_downloading
    for names in seen_while_downloading:
        parts = [n for n in names if n.endswith(".part")]
        assert "w.pth" not in names and len(parts) == 1 and parts[0].startswith("w.pth."), names
    assert sorted(p.name for p in target.parent.iterdir()) == ["w.pth", "w.pth.lock"]
    assert f"downloading checkpoint {base}/w.pth -> {target}" in [r.getMessage() for r in caplog.records]
    with pytest.raises(CheckpointError, match=rf"^{re.escape(base)}/w.pth: sha256 mismatch"):
        resolve_checkpoint(f"{base}/w.pth", tmp_path / "cache2", sha256="0" * 64)


def test_s3_storage_options_reach_the_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint given as ``storage_options`` (not through AWS_ENDPOINT_URL) is the one used."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    for key, value in dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                           AWS_DEFAULT_REGION="us-east-1").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="bmp-options")
        client.put_object(Bucket="bmp-options", Key="k/sam.pt", Body=b"by option")
        path = resolve_checkpoint("s3://bmp-options/k/sam.pt", tmp_path / "cache",
                                  storage_options={"endpoint_url": endpoint})
        assert path.read_bytes() == b"by option"
    finally:
        server.stop()
