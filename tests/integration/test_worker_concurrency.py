"""BmpWorker's shards on threads, as the Ray actor runs them: one shard at a time on the models.

Moved from tests/unit/test_worker.py: the guard sleeps inside the models to widen the race window
(the unit tier forbids ``time.sleep``). No Ray.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from bmp_core.config import config_from_dict
from bmp_core.loop import run_bmp
from bmp_core.output.reader import read_committed_table
from bmp_core.output.store import OutputStore
from bmp_core.testing import build_fake_models
from jobs.worker import BmpWorker, ShardTask

pytestmark = pytest.mark.integration


class _ExclusiveDetector:
    """Wraps a detector; records whether two threads were ever inside the models at once."""

    def __init__(self, inner: object) -> None:
        import threading

        self.inner, self.active, self.max_active = inner, 0, 0
        self._lock = threading.Lock()

    def detect(self, images_bgr: list[np.ndarray]) -> object:
        import time

        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(0.01)  # widen the window in which an unserialised second shard would enter
            return self.inner.detect(images_bgr)
        finally:
            with self._lock:
                self.active -= 1


def test_concurrent_shards_share_the_models_one_at_a_time_and_match_run_bmp(testdata: Path,
                                                                            tmp_path: Path) -> None:
    """The Ray actor runs job.queue_depth process_shard calls on threads: shards must not interleave
    on the models, and each image's instances (encoded on the encode thread, several batches per
    shard) must equal run_bmp on that image alone."""
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from bmp_core.output.tables import keypoints_array

    paths = sorted((testdata / "ochuman").glob("*.jpg")) + sorted((testdata / "coco").glob("*.jpg"))
    cfg = config_from_dict({"models": {"kind": "fake", "device": "cpu"}}, ["job.batch_size=2"])
    worker = BmpWorker(cfg)
    guard = _ExclusiveDetector(worker.models.detector)
    worker.models = replace(worker.models, detector=guard)
    out = tmp_path / "out"
    tasks = [ShardTask(str(out), "plan1", s, 4 * s, tuple(str(p) for p in paths[4 * s: 4 * s + 4]))
             for s in (0, 1)]
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(worker.process_shard, tasks))
    assert guard.max_active == 1
    assert [r.num_errors for r in reports] == [0, 0]
    instances = read_committed_table(OutputStore(str(out)), "plan1", "instances")
    fresh = build_fake_models(cfg.models.fake)
    for image_id, path in enumerate(paths):
        with Image.open(path) as im:
            bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])
        expected = run_bmp(bgr, fresh, cfg.loop).instances
        mine = instances.filter(pc.equal(instances.column("image_id"), image_id))
        assert mine.num_rows == len(expected) > 0, path.name
        np.testing.assert_array_equal(keypoints_array(mine), expected.keypoints)
