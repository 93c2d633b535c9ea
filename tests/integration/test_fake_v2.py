"""The v2 data path end to end: ``configs/fake_v2.yaml`` (fake pose with visibility, k_most_visible prompts,
v2 pruning) through the whole job; the visibility columns and coco.json's v flags are the loop's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from bmp_core.config import load_config
from bmp_core.output.tables import per_keypoint_array
from jobs.cli import main

from ._helpers import REPO, keypoints_by_uri, read_output

pytestmark = pytest.mark.integration
V2_CONFIG = REPO / "configs" / "fake_v2.yaml"


def test_fake_v2_config_runs_the_whole_job(ray_cluster: object, tmp_path: Path) -> None:
    from bmp_core.loop import run_bmp
    from bmp_core.testing import build_fake_models
    from tests.conftest import read_bgr

    source = REPO / "examples" / "images"
    out = tmp_path / "out"
    assert main(["run", "--config", str(V2_CONFIG), "--input", str(source), "--output", str(out), "--no-progress",
                 "--address", ray_cluster.gcs_address]) == 0
    images, instances = read_output(str(out))
    assert set(images.column("status").to_pylist()) == {"ok"} and instances.num_rows > 0
    cfg = load_config(V2_CONFIG)
    instances = instances.sort_by([("image_id", "ascending"), ("instance_id", "ascending")])
    vis, pres = (per_keypoint_array(instances, c) for c in ("keypoint_visibility", "keypoint_presence"))
    assert np.isfinite(vis).all() and np.isfinite(pres).all()
    # the job's people, keypoints and visibility are the loop's, run here without Ray
    got = keypoints_by_uri(images, instances)
    ids = np.asarray(instances.column("image_id").to_pylist())
    for image_id, uri in zip(images.column("image_id").to_pylist(), images.column("uri").to_pylist(), strict=True):
        want = run_bmp(read_bgr(Path(uri)), build_fake_models(cfg.models.fake), cfg.loop).instances
        np.testing.assert_array_equal(got[uri], want.keypoints)
        np.testing.assert_array_equal(vis[ids == image_id], want.keypoint_visibility)
    # coco.json: v = 2 visible, 1 occluded, 0 unconfident / absent, by the documented rule
    coco = COCO(str(out / "coco.json"))
    anns = coco.loadAnns(sorted(coco.getAnnIds()))
    kpts = np.array([a["keypoints"] for a in anns], float).reshape(-1, 17, 3)
    scores = np.array(instances.column("keypoints").to_pylist(), np.float32)[:, :, 2]
    want_v = np.where((scores >= np.float32(cfg.job.coco_keypoint_thr)) & (pres >= np.float32(0.5)),
                      np.where(vis >= np.float32(0.5), 2, 1), 0)
    np.testing.assert_array_equal(kpts[:, :, 2], want_v)
    assert {0, 1, 2} <= set(np.unique(want_v).tolist())  # the fakes do occlude some labeled keypoints
