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


