"""The YOLO exports loaded by Ultralytics' own ``check_det_dataset`` and ``YOLODataset`` (which runs
its label verification), in the separate test venv of scripts/setup_test_clients.sh (AGPL: never
imported here; run as a subprocess). Skipped when that venv is missing; tests/unit/test_export.py
holds the strict format check that runs everywhere."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from bmp_core.output.export.policy import ExportPolicy
from bmp_core.output.export.run import ExportOptions, export_output
from bmp_core.output.reader import load_output
from tests.export_fixtures import Image, Person, box_mask, write_output

REPO = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("BMP_ULTRALYTICS_PYTHON", str(REPO / ".venv-ultralytics" / "bin" / "python"))
H, W = 48, 64

pytestmark = pytest.mark.skipif(not Path(PYTHON).exists(),
                                reason="no Ultralytics test venv: scripts/setup_test_clients.sh makes it")


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> str:
    from PIL import Image as PILImage

    from bmp_core.output.export.policy import split_of

    root = tmp_path_factory.mktemp("ultralytics")
    # The split hashes the URI, which carries the random tmp path: pick names that put 4 images in
    # each split at the tests' val fraction (0.4), or an unlucky path leaves a split empty (0.6 ** 8).
    names: dict[str, list[str]] = {"val": [], "train": []}
    for j in range(1000):
        names_of = names[split_of(str(root / "src" / f"im{j}.png"), 0.4)]
        if len(names_of) < 4:
            names_of.append(f"im{j}.png")
    images = []
    for i, name in enumerate(sorted(names["val"] + names["train"])):
        uri = str(root / "src" / name)
        Path(uri).parent.mkdir(exist_ok=True)
        PILImage.fromarray(np.random.default_rng(i).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(uri)
        holed = box_mask(H, W, 4, 4, 24, 44)
        holed[12:20, 9:16] = False  # a hole
        two_parts = box_mask(H, W, 28, 4, 48, 40) | box_mask(H, W, 52, 30, 62, 46)
        images.append(Image(uri, W, H, people=[Person(holed), Person(two_parts, pose_score=0.2 + 0.1 * (i % 2))]))
    return write_output(str(root / "out"), images, shard_size=3)


def _ultralytics(data_yaml: Path, task: str) -> dict:
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(data_yaml.parent / "_ul_config")}
    proc = subprocess.run([PYTHON, str(REPO / "tests" / "integration" / "_ultralytics_check.py"), str(data_yaml),
                           task], check=False, capture_output=True, text=True, timeout=300, env=env,
                          cwd=data_yaml.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ULTRALYTICS_RESULT "))
    return json.loads(line.split(" ", 1)[1])


def test_ultralytics_reads_the_pose_export(output: str, tmp_path: Path) -> None:
    manifest = export_output(output, str(tmp_path / "pose"), "yolo-pose",
                             ExportPolicy(min_pose_score=0.25, val_fraction=0.4, max_ignore_fraction=1.0))
    seen = _ultralytics(tmp_path / "pose" / "data.yaml", "pose")
    assert seen["kpt_shape"] == [17, 3] and seen["names"] == {"0": "person"}
    for split in ("train", "val"):
        assert seen[split]["images"] == manifest.counts.images[split] > 0
        assert seen[split]["instances"] == manifest.counts.people_by_split[split]["kept"]
        kp = np.array([k for per_image in seen[split]["keypoints"] for k in per_image])
        assert kp.shape[1:] == (17, 3) and set(np.unique(kp[:, :, 2])) <= {0.0, 2.0}
    assert seen["train"]["sample_keys"]  # one sample through its transforms


def test_ultralytics_reads_the_seg_export_and_its_polygons_fill_back(output: str, tmp_path: Path) -> None:
    manifest = export_output(output, str(tmp_path / "seg"), "yolo-seg", ExportPolicy(val_fraction=0.4),
                             ExportOptions(polygon_tolerance_px=0))
    seen = _ultralytics(tmp_path / "seg" / "data.yaml", "segment")
    job = load_output(output)
    uris = job.images.column("uri").to_pylist()
    for split in ("train", "val"):
        assert seen[split]["instances"] == manifest.counts.people_by_split[split]["kept"]
        for im_file, segments in zip(seen[split]["im_files"], seen[split]["segments"], strict=True):
            image_id = uris.index(os.path.realpath(im_file))
            rows = job.instances_of(image_id)
            rles = [{"size": s, "counts": c.encode()} for c, s in zip(
                rows.column("mask_rle_counts").to_pylist(), rows.column("mask_rle_size").to_pylist(), strict=True)]
            for segment, rle in zip(segments, rles, strict=True):
                poly = (np.array(segment) * [W, H]).reshape(-1).tolist()
                filled = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], H, W)))
                np.testing.assert_array_equal(filled, mask_utils.decode(rle))  # holes and parts kept
