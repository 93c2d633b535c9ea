"""The loop's and the worker's own CPU per image, with zero-cost models.

Usage:
    python benchmarks/bench_overhead.py              # 8 test images + synthetic 1080p with 5/10/20 people
    python benchmarks/bench_overhead.py --quick      # 2 test images + one 1080p image with 20 people, 1 run

A GPU runs BMP's models in some 20-25 ms per image; whatever the loop does on the CPU between model
calls must stay well below that or the GPU waits. To measure only that, every image is run once with
the fake models while their outputs are recorded (``ModelRecording``), then the loop is timed on the
recording replayed: the same calls get the same outputs back at no cost, so what is left is the loop's
own work (the detector's person/score/NMS filter, pose-NMS, prompt selection, exclusivity, the new
rows' masks, IoU and boxes, the next pass's masked-out image) plus what the worker does with a result
(COCO RLE of the masks inside their boxes, the Parquet ``instances`` table). Only the replays' timings
are kept, as a worker drops a result once written, so the loop lends that result's mask memory to a
later replay (``bmp_core.mask_store.MaskStorePool``); the recorded run pays the fresh pages once, untimed.
Cases: the test images with the default fake detector (8 candidate people, COCO-size images) and
synthetic 1920x1080 images with a crowd of 5, 10 and 20 people (``CrowdDetector``: all survive box
NMS).

Per case, ms per image by stage (the loop's own stage timings, read from the thread's CPU clock; min
over ``--repeat`` runs of each image), the loop's CPU time (``time.thread_time``: what other processes
take of the cores does not count, what they take of the memory bandwidth does), RLE, the Parquet table,
and the maximum images/s one worker core sustains on this work alone (1000 / (loop + table)). "people"
is the instances found per image (the test images' fake detector places 8 candidates, some overlap).
The machine's CPU busy share during the run is printed (``/proc/stat``, all processes): on a shared
machine memory bandwidth is shared too, and these figures are upper bounds. Last line:
``overhead: X.X ms/image (COCO-size, 8 people), Y.Y ms/image (1080p, 20 people)``, loop + RLE.
Every replayed result is checked equal to the recorded run's (the replay is the same computation).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bmp_core.loop as bmp_loop
from benchmarks.bench_scale import CpuSampler
from bmp_core.config import LoopConfig
from bmp_core.loop import run_bmp
from bmp_core.ops.masks import windows_from_boxes
from bmp_core.ops.rle import encode_rle
from bmp_core.output.tables import instances_table
from bmp_core.ports import BmpModels
from bmp_core.testing.fakes import (
    CrowdDetector,
    FakePoseEstimator,
    FakeSegmenter,
    ModelRecording,
    build_fake_models,
)

DEFAULT_TESTDATA = REPO.parent / "shared" / "testdata"
# The loop's own stages (bmp_core.records.LOOP_STAGES without the model calls), in loop order.
LOOP_STAGES = ("filter", "pose_nms", "prompts", "exclusive", "masks", "mask_out")
COLUMNS = (*LOOP_STAGES, "loop", "rle", "table")


@dataclass
class CaseResult:
    """Per-image minima (ms) of one case, averaged over its images."""

    name: str
    images: int = 0
    people: int = 0
    ms: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in COLUMNS})

    def mean(self, column: str) -> float:
        return float(np.mean(self.ms[column])) if self.ms[column] else float("nan")


def read_bgr(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])


def synthetic_1080p(seed: int) -> np.ndarray:
    """A 1920x1080 noise image with no black pixel (the fakes treat black as blacked out)."""
    return np.random.default_rng(seed).integers(1, 256, (1080, 1920, 3), dtype=np.uint8)


def crowd_models(num_people: int, seed: int) -> BmpModels:
    return BmpModels(CrowdDetector(num_people, seed), FakePoseEstimator(), FakeSegmenter())


def _min_time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Min CPU seconds of this thread over ``repeat`` calls, and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.thread_time()
        out = fn()
        best = min(best, time.thread_time() - t0)
    return best, out


def measure_image(case: CaseResult, image: np.ndarray, models: BmpModels, cfg: LoopConfig,
                  repeat: int) -> None:
    """Record ``image`` once with ``models``, then time the loop, RLE and table on the replay."""
    recording = ModelRecording(models)
    recorded = run_bmp(image, recording.models, cfg)
    stages = {k: float("inf") for k in LOOP_STAGES}
    timings = []

    def replayed() -> object:
        # Only the timings are kept: a worker drops a result once its table is written, and so the
        # loop may reuse that result's mask memory for a later image (bmp_core/mask_store.py MaskStorePool).
        result = run_bmp(image, recording.replay(), cfg)
        timings.append(result.timings_s)
        return result

    # The loop times its stages with time.perf_counter; here they are read from this thread's CPU clock
    # instead, so that on a busy machine the stages add up to the loop's CPU time, not to its waiting.
    clock = bmp_loop.time
    bmp_loop.time = types.SimpleNamespace(perf_counter=time.thread_time)
    try:
        loop_s, result = _min_time(replayed, repeat)
    finally:
        bmp_loop.time = clock
    for t in timings:
        for k in LOOP_STAGES:
            stages[k] = min(stages[k], t.get(k, 0.0))
    _check_same(recorded, result)
    # As the worker's table does (bmp_core/output/tables.py): inside the masks' tight boxes only.
    windows = windows_from_boxes(result.instances.mask_boxes_xyxy)
    rle_s, _ = _min_time(lambda: encode_rle(result.instances.masks, windows), repeat)
    table_s, _ = _min_time(lambda: instances_table([0], [result]), repeat)
    for k in LOOP_STAGES:
        case.ms[k].append(1000 * stages[k])
    case.ms["loop"].append(1000 * loop_s)
    case.ms["rle"].append(1000 * rle_s)
    case.ms["table"].append(1000 * table_s)
    case.images += 1
    case.people += len(result.instances)


def _check_same(a, b) -> None:
    for name in a.instances.__dataclass_fields__:
        x, y = getattr(a.instances, name), getattr(b.instances, name)
        if not (x.shape == y.shape and x.dtype == y.dtype and x.tobytes() == y.tobytes()):
            raise AssertionError(f"replayed result differs from the recorded run in {name}")


def main(argv: list[str] | None = None) -> list[CaseResult]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testdata", default=str(DEFAULT_TESTDATA), help="folder with coco/ and ochuman/")
    parser.add_argument("--repeat", type=int, default=5, help="timed replays per image (the minimum counts)")
    parser.add_argument("--crowds", type=int, nargs="*", default=[5, 10, 20], help="people per 1080p image")
    parser.add_argument("--synthetic-images", type=int, default=3, help="1080p images per crowd size")
    parser.add_argument("--quick", action="store_true",
                        help="2 test images, one 1080p image of 20 people, 1 run each")
    parser.add_argument("--no-adapters", action="store_true",
                        help="skip the real adapters' CPU stages (benchmarks/adapter_stages.py, ~30 s, needs the "
                             "model stack)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.crowds, args.synthetic_images = 1, [20], 1
    cfg = LoopConfig()
    testdata = Path(args.testdata)
    paths = sorted((testdata / "coco").glob("*.jpg")) + sorted((testdata / "ochuman").glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no test images under {testdata}/coco or {testdata}/ochuman (--testdata)")
    if args.quick:
        paths = paths[:2]

    warm = run_bmp(read_bgr(paths[0]), build_fake_models(), cfg)
    instances_table([0], [warm])  # pyarrow's lazy imports, once, before anything is timed
    cases = []
    with CpuSampler() as cpu:
        t_start = time.time()
        coco = CaseResult("COCO-size, 8 people")
        for path in paths:
            measure_image(coco, read_bgr(path), build_fake_models(), cfg, args.repeat)
        cases.append(coco)
        for n in args.crowds:
            crowd = CaseResult(f"1080p, {n} people")
            for k in range(args.synthetic_images):
                measure_image(crowd, synthetic_1080p(k), crowd_models(n, k), cfg, args.repeat)
            cases.append(crowd)
        t_end = time.time()
    busy = cpu.busy_share(t_start, t_end)

    print(f"bench_overhead: {len(paths)} test images + {args.synthetic_images} synthetic 1920x1080 per "
          "crowd, "
          f"{cfg.iterations} iterations, min of {args.repeat} replays per image | machine CPU busy "
          f"{'n/a' if busy is None else f'{100 * busy:.0f}%'} of {os.cpu_count()} cores")
    header = " ".join(f"{c:>9s}" for c in COLUMNS)
    print(f"{'ms/image':24s} {'people':>6s} {header} {'loop+rle':>9s} {'worker':>7s} {'img/s/core':>10s}")
    for c in cases:
        worker_ms = c.mean("loop") + c.mean("table")
        row = " ".join(f"{c.mean(col):9.2f}" for col in COLUMNS)
        print(f"{c.name:24s} {c.people / max(c.images, 1):6.1f} {row} {c.mean('loop') + c.mean('rle'):9.2f} "
              f"{worker_ms:7.2f} {1000 / worker_ms:10.0f}")
    print("(stages: the loop's own, CPU ms; loop: all its CPU time, stages and bookkeeping; table: the "
          "Parquet instances table, its RLE included; worker = loop + table; img/s/core = 1000 / worker)")
    if not args.no_adapters:
        _print_adapter_stages(args.quick)
    by_name = {c.name: c for c in cases}
    coco_ms = by_name["COCO-size, 8 people"]
    crowd = by_name.get("1080p, 20 people")
    crowd_text = "n/a" if crowd is None else f"{crowd.mean('loop') + crowd.mean('rle'):.1f}"
    print(f"overhead: {coco_ms.mean('loop') + coco_ms.mean('rle'):.1f} ms/image (COCO-size, 8 people), "
          f"{crowd_text} ms/image (1080p, 20 people)")
    return cases


def _print_adapter_stages(quick: bool) -> None:
    """The worker's CPU stages inside the real adapters (issue 18's items), ours vs the old way, with
    random weights on CPU; a line saying why when the model stack is not installed."""
    from benchmarks import adapter_stages

    missing = adapter_stages.missing_stack()
    if missing is not None:
        print(f"adapter stages: skipped ({missing})")
        return
    rows = adapter_stages.adapter_stage_rows(repeat=1 if quick else 5, small_only=quick)
    print("adapter stages (the real adapters' CPU work per image, random weights, wall ms, min of runs):")
    print(adapter_stages.format_table(rows))


if __name__ == "__main__":
    main()
