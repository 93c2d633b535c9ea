"""The lite backend's accuracy with its own person detector next to given boxes: ``bmp-label run`` then
``bmp-label eval`` per dataset and variant, one table (the figures in docs/lite.md come from it).

    python scripts/lite_eval.py                               # the demo set in examples/
    python scripts/lite_eval.py --testdata PATH/TO/testdata   # also its coco/ and ochuman/ folders

Variants: ``detector`` (configs/lite_cpu.yaml as it is: two passes, no boxes), ``detector, 1 pass``,
``detections`` (the dataset's detections file, where it has one, one pass) and ``ground truth`` (its
annotated boxes, one pass; with two passes too). A dataset is a folder of images and its COCO ground
truth: ``examples/`` (``ground_truth.json``, ``detections.json``), ``coco/`` (``test_coco.json``,
``test_coco_det_AP_H_56.json``) and ``ochuman/`` (``test_ochuman.json``) of ``--testdata``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Dataset:
    name: str
    images: Path
    gt: Path
    detections: Path | None


def datasets(testdata: Path | None) -> list[Dataset]:
    found = [Dataset("demo (examples/)", REPO / "examples" / "images", REPO / "examples" / "ground_truth.json",
                     REPO / "examples" / "detections.json")]
    if testdata is not None and (testdata / "ochuman" / "test_ochuman.json").is_file():
        found.append(Dataset("OCHuman test images", testdata / "ochuman", testdata / "ochuman" / "test_ochuman.json",
                             None))
    return found


def variants(ds: Dataset) -> list[tuple[str, list[str]]]:
    out = [("detector, 2 passes", []), ("detector, 1 pass", ["loop.iterations=1"])]
    if ds.detections is not None:
        out.append(("detections file, 1 pass", [f"job.given_boxes={ds.detections}",
                                                 f"job.given_boxes_images={ds.gt}", "loop.iterations=1"]))
    out.append(("ground-truth boxes, 1 pass", [f"job.given_boxes={ds.gt}", "loop.iterations=1"]))
    out.append(("ground-truth boxes, 2 passes", [f"job.given_boxes={ds.gt}"]))
    return out


def bmp_label(*args: str) -> None:
    script = Path(sys.executable).parent / "bmp-label"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "jobs.cli"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bmp-label {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testdata", default=None, help="a folder with ochuman/ (test_ochuman.json)")
    parser.add_argument("--config", default=str(REPO / "configs" / "lite_cpu.yaml"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lite_eval_") as tmp:
        for ds in datasets(None if args.testdata is None else Path(args.testdata)):
            for k, (name, overrides) in enumerate(variants(ds)):
                out = Path(tmp) / f"{len(rows)}_{k}"
                bmp_label("run", "--config", args.config, "--input", str(ds.images), "--output", str(out),
                          "--no-progress", *overrides)
                bmp_label("eval", str(out), "--gt", str(ds.gt), "--overall-only", "--iou-types", "keypoints",
                          "segm", "bbox")
                report = json.loads((out / "eval.json").read_text())["overall"]
                people = json.loads((out / "run.json").read_text())["counts"]
                rows.append((ds.name, name, report["keypoints"]["AP"], report["segm"]["AP"], report["bbox"]["AP"],
                             people["instances"]))
                print(f"{ds.name:22s} {name:30s} keypoints AP {rows[-1][2]:.3f}  segm AP {rows[-1][3]:.3f}  "
                      f"bbox AP {rows[-1][4]:.3f}  people {rows[-1][5]}", flush=True)
    print("\n| dataset | people from | keypoint AP | mask AP | box AP | people |\n|---|---|---|---|---|---|")
    for ds_name, name, kpt, segm, bbox, people in rows:
        print(f"| {ds_name} | {name} | {kpt:.3f} | {segm:.3f} | {bbox:.3f} | {people} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
