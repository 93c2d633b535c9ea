"""Loop speed: the reference-shaped call pattern vs ours, same models, same images, same boxes.

Usage:
    python benchmarks/bench_loop.py --config configs/tiny_random.yaml            # CPU, random weights
    python benchmarks/bench_loop.py --config configs/bmp_d3.yaml models.device=cuda  # real sizes on a GPU

Both paths get the same fixed instances: pass 0 uses given boxes (the ground-truth boxes of the test
images; images without annotations get the boxes of one detector pass, frozen before timing), so the
work is the same and outputs can be compared.

A busy machine must not be able to fake the ratio: the two paths are interleaved image by image (which
one goes first alternates), the whole set is repeated ``--repeat`` times (>= 3), and each path's
seconds per image are reported as the min and the median over repeats, in wall clock and in process
CPU (all threads). The speedup is the median over repeats of that repeat's reference / ours (both
halves of a repeat ran side by side, under the same load); the ratio of the minima and the CPU ratio
are printed next to it. The machine's CPU busy share during the timed runs (``/proc/stat``, every
process) is printed too: near 100% means other work competed with both paths. Also per-stage seconds
per image (min over repeats), agreement (keypoint L2 in px, mask IoU) and, last, ``speedup: X.XX``.
``--compare-precision`` adds each speed option (bf16, fp16, TF32, torch.compile) vs fp32 on CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_scale import CpuSampler
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
        if not ann_file.is_file():
            continue  # a plain clone's demo set has only coco/
        data = json.loads(ann_file.read_text())
        names = {im["id"]: im["file_name"] for im in data["images"]}
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            out.setdefault(Path(names[ann["image_id"]]).name, []).append([x, y, x + w, y + h])
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def compare(ref: list, ours: list) -> tuple[float, float]:
    """Max keypoint L2 (px, over keypoints with score > 0.3) and min mask IoU across all instances."""
    worst_l2, worst_iou = 0.0, 1.0
    for a, b in zip(ref, ours, strict=True):
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


def stage_mins(runs: list[list]) -> dict[str, float]:
    """Per stage: the min over repeats of that repeat's mean seconds per image."""
    keys = runs[0][0].timings_s.keys()
    return {k: min(float(np.mean([r.timings_s[k] for r in run])) for run in runs) for k in keys}


