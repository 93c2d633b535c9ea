"""report.html (and viz/eval through the CLI) on a real job output, rendered by headless Chromium.

The output is made by the job's own pieces without Ray (plan, BmpWorker.process_shard with the fake
models, finalize) on the shared test images plus one missing file, so the report has a failure to
list. Only the Chromium part is skipped when no Chromium is installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bmp_core.analysis.report import HEADER_RGB, SECTION_IDS
from bmp_core.config import config_to_dict, load_config

REPO = Path(__file__).resolve().parents[2]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def make_output(testdata: Path, out: Path, trace_image: str = "004806.jpg") -> dict[str, Any]:
    """Label the test images (plus a missing one) into ``out`` with the fake models, no Ray.

    Also stores the traces of ``trace_image`` as the ``trace`` run option would (the loop is
    deterministic, so re-running it gives the job's result).
    """
    from bmp_core.io.uris import list_input
    from bmp_core.loop import run_bmp
    from bmp_core.output.plan import freeze_plan
    from bmp_core.output.store import OutputStore
    from bmp_core.output.traces import write_traces
    from bmp_core.testing.fakes import build_fake_models
    from jobs.finalize import finalize_output
    from jobs.planner import listing_table, make_plan, shard_uris
    from jobs.worker import BmpWorker, ShardTask
    from tests.conftest import read_bgr

    images = sorted(testdata.glob("coco/*.jpg")) + sorted(testdata.glob("ochuman/*.jpg"))
    listing = out.parent / "list.txt"
    listing.write_text("\n".join([*map(str, images), str(testdata / "coco" / "gone.jpg")]) + "\n")
    cfg = load_config(REPO / "configs" / "fake.yaml", ["job.shard_size=3"])
    uris = list_input(str(listing), cfg.job.image_extensions)
    plan = make_plan(cfg, uris)
    store = OutputStore(str(out))
    freeze_plan(store, plan, listing_table(uris), cfg)
    worker = BmpWorker(cfg)
    for shard in range(plan.num_shards):
        start, _ = plan.shard_range(shard)
        worker.process_shard(ShardTask(str(out), plan.plan_id, shard, start, tuple(shard_uris(uris, plan, shard))))
    counts = finalize_output(store, plan, cfg.job.coco_keypoint_thr)
    run = {"input": str(listing), "output": str(out), "plan": plan.to_dict(), "counts": dataclasses.asdict(counts),
           "config": config_to_dict(cfg), "timings_s": {"wall": 1.0}, "started_unix": time.time()}
    store.write_json("run.json", run)
    image_id = next(i for i, u in enumerate(uris.to_pylist()) if u.endswith(trace_image))
    image_bgr = read_bgr(testdata / "ochuman" / trace_image)
    result = run_bmp(image_bgr, build_fake_models(cfg.models.fake), cfg.loop, trace=True)
    write_traces(store, image_id, result.traces, image_bgr)
    return {"run": run, "uris": uris.to_pylist(), "traced_image_id": image_id, "iterations": cfg.loop.iterations}


@pytest.fixture(scope="module")
def job_output(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from tests.conftest import require_shared

    require_shared(testdata, "ochuman")  # the traced image is OCHuman's 004806
    out = tmp_path_factory.mktemp("report") / "out"
    return out, make_output(testdata, out)


def _cli(*argv: str) -> str:
    from jobs.cli_inspect import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(list(argv)) == 0
    return buf.getvalue()


def test_viz_cli_writes_overlays_and_a_gif_per_pass(job_output: tuple[Path, dict[str, Any]]) -> None:
    out, info = job_output
    _cli("viz", str(out), "--gif", "--images", str(info["traced_image_id"]), "000000040083.jpg")
    jpgs = sorted((out / "viz").glob("*.jpg"))
    gifs = sorted((out / "viz").glob("*.gif"))
    assert len(jpgs) == 2 and len(gifs) == 1  # only the traced image has a GIF
    with Image.open(gifs[0]) as gif:
        assert gif.n_frames == info["iterations"]


def test_eval_then_report_renders_in_chromium(job_output: tuple[Path, dict[str, Any]], testdata: Path,
                                              tmp_path: Path) -> None:
    out, info = job_output
    table = _cli("eval", str(out), "--gt", str(testdata / "coco" / "test_coco.json"))
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["images"]["matched"] == 4
    assert evaluation["images"]["num_missing_in_gt"] == len(info["uris"]) - 4  # ochuman images + the missing one
    assert "keypoints" in table
    _cli("report", str(out), "--samples", "6")
    page = (out / "report.html").read_text()
    for section in SECTION_IDS:
        assert f"id='{section}'" in page
    assert "gone.jpg" in page and "missing file" in page  # the failed image and its reason
    assert "after pass 2" in page and "keypoints" in page  # the eval table of eval.json
    assert not re.search(r"(src|href)=['\"]https?://", page)  # self-contained

    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]
    url = (out / "report.html").as_uri()
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run([chromium, *flags, "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, env=env, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in SECTION_IDS:
        assert f'id="{section}"' in dom.stdout  # parsed into the DOM, not just present as text
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,4000", url],
                   capture_output=True, timeout=120, check=True, env=env)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert pixels.std() > 20  # not a blank page
    # The header bar is drawn with its CSS colour (the stylesheet was applied).
    assert np.abs(pixels[10, 10] - np.array(HEADER_RGB)).max() <= 3
    # The histogram and overlay images were decoded: many saturated pixels, which the page's own
    # greys and the header never have.
    rgb = pixels.astype(np.float64)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    assert (saturation > 80).mean() > 0.02


def test_summary_load_reads_one_images_masks_from_its_shard(job_output: tuple[Path, dict[str, Any]]) -> None:
    from bmp_core.output.reader import SUMMARY_INSTANCE_COLUMNS, load_output

    out, info = job_output
    full = load_output(str(out))
    light = load_output(str(out), full_instances=False)
    assert light.instances.column_names == list(SUMMARY_INSTANCE_COLUMNS)
    assert light.instances.num_rows == full.instances.num_rows == full.run_info["counts"]["instances"]
    assert len(light.instance_parts) == full.run_info["plan"]["num_shards"]  # one committed part per shard
    image_id = info["traced_image_id"]
    assert light.instances_of(image_id).equals(full.instances_of(image_id))
    assert light.instances_of(image_id).num_rows > 0


def test_inspect_commands_read_and_write_s3(job_output: tuple[Path, dict[str, Any]], testdata: Path,
                                            request: pytest.FixtureRequest) -> None:
    from bmp_core.io.uris import filesystem
    from bmp_core.output.reader import load_output

    try:
        request.getfixturevalue("s3_endpoint")  # the moto server of tests/integration/conftest.py
    except pytest.FixtureLookupError:
        pytest.skip("no s3_endpoint fixture (moto) in this checkout")
    out, info = job_output
    fs, _ = filesystem("s3://bmp-test/")
    fs.put(str(out), "bmp-test/inspect/out", recursive=True)
    fs.invalidate_cache()
    uri = "s3://bmp-test/inspect/out"
    loaded = load_output(uri, full_instances=False)
    assert loaded.images.num_rows == len(info["uris"]) and loaded.run_info is not None
    assert loaded.instances_of(info["traced_image_id"]).num_rows > 0
    new = "s3://bmp-test/inspect/new"  # not under the uploaded folder, which holds earlier tests' files
    _cli("eval", uri, "--gt", str(testdata / "coco" / "test_coco.json"), "--iou-types", "keypoints",
         "--out", f"{new}/eval.json")
    _cli("report", uri, "--samples", "2", "--out", f"{new}/report.html")
    _cli("viz", uri, "--images", str(info["traced_image_id"]), "--gif", "--out", f"{new}/viz")
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.find("bmp-test/inspect/new"))
    assert {"eval.json", "report.html"} <= set(names)
    assert len([n for n in names if n.endswith("_004806.gif")]) == 1
    assert len([n for n in names if n.endswith("_004806.jpg")]) == 1
    assert json.loads(fs.cat_file("bmp-test/inspect/new/eval.json"))["images"]["matched"] == 4
