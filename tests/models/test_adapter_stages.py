"""benchmarks/adapter_stages.py on the COCO-size case, one run: every stage's output equals the old way's.

The equivalence itself is tested on real photos and border cases in test_maskpose_parity.py (a)-(c) and
test_sam_detector_speed_paths.py (d), (e); this keeps the benchmark's rows honest (no timing asserted).
"""

from __future__ import annotations

import sys

import pytest

from tests.models.conftest import REPO

pytestmark = pytest.mark.models
pytest.importorskip("torch")
pytest.importorskip("cv2")
pytest.importorskip("mmdet")
pytest.importorskip("mmpose")
pytest.importorskip("sam2")

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import adapter_stages as bench


def test_every_adapter_stage_row_is_identical_to_the_old_way() -> None:
    rows = bench.adapter_stage_rows(repeat=1, small_only=True)
    assert [r.stage for r in rows] == list(bench.STAGES)
    assert {r.case for r in rows} == {bench.SMALL_CASE, bench.ENCODER_CASE}
    assert all(r.ours_ms > 0 and r.before_ms > 0 for r in rows)
    assert [r for r in rows if not r.identical] == []