def interleaved(paths: dict, num_images: int, repeat: int) -> tuple[dict, dict, dict]:
    """Run ``paths[name](i)`` for every image, both paths image by image, ``repeat`` times.

    Returns, per path: wall seconds per image of each repeat, process CPU seconds per image of each
    repeat, and the results of each repeat.
    """
    names = list(paths)
    wall = {n: [0.0] * repeat for n in names}
    cpu = {n: [0.0] * repeat for n in names}
    results: dict[str, list[list]] = {n: [[] for _ in range(repeat)] for n in names}
    for r in range(repeat):
        for i in range(num_images):
            for name in names if (r + i) % 2 == 0 else names[::-1]:  # who goes first alternates
                t0, c0 = time.perf_counter(), time.process_time()
                results[name][r].append(paths[name](i))
                wall[name][r] += (time.perf_counter() - t0) / num_images
                cpu[name][r] += (time.process_time() - c0) / num_images
    return wall, cpu, results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny_random.yaml"))
    parser.add_argument("--testdata", default=str(DEFAULT_TESTDATA), help="folder with coco/ and ochuman/")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="images per batch in --compare-precision's runs")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed repeats of both paths, interleaved (>= 3)")
    parser.add_argument("--images", type=int, default=0, help="use only the first N test images (0: all 8)")
    parser.add_argument("--compare-precision", action="store_true",
                        help="also run our path with each speed option (bf16, fp16, tf32, compile) and "
                             "report its agreement with fp32 (CUDA only; skipped on CPU)")
    parser.add_argument("overrides", nargs="*", help="config key.path=value overrides")
    args = parser.parse_args(argv)
    if args.repeat < 3:
        parser.error("--repeat must be at least 3: a min and a median of fewer runs say little")

    cfg = load_config(args.config, args.overrides)
    testdata = Path(args.testdata)
    paths = sorted((testdata / "ochuman").glob("*.jpg")) + sorted((testdata / "coco").glob("*.jpg"))
    paths = paths[: args.images or None]
    images = [read_bgr(p) for p in paths]
    models = build_models(cfg.models)
    slow = reference_shaped(models)

    known = gt_boxes(testdata)
    boxes = []
    for path, image in zip(paths, images, strict=True):
        if path.name in known:
            boxes.append(known[path.name])
        else:  # freeze one detector pass so both paths see the same instances
            probe = run_bmp(image, models, dataclasses.replace(cfg.loop, iterations=1))
            boxes.append(probe.instances.boxes_xyxy)

    runners = {
        "reference": lambda i: run_bmp(images[i], slow, cfg.loop, boxes_xyxy=boxes[i]),
        "ours": lambda i: run_bmp_batch([images[i]], models, cfg.loop, [boxes[i]])[0],
    }
    for fn in runners.values():
        fn(0)  # warm-up (lazy init, allocator, cudnn autotune)
    with CpuSampler() as sampler:
        t_start = time.time()
        wall, cpu, results = interleaved(runners, len(images), args.repeat)
        busy = sampler.busy_share(t_start, time.time())

    device = cfg.models.device
    num_boxes = sum(len(b) for b in boxes)
    print(f"config {args.config} | device {device} | {len(images)} images, {num_boxes} given boxes,"
          f" {cfg.loop.iterations} iterations | interleaved image by image, {args.repeat} repeats | "
          f"machine CPU busy {'n/a' if busy is None else f'{100 * busy:.0f}%'} of {os.cpu_count()} cores")
    for name in runners:
        stages = stage_mins(results[name])
        line = " ".join(f"{k} {v:.3f}" for k, v in stages.items() if k != "total" and v >= 0.0005)
        print(f"{name:9s}: s/image min {min(wall[name]):.3f} median {statistics.median(wall[name]):.3f} "
              f"(CPU min {min(cpu[name]):.3f} median {statistics.median(cpu[name]):.3f}) | per-stage s/image "
              f"(min over repeats): {line}")
    l2, iou = compare(results["reference"][-1], results["ours"][-1])
    print(f"agreement: max keypoint L2 {l2:.4f} px, min mask IoU {iou:.4f}")
    ratios = [a / b for a, b in zip(wall["reference"], wall["ours"], strict=True)]
    cpu_ratios = [a / b for a, b in zip(cpu["reference"], cpu["ours"], strict=True)]
    print(f"ratio per repeat (wall): {' '.join(f'{r:.2f}' for r in ratios)} | ratio of minima "
          f"{min(wall['reference']) / min(wall['ours']):.2f} | CPU ratio (median) "
          f"{statistics.median(cpu_ratios):.2f}")
    if args.compare_precision:
        ours_s = statistics.median(wall["ours"]) * len(images)
        compare_options(cfg, images, boxes, results["ours"][-1], ours_s, args)
    print(f"speedup: {statistics.median(ratios):.2f}")


# fp16 keeps SAM in bf16: fp16 SAM overflows to NaN scores, and the config refuses it (models.segmenter.precision).
OPTIONS = {"bf16": ["models.precision=bf16"], "fp16": ["models.precision=fp16", "models.segmenter.precision=bf16"],
           "tf32": ["models.tf32=true"], "compile": ["models.compile=true"]}


def compare_options(cfg, images: list, boxes: list, fp32: list, fp32_s: float, args) -> None:
    """Our path with each speed option vs fp32: images/s and agreement (keypoint L2, mask IoU)."""
    if cfg.models.kind != "bmp":
        print(f"compare-precision: skipped (models.kind={cfg.models.kind}: the options are for the torch "
              "models)")
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
        run_batched(images, boxes, models, opt_cfg.loop, args.batch_size)  # warm-up (compiles here)
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
