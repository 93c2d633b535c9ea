"""Reading an output back and labeling images independently of the job, for comparisons."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from bmp_core.config import BmpConfig, load_config
from bmp_core.loop import run_bmp
from bmp_core.output.reader import read_committed_table
from bmp_core.output.store import OutputStore
from bmp_core.output.tables import keypoints_array
from bmp_core.testing import build_fake_models
from jobs.finalize import load_plan

REPO = Path(__file__).resolve().parents[2]
FAKE_CONFIG = REPO / "configs" / "fake.yaml"


def fake_config(*overrides: str) -> BmpConfig:
    return load_config(FAKE_CONFIG, list(overrides))


def read_output(output_uri: str) -> tuple[pa.Table, pa.Table]:
    """(images, instances) made of committed parts only, as any reader of the output must."""
    store = OutputStore(output_uri)
    plan = load_plan(store)
    return read_committed_table(store, plan.plan_id, "images"), read_committed_table(store, plan.plan_id, "instances")


def assert_one_row_per_image(images: pa.Table, num_images: int) -> None:
    counts = Counter(images.column("image_id").to_pylist())
    assert sorted(counts) == list(range(num_images)), "an image is missing"
    assert max(counts.values()) == 1, f"duplicated rows: {[i for i, c in counts.items() if c > 1]}"


def reference_keypoints(path: Path, cfg: BmpConfig) -> np.ndarray:
    """(N, 17, 3) keypoints of the fake-model loop on the upright image, run outside the job."""
    with Image.open(path) as im:
        bgr = np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(im).convert("RGB"))[:, :, ::-1])
    return run_bmp(bgr, build_fake_models(cfg.models.fake), cfg.loop).instances.keypoints


def keypoints_by_uri(images: pa.Table, instances: pa.Table) -> dict[str, np.ndarray]:
    """uri -> (N, 17, 3) keypoints in instance_id order."""
    uri_of = dict(zip(images.column("image_id").to_pylist(), images.column("uri").to_pylist(), strict=True))
    instances = instances.sort_by([("image_id", "ascending"), ("instance_id", "ascending")])
    kpts = keypoints_array(instances)
    ids = np.asarray(instances.column("image_id").to_pylist())
    return {uri_of[i]: kpts[ids == i] for i in uri_of}
