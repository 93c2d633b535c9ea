"""One command for a lent GPU: CUDA tests, the real-size loop in fp32 and with each speed option, a job.

Usage:
    python benchmarks/gpu_check.py                      # on a GPU node (one H200: a few minutes, < 8)
    python benchmarks/gpu_check.py --out gpu_check.json # also write the results as JSON
    python benchmarks/gpu_check.py --dry-run            # the same steps on CPU, tiny models and inputs (CI)

Steps (each one's failure is recorded and the others still run; exit status 1 if any failed):

1. device: what torch resolves ``auto`` to, with torch's reason when CUDA is unusable (the check
   stops there, except under ``--dry-run``), the CUDA build, driver, GPU and torch threads.
2. tests: ``pytest tests/models -k "cuda or gpu"`` (the CUDA tests, and the device tests).
3. loop: ``configs/bmp_d3.yaml``'s architectures at real size (RTMDet-Ins-L, MaskPose-b, SAM 2.1 b+)
   with random weights (no checkpoint is downloaded), person-only detector head and zero keypoint
   thresholds (as configs/tiny_random.yaml: random heatmaps would otherwise prompt nothing, and SAM
   would never run), on the OCHuman + COCO test images, their ground-truth boxes given to pass 0
   (``benchmarks/bench_loop.py``'s functions). fp32 first, then each speed option of bench_loop
   (bf16, TF32, compile; fp16 is not a supported SAM precision) with its agreement with fp32: max
   keypoint L2 in px over keypoints scoring > 0.3 and min mask IoU. Per stage images/s and the GPU
   memory peak.
4. v2: ``configs/bmp_v2.yaml``'s architectures (PMPose-b, SAM-pose2seg = SAM 2.1 b+) the same way, fp32
   only ("loop v2 fp32"), then "pose v1 vs v2": ``benchmarks/bench_pose_v2.py`` at size b (MaskPose-b vs
   PMPose-b): ms per image of the pose port, network, head and decoding, v2/v1 (8 people, 3 runs).
5. job: ``run_job`` on ``--job-images`` images (bench_job.py's symlinked input), one worker per GPU
   (one on this node), same models; dispatch-phase and end-to-end images/s and the worker's start line.

``--dry-run``: the same code on CPU with tiny inputs: the loop on configs/tiny_random.yaml and
configs/tiny_random_v2.yaml, pose v1 vs v2 at size s with 2 people and one run (SAM at
512 px, 2 detections per pass, built once, no warm-up run) on one image scaled to 320 px wide, a
4-image job with the fake models, only tests/models/test_device.py. The speed options are no-ops on
CPU, so their agreement is exact.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_job  # benchmarks/ is not a package: imported from its folder, put on sys.path above
import bench_loop

from bmp_core.config import BmpConfig, load_config

# Random weights at the published sizes: no download, and every stage gets data (see the doc).
REAL_SIZE_RANDOM = (
    "models.detector.checkpoint=null",
    "models.pose.checkpoint=null",
    "models.segmenter.checkpoint=null",
    "models.detector.num_classes=1",
    "loop.pose_nms.keypoint_thr=0.0",
    "loop.prompt.confidence_thr=0.0",
    "loop.prompt.visibility_thr=0.0",
)
# Dry run: the tiny random models on CPU, SAM at 512 px (its encoder is most of a CPU run's time),
# at most 2 detections per pass; the job runs the fake models (the same models code as the loop's,
# on tiny_random it would cost a second model build and seconds per image in the Ray worker).
DRY_RUN = ("models.device=cpu", "models.segmenter.image_size=512", "models.detector.max_per_img=2")
DRY_RUN_JOB = (REPO / "configs" / "fake.yaml", ("models.fake.num_people=2",))
SPEED_OPTIONS = ("bf16", "tf32", "compile")
STAGES = ("detect", "pose", "segment_prepare", "segment")


@dataclasses.dataclass
class StepResult:
    """One row of the summary table (and one entry of the JSON)."""

    step: str
    ok: bool = True
    images_per_s: float | None = None
    stage_images_per_s: dict[str, float] = dataclasses.field(default_factory=dict)
    gpu_peak_gib: float | None = None
    agreement: str = ""
    detail: str = ""
    seconds: float = 0.0


def _run_step(results: list[StepResult], name: str, fn: Callable[[StepResult], None]) -> None:
    row = StepResult(name)
    t0 = time.perf_counter()
    try:
        fn(row)
    except Exception as err:  # noqa: BLE001 - record it; the remaining steps still tell something
        row.ok = False
        row.detail = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        traceback.print_exc()
    row.seconds = time.perf_counter() - t0
    results.append(row)
    print(
        f"[gpu_check] {name}: {'ok' if row.ok else 'FAILED'} ({row.seconds:.1f} s) {row.detail}", flush=True
    )


def _torch() -> Any:
    import torch

    return torch


def _reset_peak(device_type: str) -> None:
    torch = _torch()
    if device_type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device_type: str) -> float | None:
    torch = _torch()
    if device_type != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def _free(device_type: str) -> None:
    gc.collect()
    if device_type == "cuda":
        _torch().cuda.empty_cache()


def step_device(row: StepResult, dry_run: bool) -> str:
    """Describe the device; returns its type. Without a usable GPU (and not a dry run) this fails."""
    from bmp_core.models.device import cuda_unavailable_reason, describe_device, resolve_device

    reason = cuda_unavailable_reason()
    device = resolve_device("cpu" if dry_run else "auto", gpu_assigned=not dry_run)
    info = describe_device(device)
    row.detail = info.summary() + ("" if reason is None else f" | CUDA unusable: {reason}")
    return device.type


def step_tests(row: StepResult, timeout_s: float, dry_run: bool) -> None:
    # Dry run: only the device tests' module (collecting all of tests/models imports the whole stack).
    where = "tests/models/test_device.py" if dry_run else "tests/models"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", where, "-k", "cuda or gpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    row.detail = lines[-1] if lines else proc.stderr.strip()[-300:]
    row.ok = proc.returncode == 0
    if not row.ok:
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")


def _inputs(testdata: Path, dry_run: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The test images and their pass-0 boxes (ground truth; a centred box where there is none)."""
    paths = sorted((testdata / "ochuman").glob("*.jpg")) + sorted((testdata / "coco").glob("*.jpg"))
    known = bench_loop.gt_boxes(testdata)
    images, boxes = [], []
    for path in paths[:1] if dry_run else paths:
        image = bench_loop.read_bgr(path)
        b = known.get(path.name)
        if b is None:
            h, w = image.shape[:2]
            b = np.float32([[w * 0.3, h * 0.1, w * 0.7, h * 0.9]])
        if dry_run and image.shape[1] > 320:  # tiny inputs: downscale image and boxes alike
            import cv2

            scale = 320 / image.shape[1]
            image = cv2.resize(image, (320, round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            b = (b * scale).astype(np.float32)
        images.append(image)
        boxes.append(b)
    return images, boxes


def step_loop(
    rows: list[StepResult],
    cfg_path: Path,
    overrides: list[str],
    images: list[np.ndarray],
    boxes: list[np.ndarray],
    repeat: int,
    batch_size: int,
    device_type: str,
    options: tuple[str, ...] = SPEED_OPTIONS,
    warm_up: bool = True,
    name: str = "loop",
) -> None:
    """fp32, then each speed option: images/s per stage, GPU peak, agreement with fp32.

    ``warm_up``: one untimed run first (lazy init, cuDNN autotuning, compilation); the dry run
    skips it, its timings mean nothing.
    """
    from bmp_core.models import build_models

    baseline: list[Any] = []
    built: dict[str, Any] = {}
    for variant in ("fp32", *options):

        def run(row: StepResult, variant: str = variant) -> None:
            cfg = load_config(
                cfg_path, [*overrides, *([] if variant == "fp32" else bench_loop.OPTIONS[variant])]
            )
            # On CPU every speed option is a no-op (autocast, TF32 and compile apply on CUDA only), so
            # the models would be identical: build them once (the dry run's cost is mostly builds).
            models = built.get("cpu") or build_models(cfg.models)
            if device_type == "cpu":
                built["cpu"] = models
            try:
                if warm_up:  # compilation happens here
                    bench_loop.run_batched(images, boxes, models, cfg.loop, batch_size)
                _reset_peak(device_type)
                t0 = time.perf_counter()
                for _ in range(repeat):
                    got = bench_loop.run_batched(images, boxes, models, cfg.loop, batch_size)
                seconds = (time.perf_counter() - t0) / repeat
            finally:
                del models
                _restore_tf32_defaults()
            row.gpu_peak_gib = _peak_gib(device_type)
            row.images_per_s = len(images) / seconds
            stages = bench_loop.stage_mins([got])  # one run: its mean seconds per image
            row.stage_images_per_s = {k: 1.0 / stages[k] for k in STAGES if stages.get(k, 0) > 0}
            instances = sum(len(r.instances) for r in got)
            row.detail = (
                f"{len(images)} images, {instances} instances, batch {batch_size}, {repeat} timed runs"
            )
            if variant == "fp32":
                baseline[:] = got
            elif baseline:
                l2, iou = bench_loop.compare(baseline, got)
                row.agreement = f"kpt L2 <= {l2:.3g} px, mask IoU >= {iou:.4f}"
            _free(device_type)

        _run_step(rows, f"{name} {variant}", run)


def step_pose_v2(row: StepResult, device_type: str, dry_run: bool) -> None:
    """BMP v2's pose cost next to v1's (bench_pose_v2.py): size b and 8 people, or s and 2 when dry."""
    import bench_pose_v2

    size, people, repeat = ("s", 2, 1) if dry_run else ("b", 8, 3)
    measured = bench_pose_v2.measure(size, device_type, repeat, people)
    estimate = next(t2 for name, _, t2 in measured if name == "estimate")
    row.images_per_s = 1.0 / min(estimate)
    row.stage_images_per_s = {"pose": row.images_per_s}
    row.detail = f"size {size}, {people} people, {repeat} runs: " + bench_pose_v2.summary(measured)
    _free(device_type)


def _restore_tf32_defaults() -> None:
    """TF32 is process-wide: back to torch's defaults before the next variant (as bench_loop does)."""
    torch = _torch()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True


def step_job(row: StepResult, cfg: BmpConfig, testdata: Path, num_images: int) -> None:
    from jobs.ray_runner import RunOptions, run_job

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as tmp:
        bench_job.make_input(testdata, Path(tmp) / "in", num_images)
        run = run_job(cfg, RunOptions(str(Path(tmp) / "in"), str(Path(tmp) / "out"), progress=False))
    counts, t = run.counts, run.timings_s
    row.images_per_s = run.throughput_images_per_s
    worker = run.workers[0].summary if run.workers else "none"
    row.detail = (
        f"{counts.images_ok} ok / {counts.images_error} errors of {num_images}, "
        f"{len(run.workers)} worker(s), end to end {run.throughput_images_per_s_wall:.2f} images/s "
        f"(workers start {t.workers_start:.1f} s, wall {t.wall:.1f} s); worker: {worker}"
    )
    row.ok = counts.images_error == 0 and counts.images_ok == num_images


def format_summary(rows: list[StepResult]) -> str:
    """The one summary table: images/s end to end and per stage, GPU peak, agreement, status."""
    header = [
        "step",
        "status",
        "images/s",
        *(f"{s} img/s" for s in STAGES),
        "GPU peak GiB",
        "agreement vs fp32",
        "seconds",
    ]
    table = [header]
    for r in rows:
        table.append(
            [
                r.step,
                "ok" if r.ok else "FAILED",
                "-" if r.images_per_s is None else f"{r.images_per_s:.2f}",
                *(f"{r.stage_images_per_s[s]:.1f}" if s in r.stage_images_per_s else "-" for s in STAGES),
                "-" if r.gpu_peak_gib is None else f"{r.gpu_peak_gib:.2f}",
                r.agreement or "-",
                f"{r.seconds:.1f}",
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines += [f"{r.step}: {r.detail}" for r in rows if r.detail]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models and inputs: the same steps")
    parser.add_argument(
        "--testdata", default=str(bench_loop.DEFAULT_TESTDATA), help="folder with coco/, ochuman/"
    )
    parser.add_argument(
        "--job-images", type=int, default=None, help="images of the job (default 200; dry: 4)"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed loop runs per variant (default 2; dry: 1)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per run_bmp_batch call in the loop")
    parser.add_argument("--skip-tests", action="store_true", help="skip step 2 (pytest)")
    parser.add_argument(
        "--options",
        nargs="*",
        default=list(SPEED_OPTIONS),
        choices=list(bench_loop.OPTIONS),
        help="speed options compared with fp32 in step 3 (default: %(default)s)",
    )
    parser.add_argument("--tests-timeout", type=float, default=240.0)
    parser.add_argument("--out", default=None, help="also write the results here as JSON")
    parser.add_argument("overrides", nargs="*", help="config key.path=value overrides (both configs)")
    args = parser.parse_args(argv)

    testdata = Path(args.testdata)
    if args.dry_run:
        cfg_path, overrides = REPO / "configs" / "tiny_random.yaml", [*DRY_RUN, *args.overrides]
        job_images, repeat = args.job_images or 4, args.repeat or 1
    else:
        cfg_path, overrides = REPO / "configs" / "bmp_d3.yaml", [*REAL_SIZE_RANDOM, *args.overrides]
        job_images, repeat = args.job_images or 200, args.repeat or 2
    rows: list[StepResult] = []
    device_type = ["cpu"]

    def device(row: StepResult) -> None:
        device_type[0] = step_device(row, args.dry_run)

    _run_step(rows, "device", device)
    if rows[-1].ok:
        if not args.skip_tests:
            _run_step(rows, "tests", lambda row: step_tests(row, args.tests_timeout, args.dry_run))
        images, boxes = _inputs(testdata, args.dry_run)
        step_loop(
            rows,
            cfg_path,
            overrides,
            images,
            boxes,
            repeat,
            args.batch_size,
            device_type[0],
            tuple(args.options),
            warm_up=not args.dry_run,
        )
        v2_path = REPO / "configs" / ("tiny_random_v2.yaml" if args.dry_run else "bmp_v2.yaml")
        step_loop(
            rows, v2_path, overrides, images, boxes, repeat, args.batch_size, device_type[0], (),
            warm_up=not args.dry_run, name="loop v2",
        )
        _run_step(rows, "pose v1 vs v2", lambda row: step_pose_v2(row, device_type[0], args.dry_run))
        job_cfg_path, job_overrides = DRY_RUN_JOB if args.dry_run else (cfg_path, overrides)
        job_cfg = load_config(job_cfg_path, [*job_overrides, f"job.shard_size={max(1, job_images // 4)}"])
        _run_step(rows, "job", lambda row: step_job(row, job_cfg, testdata, job_images))
    print(format_summary(rows))
    if args.out:
        Path(args.out).write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
