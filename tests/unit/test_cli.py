"""The CLI's commands that need no Ray: validate-config, plan, export-coco, and their exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from bmp_core.config import load_config
from bmp_core.output.plan import freeze_plan
from bmp_core.output.store import OutputStore
from jobs.cli import main
from jobs.planner import listing_table, make_plan
from jobs.worker import BmpWorker, ShardTask

FAKE = str(Path(__file__).resolve().parents[2] / "configs" / "fake.yaml")


def test_validate_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-config", "--config", FAKE, "loop.iterations=3"]) == 0
    assert "iterations: 3" in capsys.readouterr().out
    assert main(["validate-config", "--config", FAKE, "job.shard_size=0"]) == 2
    assert "job.shard_size must be >= 1" in capsys.readouterr().err
    assert main(["validate-config", "--config", "/no/such.yaml"]) == 2


def test_plan_and_export_coco(tmp_path: Path, testdata: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = ["plan", "--config", FAKE, "--input", str(testdata / "coco"), "--output", str(out), "--shard-size", "3"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "4 images" in text and "shards: 2 of 3 images" in text and "is new" in text
    assert not out.exists()  # plan writes nothing

    # Commit shard 0 of that plan the way a worker does (no Ray), then plan shows the resume state.
    cfg = load_config(FAKE, ["job.shard_size=3"])
    from bmp_core.io.uris import list_input

    uris = list_input(str(testdata / "coco"), cfg.job.image_extensions)
    plan = make_plan(cfg, uris)
    store = OutputStore(str(out))
    freeze_plan(store, plan, listing_table(uris), cfg)
    start, stop = plan.shard_range(0)
    BmpWorker(cfg).process_shard(ShardTask(str(out), plan.plan_id, 0, start, tuple(uris[start:stop].to_pylist())))
    assert main(args) == 0
    assert "1 shard(s) committed (3 images) and skipped on rerun, 1 to do" in capsys.readouterr().out
    assert main([*args, "loop.iterations=1"]) == 0
    assert "refused without --force" in capsys.readouterr().out

    assert main(["export-coco", str(out), "--out", "partial.json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    coco = COCO(str(out / "partial.json"))
    assert len(coco.getImgIds()) == counts["images"] == 3
    assert len(coco.getAnnIds()) == counts["annotations"] > 0

    assert main(["export-coco", str(tmp_path / "not_an_output")]) == 2
    assert "no plan.json" in capsys.readouterr().err


def test_cpu_share_lets_any_number_of_cpu_workers_start() -> None:
    from jobs.actor_pool import cpu_share

    assert cpu_share([2.0], 1) == 2.0  # one worker gets every core
    assert cpu_share([2.0], 2) == 1.0
    assert cpu_share([2.0], 4) == 0.5
    assert cpu_share([2.0], 3) == 0.6666  # rounded down: 3 x 0.6666 fits in 2
    assert cpu_share([2.0], 16) == 0.125
    assert cpu_share([8.0, 8.0], 3) == 4.0  # has to fit on a node, not just in the total
    assert cpu_share([8.0, 2.0], 2) == 4.0  # both on the big node beats 2 each
    assert cpu_share([0.0], 2) == 0.0
