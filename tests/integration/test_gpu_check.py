"""``benchmarks/gpu_check.py --dry-run``: every step of the GPU check runs on CPU (so it cannot rot)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.models]

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_runs_every_step_and_prints_one_table(
    ray_cluster: object, tmp_path: Path, testdata: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for module in ("torch", "mmdet", "mmpose", "sam2"):
        pytest.importorskip(module)
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    rc = gpu_check.main(["--dry-run", "--out", str(tmp_path / "gpu_check.json"), "--testdata", str(testdata)])
    out = capsys.readouterr().out
    rows = {r["step"]: r for r in json.loads((tmp_path / "gpu_check.json").read_text())}
    assert list(rows) == [
        "device", "tests", "loop fp32", "loop bf16", "loop tf32", "loop compile", "loop v2 fp32", "pose v1 vs v2", "job"
    ]
    assert rc == 0 and all(r["ok"] for r in rows.values()), {k: r["detail"] for k, r in rows.items()}
    assert rows["device"]["detail"].startswith("device cpu, torch ")
    assert "passed" in rows["tests"]["detail"]
    for name in ("loop fp32", "loop bf16", "loop tf32", "loop compile", "loop v2 fp32"):
        assert rows[name]["images_per_s"] > 0 and set(rows[name]["stage_images_per_s"]) >= {"pose", "segment"}
    for name in ("loop bf16", "loop tf32", "loop compile"):  # no-ops on CPU: exactly fp32's labels
        assert rows[name]["agreement"] == "kpt L2 <= 0 px, mask IoU >= 1.0000", name
    assert rows["pose v1 vs v2"]["detail"].startswith("size s, 2 people, 1 runs: estimate v2/v1 ")
    assert rows["job"]["images_per_s"] > 0 and rows["job"]["detail"].startswith("4 ok / 0 errors of 4")
    header = next(line for line in out.splitlines() if line.startswith("step "))
    assert "images/s" in header and "GPU peak GiB" in header and "agreement vs fp32" in header
