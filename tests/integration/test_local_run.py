"""End to end on the shared test images with fake models: outputs, COCO, resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from bmp_core.ops.rle import decode_rle
from bmp_core.output.store import OutputStateError
from bmp_core.output.tables import rles_of
from jobs.cli import main
from jobs.ray_runner import RunOptions, run_job

from ._helpers import (
    assert_one_row_per_image,
    fake_config,
    keypoints_by_uri,
    read_output,
    reference_keypoints,
)

pytestmark = pytest.mark.integration


def test_local_run_resume_and_refusals(ray_cluster: object, testdata: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    cfg = fake_config("job.shard_size=3")
    opts = RunOptions(str(testdata), out, num_workers=2, progress=False, lock_settle_s=0.05)
    run = run_job(cfg, opts)

    images, instances = read_output(out)
    expected_uris = sorted(str(p) for p in testdata.rglob("*.jpg"))
    assert images.sort_by("image_id").column("uri").to_pylist() == expected_uris
    assert_one_row_per_image(images, len(expected_uris))
    assert set(images.column("status").to_pylist()) == {"ok"}
    shards = -(-len(expected_uris) // 3)  # job.shard_size=3 (the shared set: 4 shards; examples/: 2)
    # The job's labels are the loop's labels, run here without Ray.
    got = keypoints_by_uri(images, instances)
    for uri in expected_uris:
        np.testing.assert_array_equal(got[uri], reference_keypoints(Path(uri), cfg))
    assert run.counts.shards == shards and run.counts.shards_labeled == shards
    assert run.counts.instances == instances.num_rows > 0
    assert run.plan.listing_digest and run.versions["ray"]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["counts"] == run.to_dict()["counts"]

    # coco.json: pycocotools loads it and it round-trips the instances table.
    coco = COCO(str(tmp_path / "out" / "coco.json"))
    assert len(coco.getImgIds()) == len(expected_uris) and len(coco.getAnnIds()) == instances.num_rows
    ordered = instances.sort_by([("image_id", "ascending"), ("instance_id", "ascending")])
    rles = rles_of(ordered)
    for k, ann in enumerate(coco.loadAnns(sorted(coco.getAnnIds()))):
        assert ann["image_id"] == ordered.column("image_id")[k].as_py()
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), decode_rle([rles[k]])[0])

    # A rerun skips everything and changes nothing.
    before = (tmp_path / "out" / "coco.json").read_bytes()
    rerun = run_job(cfg, opts)
    assert rerun.counts.shards_skipped == shards and rerun.counts.shards_labeled == 0
    assert (tmp_path / "out" / "coco.json").read_bytes() == before
    # A speed knob is not a config change.
    run_job(fake_config("job.shard_size=3", "job.queue_depth=1"), opts)

    # plan (read-only) reports the resume state.
    assert main(["plan", "--config", str(Path(__file__).parents[2] / "configs/fake.yaml"), "--input", str(testdata),
                 "--output", out, "--shard-size", "3"]) == 0
    assert (f"{shards} shard(s) committed ({len(expected_uris)} images) and skipped on rerun, 0 to do"
            in capsys.readouterr().out)

    # A changed config is refused, naming the key; --force starts over.
    with pytest.raises(OutputStateError, match="loop.iterations: 2 -> 1"):
        run_job(fake_config("job.shard_size=3", "loop.iterations=1"), opts)
    forced = run_job(fake_config("job.shard_size=3", "loop.iterations=1"),
                     RunOptions(str(testdata), out, num_workers=1, force=True, progress=False, lock_settle_s=0.05))
    assert forced.counts.shards_labeled == shards
    assert_one_row_per_image(read_output(out)[0], len(expected_uris))

    # export-coco rebuilds the same file from the Parquet parts.
    (tmp_path / "out" / "coco.json").unlink()
    assert main(["export-coco", out]) == 0
    assert len(COCO(str(tmp_path / "out" / "coco.json")).getImgIds()) == len(expected_uris)


def test_more_cpu_workers_than_cores_start_and_finish(ray_cluster: object, testdata: Path, tmp_path: Path) -> None:
    """4 CPU workers on the 2-CPU test cluster: each gets half a core, so all of them start."""
    out = str(tmp_path / "out")
    run = run_job(fake_config("job.shard_size=1"),
                  RunOptions(str(testdata), out, num_workers=4, progress=False, lock_settle_s=0.05))
    expected = sorted(str(p) for p in testdata.rglob("*.jpg"))
    assert len(run.workers) == 4 and len({w.pid for w in run.workers}) == 4
    assert run.counts.shards_labeled == len(expected)
    assert_one_row_per_image(read_output(out)[0], len(expected))
    timings = run.timings_s
    assert timings.workers_start > 0 and timings.labeling > 0
    assert run.throughput_images_per_s >= run.throughput_images_per_s_wall > 0
