"""configs/lite_cpu.yaml, models.lite validation, and no MediaPipe import until the backend is built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bmp_core.config import ConfigError, load_config

pytestmark = pytest.mark.lite

REPO = Path(__file__).resolve().parents[2]


def test_lite_cpu_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "lite_cpu.yaml")
    assert cfg.models.kind == "lite"
    assert cfg.models.has_detector and cfg.models.lite.detect_people  # BlazePose's own person detector
    assert cfg.loop.iterations == 2  # the second pass detects on the image with the people found blacked out
    assert cfg.models.lite.model_complexity == 1
    assert cfg.models.lite.cache_images >= cfg.job.batch_size  # a batch's people stay cached until segment()


@pytest.mark.parametrize(
    "override", ["models.lite.model_complexity=3", "models.lite.cache_images=0", "models.kind=blazepose",
                 "models.lite.detector_windows=[0.5,1.5]", "models.lite.detector_overlap=1.0",
                 "models.lite.detector_score_thr=2", "models.lite.detector_duplicate_overlap=0"]
)
def test_bad_lite_values_are_config_errors(override: str) -> None:
    with pytest.raises(ConfigError, match=override.split("=")[0].rsplit(".", 1)[-1]):
        load_config(REPO / "configs" / "lite_cpu.yaml", [override])


def test_without_the_detector_the_boxes_must_be_given() -> None:
    from bmp_core.config import check_job_config

    with pytest.raises(ConfigError, match="loop.iterations: 1"):  # nothing would detect in the second pass
        load_config(REPO / "configs" / "lite_cpu.yaml", ["models.lite.detect_people=false"])
    cfg = load_config(REPO / "configs" / "lite_cpu.yaml", ["models.lite.detect_people=false", "loop.iterations=1"])
    with pytest.raises(ConfigError, match="needs job.given_boxes"):
        check_job_config(cfg)
    check_job_config(load_config(REPO / "configs" / "lite_cpu.yaml"))  # the detector finds the people
    check_job_config(load_config(REPO / "configs" / "lite_cpu.yaml", [
        "models.lite.detect_people=false", "loop.iterations=1", "job.given_boxes=examples/detections.json"]))


def test_lite_modules_do_not_import_mediapipe_until_built() -> None:
    code = (
        "import sys, bmp_core.models, bmp_core.models.lite.crops, bmp_core.models.lite.cache\n"
        "import bmp_core.models.lite.pose_detection, bmp_core.models.lite.detector\n"
        "print(','.join(m for m in ('mediapipe', 'cv2') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == ""
