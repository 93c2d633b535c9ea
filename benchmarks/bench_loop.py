"""Loop speed: the reference-shaped call pattern vs ours, same models, same images, same boxes.

Usage:
    python benchmarks/bench_loop.py --config configs/tiny_random.yaml            # CPU, random weights
    python benchmarks/bench_loop.py --config configs/bmp_d3.yaml models.device=cuda  # real sizes on a GPU

Both paths get the same fixed instances: pass 0 uses given boxes (the ground-truth boxes of the test
images; images without annotations get the boxes of one detector pass, frozen before timing), so the
work is the same and outputs can be compared. Prints per-stage seconds per image, images/s of each
path, their agreement (keypoint L2 in px, mask IoU) and, as the last line, ``speedup: X.XX``.
``--compare-precision`` adds each speed option (bf16, fp16, TF32, torch.compile) vs fp32 on CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmp_core.config import load_config
from bmp_core.loop import run_bmp, run_bmp_batch
from bmp_core.models import build_models
from bmp_core.ops.masks import mask_iou
from bmp_core.testing.reference_shaped import reference_shaped

DEFAULT_TESTDATA = REPO.parent / "shared" / "testdata"


def read_bgr(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])


def gt_boxes(testdata: Path) -> dict[str, np.ndarray]:
    """file name -> (N, 4) xyxy ground-truth person boxes from the test JSONs."""
    out: dict[str, list[list[float]]] = {}
    for ann_file in (testdata / "coco" / "test_coco.json", testdata / "ochuman" / "test_ochuman.json"):
        data = json.loads(ann_file.read_text())
        names = {im["id"]: im["file_name"] for im in data["images"]}
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            out.setdefault(Path(names[ann["image_id"]]).name, []).append([x, y, x + w, y + h])
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def compare(ref: list, ours: list) -> tuple[float, float]:
    """Max keypoint L2 (px, over keypoints with score > 0.3) and min mask IoU across all instances."""
    worst_l2, worst_iou = 0.0, 1.0
    for a, b in zip(ref, ours):
        ia, ib = a.instances, b.instances
        if len(ia) != len(ib):
            return float("inf"), 0.0
        if len(ia) == 0:
            continue
        confident = ia.keypoints[:, :, 2] > 0.3
        l2 = np.linalg.norm(ia.keypoints[:, :, :2] - ib.keypoints[:, :, :2], axis=-1)
        worst_l2 = max(worst_l2, float(l2[confident].max()) if confident.any() else 0.0)
        both_empty = ~ia.masks.any((1, 2)) & ~ib.masks.any((1, 2))
        ious = np.where(both_empty, 1.0, mask_iou(ia.masks, ib.masks))
        worst_iou = min(worst_iou, float(ious.min()))
    return worst_l2, worst_iou


def run_batched(images: list, boxes: list, models, loop_cfg, batch_size: int) -> list:
    """Our path: ``run_bmp_batch`` over batches of ``batch_size`` images."""
    out = []
    for i in range(0, len(images), batch_size):
        out += run_bmp_batch(images[i: i + batch_size], models, loop_cfg, boxes[i: i + batch_size])
    return out


def stage_means(results: list) -> dict[str, float]:
    keys = results[0].timings_s.keys()
    return {k: float(np.mean([r.timings_s[k] for r in results])) for k in keys}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny_random.yaml"))
    parser.add_argument("--testdata", default=str(DEFAULT_TESTDATA), help="folder with coco/ and ochuman/")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch in our path")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each path (after one warm-up)")
    parser.add_argument("--compare-precision", action="store_true",
                        help="also run our path with each speed option (bf16, fp16, tf32, compile) and report its "
                             "agreement with fp32 (CUDA only; skipped on CPU)")
    parser.add_argument("overrides", nargs="*", help="config key.path=value overrides")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.overrides)
    testdata = Path(args.testdata)
    paths = sorted((testdata / "ochuman").glob("*.jpg")) + sorted((testdata / "coco").glob("*.jpg"))
    images = [read_bgr(p) for p in paths]
    models = build_models(cfg.models)
    slow = reference_shaped(models)

    known = gt_boxes(testdata)
    boxes = []
    for path, image in zip(paths, images):
        if path.name in known:
            boxes.append(known[path.name])
        else:  # freeze one detector pass so both paths see the same instances
            probe = run_bmp(image, models, dataclasses.replace(cfg.loop, iterations=1))
            boxes.append(probe.instances.boxes_xyxy)
    num_instances = sum(len(b) for b in boxes)

    def reference_path() -> list:
        return [run_bmp(im, slow, cfg.loop, boxes_xyxy=b) for im, b in zip(images, boxes)]

    def our_path() -> list:
        return run_batched(images, boxes, models, cfg.loop, args.batch_size)

    timings = {}
    results = {}
    for name, fn in (("reference", reference_path), ("ours", our_path)):
        fn()  # warm-up (lazy init, allocator, cudnn autotune)
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            results[name] = fn()
        timings[name] = (time.perf_counter() - t0) / args.repeat

    device = cfg.models.device
    print(f"config {args.config} | device {device} | {len(images)} images, {num_instances} given boxes, "
          f"{cfg.loop.iterations} iterations")
    for name in ("reference", "ours"):
        stages = stage_means(results[name])
        line = " ".join(f"{k} {v:.3f}" for k, v in stages.items() if k != "total")
        print(f"{name:9s}: {timings[name] / len(images):.3f} s/image, {len(images) / timings[name]:.2f} images/s "
              f"| per-stage s/image: {line}")
    l2, iou = compare(results["reference"], results["ours"])
    print(f"agreement: max keypoint L2 {l2:.4f} px, min mask IoU {iou:.4f}")
    if args.compare_precision:
        compare_options(cfg, images, boxes, results["ours"], timings["ours"], args)
    print(f"speedup: {timings['reference'] / timings['ours']:.2f}")


OPTIONS = {"bf16": ["models.precision=bf16"], "fp16": ["models.precision=fp16"], "tf32": ["models.tf32=true"],
           "compile": ["models.compile=true"]}


def compare_options(cfg, images: list, boxes: list, fp32: list, fp32_s: float, args) -> None:
    """Our path with each speed option vs fp32: images/s and agreement (keypoint L2, mask IoU)."""
    if cfg.models.kind != "bmp":
        print(f"compare-precision: skipped (models.kind={cfg.models.kind}: the options are for the torch models)")
        return
    import torch

    from bmp_core.models.device import resolve_device

    if resolve_device(cfg.models.device).type != "cuda":
        print("compare-precision: skipped (the options apply on CUDA only; this run is on "
              f"{resolve_device(cfg.models.device)})")
        return
    if cfg.models.precision != "fp32" or cfg.models.tf32 or cfg.models.compile:
        print("compare-precision: skipped (the baseline must be fp32 without tf32/compile)")
        return
    for name, overrides in OPTIONS.items():
        opt_cfg = load_config(args.config, [*args.overrides, *overrides])
        models = build_models(opt_cfg.models)
        run_batched(images, boxes, models, opt_cfg.loop, args.batch_size)  # warm-up (compilation happens here)
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            got = run_batched(images, boxes, models, opt_cfg.loop, args.batch_size)
        seconds = (time.perf_counter() - t0) / args.repeat
        l2, iou = compare(fp32, got)
        print(f"option {name:8s}: {len(images) / seconds:.2f} images/s ({fp32_s / seconds:.2f} x fp32) | "
              f"vs fp32: max keypoint L2 {l2:.4f} px, min mask IoU {iou:.4f}")
        # tf32 is process-wide: back to the defaults before the next option.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True
        del models


if __name__ == "__main__":
    main()
