"""BmpWorker without Ray: every image becomes exactly one row; bad ones carry their reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from bmp_core.config import config_from_dict
from bmp_core.loop import run_bmp
from bmp_core.output.commits import committed_markers
from bmp_core.output.reader import read_committed_table
from bmp_core.output.store import OutputStore
from bmp_core.output.tables import keypoints_array
from bmp_core.testing import build_fake_models
from bmp_core.testing.images import SYNTHETIC_IMAGES, synthetic_image_bytes
from jobs.worker import BmpWorker, ShardTask


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    good = synthetic_image_bytes(SYNTHETIC_IMAGES[0])  # a JPEG: runs without ../shared/testdata
    files = {
        "good.jpg": good,
        "empty.jpg": b"",
        "text.jpg": b"not an image at all",
        "truncated.jpg": good[: len(good) // 3],
        "tiny.png": _png(np.zeros((1, 1, 3), np.uint8)),
        "huge.png": _png(np.zeros((600, 600, 3), np.uint8)),  # over the limit set below
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    uris = sorted(str(tmp_path / n) for n in files) + [str(tmp_path / "zz_missing.jpg")]
    reasons = {"empty.jpg": "empty file", "text.jpg": "not an image", "truncated.jpg": "truncated",
               "tiny.png": "too small", "huge.png": "too many pixels", "zz_missing.jpg": "missing file"}
    return uris, reasons


def test_one_row_per_image_with_reasons(inputs: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    uris, reasons = inputs
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}},
                           ["job.max_image_pixels=300000", "job.batch_size=2", "job.decode_threads=2"])
    worker = BmpWorker(cfg)
    rows, instances = worker.label(list(range(100, 100 + len(uris))), uris)
    assert [r.image_id for r in rows] == list(range(100, 100 + len(uris)))
    by_name = {Path(r.uri).name: r for r in rows}
    for name, reason in reasons.items():
        assert reason in (by_name[name].error or ""), (name, by_name[name].error)
    good = by_name["good.jpg"]
    assert good.error is None and good.num_instances > 0
    # The worker's instances are what run_bmp gives on the decoded image, independently run here.
    with Image.open(tmp_path / "good.jpg") as im:
        bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])
    expected = run_bmp(bgr, build_fake_models(cfg.models.fake), cfg.loop).instances
    assert instances.num_rows == len(expected) == good.num_instances
    np.testing.assert_array_equal(keypoints_array(instances), expected.keypoints)
    assert set(instances.column("image_id").to_pylist()) == {good.image_id}


def test_process_shard_commits(inputs: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    uris, _ = inputs
    out = tmp_path / "out"
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}})
    report = BmpWorker(cfg).process_shard(ShardTask(str(out), "plan1", 3, 30, tuple(uris)))
    assert report.num_images == len(uris) and report.num_errors == 5  # all but good.jpg and huge.png
    store = OutputStore(str(out))
    assert set(committed_markers(store, "plan1")) == {3}
    images = read_committed_table(store, "plan1", "images")
    assert images.column("image_id").to_pylist() == list(range(30, 30 + len(uris)))
    assert pc.sum(images.column("num_instances")).as_py() == report.num_instances


def test_traces_are_written_when_asked(inputs: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    from bmp_core.output.traces import load_traces

    uris, _ = inputs
    out = tmp_path / "out"
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}}, ["job.trace=true"])
    BmpWorker(cfg).process_shard(ShardTask(str(out), "plan1", 0, 0, tuple(uris)))
    good_id = uris.index(next(u for u in uris if u.endswith("good.jpg")))
    huge_id = uris.index(next(u for u in uris if u.endswith("huge.png")))  # valid under the default limit
    assert sorted(p.name for p in (out / "traces").iterdir()) == sorted([str(good_id), str(huge_id)])  # ok only
    with Image.open(uris[good_id]) as im:
        bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])
    traces = load_traces(OutputStore(str(out)), good_id, bgr)
    assert traces is not None and [t.iteration for t in traces] == list(range(cfg.loop.iterations))


ODD_WIDTH = 333  # no test image is this wide: the fault-injecting fakes fail on it alone


@pytest.fixture()
def three_images(tmp_path: Path) -> list[str]:
    return three_images_in(tmp_path)


def three_images_in(tmp_path: Path) -> list[str]:
    """a.jpg (480 px wide), b.png (ODD_WIDTH wide, cut from a), c.jpg (300): one batch of 3, synthetic
    people (runs without ../shared/testdata)."""
    from bmp_core.testing.images import encode_image, synthetic_people_bgr

    wide = synthetic_people_bgr(240, 480, num_people=3, seed=5)
    files = {"a.jpg": wide, "b.png": np.ascontiguousarray(wide[:, :ODD_WIDTH]),
             "c.jpg": synthetic_people_bgr(200, 300, num_people=2, seed=6)}
    for name, image_bgr in files.items():
        (tmp_path / name).write_bytes(encode_image(image_bgr, name))
    return [str(tmp_path / name) for name in files]


def test_a_model_error_fails_the_shard_instead_of_becoming_error_rows(three_images: list[str],
                                                                       tmp_path: Path) -> None:
    """A ValueError from a model (an adapter bug) is not the image's fault: no error rows, no commit."""
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}},
                           ["job.batch_size=3", f"models.fake.fail_width={ODD_WIDTH}",
                            "models.fake.fail_with=bug"])
    worker = BmpWorker(cfg)
    with pytest.raises(ValueError, match="simulated model bug"):
        worker.label([0, 1, 2], three_images)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="simulated model bug"):
        worker.process_shard(ShardTask(str(out), "plan1", 0, 0, tuple(three_images)))
    assert not committed_markers(OutputStore(str(out)), "plan1")


