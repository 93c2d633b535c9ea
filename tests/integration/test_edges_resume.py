"""Resume with a gap: shards committed out of order (a crash, a deleted marker) are not a prefix.

The job must label exactly the shards without a marker, whichever they are, and leave the others'
commits untouched. The input is synthetic (``bmp_core.testing.images``), one image per shard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bmp_core.output.commits import committed_markers
from bmp_core.output.plan import load_plan
from bmp_core.output.store import OutputStore
from bmp_core.testing.images import write_synthetic_images
from jobs import ray_runner
from jobs.ray_runner import RunOptions, run_job

from ._helpers import (
    assert_one_row_per_image,
    fake_config,
    keypoints_by_uri,
    read_output,
    reference_keypoints,
)

pytestmark = pytest.mark.integration


def test_resume_labels_exactly_the_missing_shards(ray_cluster: object, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_synthetic_images(tmp_path / "input")
    out = tmp_path / "out"
    cfg = fake_config("job.shard_size=1")
    opts = RunOptions(str(tmp_path / "input"), str(out), num_workers=1, progress=False, lock_settle_s=0.05)
    first = run_job(cfg, opts)
    assert first.counts.shards == len(paths) == 4
    store = OutputStore(str(out))
    plan_id = load_plan(store).plan_id
    before = committed_markers(store, plan_id)
    assert sorted(before) == [0, 1, 2, 3]

    # Record which shards each rerun hands to the workers.
    dispatched: list[list[int]] = []
    real_label_shards = ray_runner._label_shards

    def recording(*args: Any) -> Any:  # (cfg, opts, plan, uris, todo, lock), as run_job calls it
        dispatched.append(list(args[4]))
        return real_label_shards(*args)

    monkeypatch.setattr(ray_runner, "_label_shards", recording)

    for missing in ([0], [0, 2]):
        for shard in missing:
            # What a crash before the marker leaves: parts maybe, no marker (the parts stay as litter).
            (out / "_commits" / f"shard-{shard:06d}.json").unlink()
        kept = committed_markers(store, plan_id)
        assert sorted(kept) == [s for s in range(4) if s not in missing]
        rerun = run_job(cfg, opts)
        assert dispatched[-1] == missing
        assert rerun.counts.shards_labeled == len(missing)
        assert rerun.counts.shards_skipped == 4 - len(missing)
        after = committed_markers(store, plan_id)
        assert sorted(after) == [0, 1, 2, 3]
        for shard, marker in kept.items():
            assert after[shard] == marker, f"committed shard {shard} was relabeled"
        images, instances = read_output(str(out))
        assert_one_row_per_image(images, len(paths))
        got = keypoints_by_uri(images, instances)
        for path in paths:
            np.testing.assert_array_equal(got[str(path)], reference_keypoints(path, cfg))
