"""Every bad input of issue 5 ends as exactly one error row with its reason; odd-but-valid ones are labeled."""

from __future__ import annotations

import csv
import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from jobs.ray_runner import RunOptions, run_job

from ._helpers import FAKE_CONFIG, REPO, assert_one_row_per_image, fake_config, read_output

pytestmark = pytest.mark.integration


def _save(path: Path, im: Image.Image, fmt: str, **kwargs: object) -> None:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    path.write_bytes(buf.getvalue())


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_bad_and_odd_inputs(ray_cluster: object, testdata: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    photo = (testdata / "coco" / "000000000785.jpg").read_bytes()
    with Image.open(testdata / "coco" / "000000000785.jpg") as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    # Bad inputs -> error rows.
    (src / "zero.jpg").write_bytes(b"")
    (src / "text.jpg").write_bytes(b"definitely not a JPEG\n" * 20)
    (src / "truncated.jpg").write_bytes(photo[: len(photo) // 2])
    _save(src / "one_pixel.png", Image.new("RGB", (1, 1), (9, 9, 9)), "PNG")
    (src / "bomb.png").write_bytes(_png_header_only(60_000, 60_000))
    # Odd but valid inputs -> labeled.
    _save(src / "cmyk.jpg", rgb.convert("CMYK"), "JPEG")
    gray16 = (np.asarray(rgb.convert("L"), np.uint16) * 257)
    _save(src / "gray16.png", Image.fromarray(gray16), "PNG")
    _save(src / "alpha.png", rgb.convert("RGBA"), "PNG")
    _save(src / "gray.jpg", rgb.convert("L"), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    _save(src / "exif_rotated.jpg", rgb, "JPEG", exif=exif.tobytes())
    # A list file names them all plus one that does not exist.
    names = sorted(p.name for p in src.iterdir()) + ["missing.jpg"]
    (tmp_path / "list.txt").write_text("\n".join(f"in/{n}" for n in names) + "\n")

    out = tmp_path / "out"
    run = run_job(fake_config("job.shard_size=4"), RunOptions(str(tmp_path / "list.txt"), str(out), num_workers=2,
                                                              progress=False, lock_settle_s=0.05))
    images, instances = read_output(str(out))
    assert_one_row_per_image(images, len(names))
    rows = {Path(u).name: r for u, r in zip(images.column("uri").to_pylist(), images.to_pylist(), strict=True)}
    expected_errors = {"zero.jpg": "empty file", "text.jpg": "not an image", "truncated.jpg": "truncated",
                       "one_pixel.png": "too small: 1x1", "bomb.png": "too many pixels",
                       "missing.jpg": "missing file"}
    for name, reason in expected_errors.items():
        assert rows[name]["status"] == "error" and reason in rows[name]["error"], rows[name]
        assert rows[name]["num_instances"] == 0
    for name in ("cmyk.jpg", "gray16.png", "alpha.png", "gray.jpg", "exif_rotated.jpg"):
        assert rows[name]["status"] == "ok" and rows[name]["error"] is None, rows[name]
        assert rows[name]["num_instances"] > 0
        expected_wh = (h, w) if name == "exif_rotated.jpg" else (w, h)  # labeled upright
        assert (rows[name]["width"], rows[name]["height"]) == expected_wh
    # Instances exist only for labeled images, and their masks have the upright size.
    ok_ids = {r["image_id"] for r in rows.values() if r["status"] == "ok"}
    assert set(instances.column("image_id").to_pylist()) <= ok_ids
    rotated = instances.filter(pc.equal(instances.column("image_id"), rows["exif_rotated.jpg"]["image_id"]))
    assert {tuple(s) for s in rotated.column("mask_rle_size").to_pylist()} == {(w, h)}  # [height, width]
    # errors.csv lists exactly the failures, with reasons; run.json counts them.
    with open(out / "errors.csv") as f:
        failed = {Path(r["uri"]).name: r["error"] for r in csv.DictReader(f)}
    assert set(failed) == set(expected_errors)
    assert run.counts.images_error == len(expected_errors)
    assert run.counts.images_ok == len(names) - len(expected_errors)


def test_a_missing_checkpoint_stops_the_job_before_the_workers(ray_cluster: object, testdata: Path,
                                                              tmp_path: Path) -> None:
    """Checked on the driver (jobs/staging.py): no worker starts, the message names the file."""
    from bmp_core.models.checkpoints import CheckpointError

    missing = tmp_path / "no_such_weights.pth"
    cfg = fake_config("models.kind=bmp", f"models.detector.checkpoint={missing}")
    with pytest.raises(CheckpointError, match=f"checkpoint file not found: {missing}"):
        run_job(cfg, RunOptions(str(testdata / "coco"), str(tmp_path / "out"), progress=False, lock_settle_s=0.05))
    assert not (tmp_path / "out" / "_lock.json").exists()  # released on the way out
    assert not (tmp_path / "out" / "plan.json").exists()  # before the plan: a fixed path is not "another config"


def test_a_mistake_found_by_the_workers_is_one_line_without_ray_text(ray_cluster: Any, testdata: Path,
                                                                    tmp_path: Path) -> None:
    """A job.given_boxes file that is no COCO file is read by each worker as it starts: through the CLI
    on the cluster (log_to_driver on), stderr holds our one line and hint, none of Ray's traceback."""
    bad = tmp_path / "boxes.json"
    bad.write_text('{"not": "a COCO file"}')
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "run", "--config", str(FAKE_CONFIG), "--input", str(testdata / "coco"),
         "--output", str(tmp_path / "out"), "--no-progress", f"job.given_boxes={bad}"],
        capture_output=True, text=True, env=ray_cluster.env, cwd=REPO, timeout=300)
    assert done.returncode == 2, done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith(("bmp-label run:", "  hint:"))]
    assert len(ours) == 2 and str(bad) in ours[0], done.stderr
    for ray_text in ("Traceback", "RayTaskError", "ActorDiedError", "creation task"):
        assert ray_text not in done.stderr, done.stderr


def test_a_model_bug_stops_the_job_with_its_traceback_and_oom_is_one_error_row(
        ray_cluster: object, testdata: Path, tmp_path: Path) -> None:
    """Through the Ray runner: a model's ValueError is retried on new workers, then stops the job
    (not N error rows and a "successful" job); CUDA out of memory on one image is that image's row."""
    from jobs.ray_runner import JobError

    src = tmp_path / "in"
    src.mkdir()
    good = testdata / "coco" / "000000000785.jpg"
    (src / "a.jpg").write_bytes(good.read_bytes())
    with Image.open(good) as im:
        _save(src / "b.png", im.convert("RGB").crop((0, 0, 333, im.height)), "PNG")  # the only 333 px wide
    common = ("job.shard_size=1", "job.max_attempts=2", "models.fake.fail_width=333")
    opts = RunOptions(str(src), str(tmp_path / "bug"), num_workers=1, progress=False, lock_settle_s=0.05)
    with pytest.raises(JobError) as info:
        run_job(fake_config(*common, "models.fake.fail_with=bug"), opts)
    message = str(info.value)
    assert "shard 1 failed 2 time(s)" in message
    assert "ValueError: fake detector: simulated model bug" in message
    assert 'fakes.py", line' in message  # the worker's traceback, down to the raising frame
    assert not (tmp_path / "bug" / "run.json").exists()

    out = tmp_path / "oom"
    run = run_job(fake_config(*common, "models.fake.fail_with=oom"),
                  RunOptions(str(src), str(out), num_workers=1, progress=False, lock_settle_s=0.05))
    images, _ = read_output(str(out))
    rows = {Path(u).name: r for u, r in zip(images.column("uri").to_pylist(), images.to_pylist(), strict=True)}
    assert rows["a.jpg"]["status"] == "ok" and rows["a.jpg"]["num_instances"] > 0
    assert rows["b.png"]["status"] == "error" and "out of GPU memory" in rows["b.png"]["error"]
    assert run.counts.images_error == 1 and run.counts.failed_attempts == 0
