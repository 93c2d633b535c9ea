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
    assert cfg.loop.iterations == 1  # no detector for a second pass
    assert cfg.models.lite.model_complexity == 1
    assert cfg.models.lite.cache_images >= cfg.job.batch_size  # a batch's people stay cached until segment()


@pytest.mark.parametrize(
    "override", ["models.lite.model_complexity=3", "models.lite.cache_images=0", "models.kind=blazepose"]
)
def test_bad_lite_values_are_config_errors(override: str) -> None:
    with pytest.raises(ConfigError, match=override.split("=")[0].rsplit(".", 1)[-1]):
        load_config(REPO / "configs" / "lite_cpu.yaml", [override])


def test_lite_modules_do_not_import_mediapipe_until_built() -> None:
    code = (
        "import sys, bmp_core.models, bmp_core.models.lite.crops, bmp_core.models.lite.cache\n"
        "print(','.join(m for m in ('mediapipe', 'cv2') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == ""
