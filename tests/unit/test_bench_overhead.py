"""benchmarks/bench_overhead.py --quick runs end to end (no timing asserted: speed lives in benchmarks/)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_bench_overhead_quick_prints_its_table_and_last_line(testdata: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks import bench_overhead

    cases = bench_overhead.main(["--quick", "--no-adapters", "--testdata", str(testdata)])  # adapters: tests/models
    out = capsys.readouterr().out.strip().splitlines()
    last = r"overhead: \d+\.\d ms/image \(COCO-size, 8 people\), \d+\.\d ms/image \(1080p, 20 people\)"
    assert re.fullmatch(last, out[-1])
    assert [c.name for c in cases] == ["COCO-size, 8 people", "1080p, 20 people"]
    assert cases[0].images == 2 and cases[1].images == 1 and cases[1].people >= 20
    for case in cases:  # every stage was measured (the loop reports its own work per stage)
        assert all(len(v) == case.images for v in case.ms.values())
    assert any(line.startswith("1080p, 20 people") for line in out)
