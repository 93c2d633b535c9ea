"""benchmarks/adapter_stages.py without the model stack: one line, exit 0 (its rows: tests/models)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_main_skips_in_one_line_without_the_model_stack(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks import adapter_stages as bench

    monkeypatch.setattr(bench, "missing_stack", lambda: "sam2: ModuleNotFoundError: No module named 'sam2'")
    assert bench.main([]) == 0
    assert capsys.readouterr().out == (
        "adapter_stages: skipped, no model stack (sam2: ModuleNotFoundError: No module named 'sam2')\n"
    )


def test_the_table_has_one_line_per_row() -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks import adapter_stages as bench

    rows = [bench.AdapterStageRow(s, bench.SMALL_CASE, 2.0, 5.0, i != 1) for i, s in enumerate(bench.STAGES)]
    assert rows[0].speedup == 2.5
    lines = bench.format_table(rows).splitlines()
    assert len(lines) == 1 + len(rows)
    assert " NO " in lines[2] and " yes " in lines[1]