class _FailsOnCall:
    """Wraps a model: its ``method`` raises ``error`` on the ``call``-th call (1-based), else delegates."""

    def __init__(self, inner: object, method: str, call: int, error: Exception) -> None:
        self.inner, self.method, self.call, self.error, self.calls = inner, method, call, error, 0

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if name != self.method:
            return attr

        def wrapped(*args: object, **kwargs: object) -> object:
            self.calls += 1
            if self.calls == self.call:
                raise self.error
            return attr(*args, **kwargs)

        return wrapped


@pytest.mark.parametrize("model, method, call, error", [
    ("pose", "estimate", 2, IndexError("index 17 is out of bounds")),  # in pass 2, after pass 1 ran
    ("segmenter", "segment", 1, FloatingPointError("invalid value encountered")),
    ("detector", "detect", 2, ValueError("operands could not be broadcast")),
])
def test_an_adapter_error_mid_batch_fails_the_shard(three_images: list[str], model: str, method: str,
                                                    call: int, error: Exception) -> None:
    """The three exception types the worker used to take for bad data, raised midway by a model."""
    from dataclasses import replace

    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}}, ["job.batch_size=3"])
    worker = BmpWorker(cfg)
    wrapped = _FailsOnCall(getattr(worker.models, model), method, call, error)
    worker.models = replace(worker.models, **{model: wrapped})
    with pytest.raises(type(error), match=str(error)):
        worker.label([0, 1, 2], three_images)
    assert wrapped.calls == call  # it failed where it was told to, and nothing retried it image by image


class _RaisesOn:
    """Wraps a detector: raises ``make_error()`` on any call whose batch holds an ODD_WIDTH image."""

    def __init__(self, inner: object, make_error: object) -> None:
        self.inner, self.make_error, self.batches = inner, make_error, []

    def detect(self, images_bgr: list[np.ndarray]) -> object:
        self.batches.append([im.shape[1] for im in images_bgr])
        if any(im.shape[1] == ODD_WIDTH for im in images_bgr):
            raise self.make_error()
        return self.inner.detect(images_bgr)


def test_out_of_memory_on_one_image_is_its_error_row_and_the_shard_goes_on(
        three_images: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fakes' stand-in for torch's OutOfMemoryError (tests/models/test_device.py raises
    torch's own class through the same check)."""
    check_out_of_memory_is_one_error_row(three_images, tmp_path, monkeypatch, None)


def check_out_of_memory_is_one_error_row(three_images: list[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, make_error: object) -> None:
    """The ODD_WIDTH image runs out of memory (``make_error()`` raised by a wrapped detector, or the
    fake detector's own stand-in when None): it alone is an error row, the others are labeled."""
    from dataclasses import replace

    import jobs.worker

    freed = []
    monkeypatch.setattr(jobs.worker, "_free_accelerator_memory", lambda: freed.append(1))
    overrides = ["job.batch_size=3"]
    if make_error is None:
        overrides += [f"models.fake.fail_width={ODD_WIDTH}", "models.fake.fail_with=oom"]
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}}, overrides)
    worker = BmpWorker(cfg)
    if make_error is not None:
        worker.models = replace(worker.models, detector=_RaisesOn(worker.models.detector, make_error))
    out = tmp_path / "out"
    report = worker.process_shard(ShardTask(str(out), "plan1", 0, 0, tuple(three_images)))
    assert report.num_images == 3 and report.num_errors == 1
    images = read_committed_table(OutputStore(str(out)), "plan1", "images")
    errors = images.column("error").to_pylist()
    assert errors[0] is None and errors[2] is None
    assert "out of GPU memory on this image alone" in errors[1] and "OutOfMemoryError" in errors[1]
    assert len(freed) >= 2  # after the batch failed, and after the image failed alone
    if make_error is not None:  # the whole batch failed, then each image ran alone
        batches = worker.models.detector.batches
        assert batches[0] == [480, ODD_WIDTH, 300] and [ODD_WIDTH] in batches and [300] in batches
    # The other two images are labeled exactly as run_bmp labels them alone.
    instances = read_committed_table(OutputStore(str(out)), "plan1", "instances")
    assert set(instances.column("image_id").to_pylist()) == {0, 2}
    fresh = build_fake_models()
    for image_id in (0, 2):
        with Image.open(three_images[image_id]) as im:
            bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])
        expected = run_bmp(bgr, fresh, cfg.loop).instances
        mine = instances.filter(pc.equal(instances.column("image_id"), image_id))
        assert mine.num_rows == len(expected) > 0
        np.testing.assert_array_equal(keypoints_array(mine), expected.keypoints)


def test_an_out_of_memory_error_is_recognised_without_torch() -> None:
    from bmp_core.testing.fakes import OutOfMemoryError
    from jobs.worker import _is_image_failure

    assert _is_image_failure(OutOfMemoryError("x"))
    assert _is_image_failure(RuntimeError("CUDA out of memory. Tried to allocate 2.00 MiB"))
    for err in (ValueError("bad"), IndexError(0), FloatingPointError(),
                RuntimeError("CUDA error: an illegal memory access was encountered"), MemoryError()):
        assert not _is_image_failure(err), err
