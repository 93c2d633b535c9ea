"""The review export validated by the Label Studio SDK's own ``LabelInterface`` (built from the
exported labeling config), in the separate venv of scripts/setup_test_clients.sh, run as a
subprocess. Skipped when that venv is missing; tests/unit/test_export.py validates the same tasks
against the config's XML everywhere."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bmp_core.output.export.policy import ExportPolicy
from bmp_core.output.export.run import ExportOptions, export_output
from tests.export_fixtures import Image, Person, box_mask, write_output

REPO = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("BMP_LABEL_STUDIO_PYTHON", str(REPO / ".venv-labelstudio" / "bin" / "python"))

pytestmark = pytest.mark.skipif(not Path(PYTHON).exists(),
                                reason="no Label Studio SDK test venv: scripts/setup_test_clients.sh makes it")


@pytest.mark.parametrize("review_by", ["low-confidence", "crowded", "random"])
def test_label_studio_sdk_accepts_the_review_tasks(tmp_path: Path, review_by: str) -> None:
    holed = box_mask(48, 64, 4, 4, 24, 44)
    holed[12:20, 9:16] = False
    images = [Image(f"s3://bucket/p{i}.jpg", 64, 48, people=[
        Person(holed), Person(box_mask(48, 64, 30, 4, 60, 44), pose_score=0.2 + 0.15 * i),
    ][: 1 + i % 2]) for i in range(6)]
    out = write_output(str(tmp_path / "out"), images, shard_size=4)
    dest = tmp_path / "review"
    export_output(out, str(dest), "label-studio", ExportPolicy(min_pose_score=0.5),
                  ExportOptions(review=4, review_by=review_by))
    proc = subprocess.run([PYTHON, str(REPO / "tests" / "integration" / "_label_studio_check.py"),
                           str(dest / "tasks.json"), str(dest / "labeling_config.xml")],
                          check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("LABEL_STUDIO_RESULT "))[20:])
    assert seen["tasks"] == 4 and seen["regions"] > 0
    assert seen["task_errors"] == [] and seen["prediction_errors"] == []
    assert seen["bad_label_rejected"]
