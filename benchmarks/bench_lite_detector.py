"""The lite person detector's time per image (CPU), next to the loop it feeds.

Usage:
    python benchmarks/bench_lite_detector.py                       # the demo images in examples/
    python benchmarks/bench_lite_detector.py --images DIR --repeat 5

Per image, interleaved (every variant on one image before the next image, the whole set ``--repeat``
times, so a busy machine slows all of them alike), seconds per image as min and median over repeats:

- ``model, whole image``: ``pose_detection.tflite`` once on the whole image, decoded (``PoseDetectionModel``);
- ``model, windows``: the same over the whole image and every window, merged (``detect_windows``);
- ``detector``: the ``Detector`` port (``BlazePersonDetector``): windows, then each region posed by BlazePose
  for its mask and tight box;
- ``loop, detector, 2 passes``: ``run_bmp`` with configs/lite_cpu.yaml as it is;
- ``loop, given boxes, 1 pass``: ``run_bmp`` on the ground-truth boxes (``--gt``), one pass.

Also the windows per image. Print ``/proc/loadavg`` next to any figure you quote.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmp_core.config import load_config  # noqa: E402
from bmp_core.loop import run_bmp  # noqa: E402
from bmp_core.models import build_models  # noqa: E402
from bmp_core.models.lite.detector import detect_windows  # noqa: E402
from bmp_core.models.lite.pose_detection import window_grid  # noqa: E402


def read_bgr(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])


def gt_boxes(gt_path: Path) -> dict[str, np.ndarray]:
    gt = json.loads(gt_path.read_text())
    names = {im["id"]: Path(im["file_name"]).name for im in gt["images"]}
    boxes: dict[str, list[list[float]]] = {name: [] for name in names.values()}
    for a in gt["annotations"]:
        if not a.get("iscrowd"):
            x, y, w, h = a["bbox"]
            boxes[names[a["image_id"]]].append([x, y, x + w, y + h])
    return {name: np.asarray(b, np.float32).reshape(-1, 4) for name, b in boxes.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(REPO / "examples" / "images"))
    parser.add_argument("--gt", default=str(REPO / "examples" / "ground_truth.json"),
                        help="COCO ground truth of the images: their boxes for the given-boxes loop")
    parser.add_argument("--config", default=str(REPO / "configs" / "lite_cpu.yaml"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    models = build_models(cfg.models)
    detector = models.detector
    one_pass = load_config(args.config, ["loop.iterations=1"]).loop
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = {p.name: read_bgr(p) for p in paths}
    boxes = gt_boxes(Path(args.gt))
    lite = cfg.models.lite
    variants = {
        "model, whole image": lambda im: detector.model.detect(np.ascontiguousarray(im[:, :, ::-1]),
                                                               lite.detector_score_thr),
        "model, windows": lambda im: detect_windows(detector.model, np.ascontiguousarray(im[:, :, ::-1]), lite),
        "detector": lambda im: detector.detect([im]),
        "loop, detector, 2 passes": lambda im: run_bmp(im, models, cfg.loop),
    }
    for image in images.values():  # warm-up (graph start, first allocation), untimed
        for run in variants.values():
            run(image)
    times: dict[str, list[float]] = {name: [] for name in [*variants, "loop, given boxes, 1 pass"]}
    for _ in range(args.repeat):
        totals = dict.fromkeys(times, 0.0)
        for name, image in images.items():
            for variant, run in variants.items():
                t0 = time.perf_counter()
                run(image)
                totals[variant] += time.perf_counter() - t0
            if name in boxes:
                t0 = time.perf_counter()
                run_bmp(image, models, one_pass, boxes_xyxy=boxes[name])
                totals["loop, given boxes, 1 pass"] += time.perf_counter() - t0
        for variant, total in totals.items():
            n = len(images) if variant != "loop, given boxes, 1 pass" else sum(n in boxes for n in images)
            times[variant].append(total / max(n, 1))
    windows = [len(window_grid(im.shape[1], im.shape[0], lite.detector_windows, lite.detector_overlap))
               for im in images.values()]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"{len(images)} images, windows per image {min(windows)}-{max(windows)} (with the whole image), "
          f"{args.repeat} repeats, load {' '.join(load)}")
    for variant, values in times.items():
        print(f"  {variant:28s} min {min(values):.3f} s/image   median {statistics.median(values):.3f} s/image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
