"""``bmp-label plan --sample``: a real sample run on a Ray worker with the fake models; the printed
numbers must agree with each other and with the plan (not with any speed)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from jobs.cli import main

from ._helpers import FAKE_CONFIG

pytestmark = pytest.mark.integration


def _num(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return float(found.group(1))


def test_plan_sample_prices_the_listing(ray_cluster: object, testdata: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    num_images = len(list(testdata.rglob("*.jpg")))
    # 40 ms per model call: seconds long enough that the printed roundings do not matter.
    assert main(["plan", "--config", str(FAKE_CONFIG), "--input", str(testdata), "--output", str(out),
                 "--shard-size", "3", "--sample", "3", "--seed", "7", "--num-workers", "2",
                 "--gpu-hour-price", "2.5", "models.fake.latency_ms=40"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()  # plan writes nothing, --sample included
    # The worker of 2 on 2 cores gets 1 core.
    assert f"sample: 3 of {num_images} images (seed 7) on one worker (1 CPU" in text
    sample_s = _num(r"then 3 images in ([\d.]+) s \(0 errors\)", text)
    rate = _num(r"rate: ([\d.e+-]+) images/s per worker", text)
    assert rate == pytest.approx(3 / sample_s, rel=0.01)
    labeling = _num(r"labeling ([\d.]+) s", text)
    overhead = _num(r"start and warm-up ([\d.]+) s", text)
    wall = _num(r"= wall ([\d.]+) s", text)
    start = _num(r"workers start ([\d.]+) s", text)
    warmup = _num(r"warm-up \d+ images ([\d.]+) s", text)
    assert overhead == pytest.approx(start + warmup, abs=0.02) and wall == pytest.approx(labeling + overhead,
                                                                                          abs=0.02)
    # The shards of 3 on 2 workers: rounds of two shards, the short last shard in the last round.
    num_shards = math.ceil(num_images / 3)
    last = num_images - 3 * (num_shards - 1)
    expect = max(math.ceil((num_shards - 1) / 2) * 3, (num_shards - 1) // 2 * 3 + last) / rate
    # Printed with 2 decimals: on a plain clone's 4 demo images the labeling is ~0.3 s, so the rounding
    # (up to 0.005 s) is more than 1 % of it.
    assert labeling == pytest.approx(expect, rel=0.01, abs=0.006)
    assert f"{num_images} images in {num_shards} shard(s) on 2 worker(s)" in text
    hours = _num(r"worker-hours: ([\d.e+-]+) \(2 x wall\)", text)
    assert hours == pytest.approx(2 * wall / 3600, rel=0.01, abs=2 * 0.005 / 3600)  # wall: 2 decimals
    assert _num(r"cost ([\d.e+-]+) at 2.5 per worker-hour", text) == pytest.approx(2.5 * hours, rel=0.01)


def test_plan_sample_refuses_nonsense(ray_cluster: object, testdata: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--config", str(FAKE_CONFIG), "--input", str(testdata),
                 "--output", str(tmp_path / "o"), "--sample", "0"]) == 2
    assert "--sample must be >= 1" in capsys.readouterr().err


def test_plan_sample_prices_a_tar_input_from_its_bytes(ray_cluster: object, testdata: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import tarfile

    photos = sorted(testdata.rglob("*.jpg"))[:4]
    for t in range(3):  # 3 equal tars of 4 photos each (12 images, only the 3 sizes are known to the plan)
        with tarfile.open(tmp_path / f"shard-{t}.tar", "w") as tar:
            for i, p in enumerate(photos):
                data = p.read_bytes()
                info = tarfile.TarInfo(f"{t}{i}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    assert main(["plan", "--config", str(FAKE_CONFIG), "--input", str(tmp_path / "shard-{0..2}.tar"),
                 "--output", str(out), "--sample", "4", "--num-workers", "1", "models.fake.latency_ms=20"]) == 0
    text = capsys.readouterr().out
    assert "3 tar file(s)" in text and "shards: 3 one per tar" in text and not out.exists()
    # The sample is one whole tar (4 images): per byte, the 3 equal tars hold 3 x 4 images, up to each
    # tar's end blocks, which the sample's bytes (up to its last member) leave out.
    estimate = _num(r"estimate: (\d+) images in the 3 tars", text)
    assert 12 <= estimate <= 13
    assert "sample: 4 of ~" in text and re.search(r"projection: ~\d+ images in 3 shard\(s\) on 1 worker", text)
    rate = _num(r"rate: ([\d.e+-]+) images/s per worker", text)
    labeling = _num(r"labeling ([\d.]+) s", text)
    assert labeling == pytest.approx(estimate / rate, rel=0.1)
