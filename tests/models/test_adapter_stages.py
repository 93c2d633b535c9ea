"""The adapter-stage harness (tests/models/adapter_stages.py, what benchmarks/adapter_stages.py prints) on the
COCO-size case, one run: every stage's output equals the old way's.

The equivalence itself is tested on real photos and border cases in test_maskpose_parity.py (a)-(c) and
test_sam_detector_speed_paths.py (d), (e); this keeps the benchmark's rows honest (no timing asserted).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.models
pytest.importorskip("torch")
pytest.importorskip("cv2")
pytest.importorskip("mmdet")
pytest.importorskip("mmpose")
pytest.importorskip("sam2")

from tests.models import adapter_stages as bench  # noqa: E402  (after the stack checks)


def test_every_adapter_stage_row_is_identical_to_the_old_way() -> None:
    rows = bench.adapter_stage_rows(repeat=1, small_only=True)
    assert [r.stage for r in rows] == list(bench.STAGES)
    assert {r.case for r in rows} == {bench.SMALL_CASE, bench.ENCODER_CASE}
    assert all(r.ours_ms > 0 and r.before_ms > 0 for r in rows)
    assert [r for r in rows if not r.identical] == []

