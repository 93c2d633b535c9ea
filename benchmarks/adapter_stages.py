"""The real-model adapters' CPU-side stages (issue 18) against the ways they replaced, on CPU.

Usage:
    python benchmarks/adapter_stages.py               # COCO-size photo with 8 people + 1920x1080 with 20
    python benchmarks/adapter_stages.py --small-only  # the COCO-size case only
    python benchmarks/adapter_stages.py --repeat 3

One row per stage and case: ms of ours and of the old way (min over ``--repeat`` runs, wall clock, the
two interleaved run by run) and whether their outputs are identical (compared exactly: ``np.array_equal``
/ ``torch.equal``). The stages are the adapters' own code (``bmp_core/models``), with random weights and
only the parts each stage needs:

(a) ``pose crops``: ``MaskPoseEstimator.prepare_crops`` (each mask traced and blended only inside its
    box and its crop's source window) vs, per person, the outer polygons of the whole-image mask,
    ``cv2.addWeighted`` on the whole image, then the crop (the reference; ``_reference_crop`` in
    ``bmp_core.testing.pose_reference.whole_image_crop``);
(b) ``pose normalise``: ``normalize_on_device`` of the uint8 crops vs ``crops_to_tensor`` (numpy float32
    on the CPU) + upload. On CPU the upload costs nothing: the 4x fewer bytes it saves show on a GPU only;
(c) ``pose decode``: ``MaskPoseEstimator.decode`` (all instances in one pass) vs mmpose's UDP codec one
    instance at a time, on synthetic heatmaps (17 Gaussian peaks + noise per person);
(d) ``detector post-process``: RTMDet-Ins tiny's ``predict_by_feat`` with the adapter's keep filter
    (person, score > thr, before the masks are upsampled) + copy to host vs mmdet's own (every one of the
    top-40's masks upsampled and copied) + the loop's numpy filter. Same head outputs for both (the
    backbone runs once, untimed). The random head is set up like ``detector_3`` of
    tests/models/test_sam_detector_speed_paths.py (3 classes, partial masks), with class logits spread
    and lowered so that a few thousand anchors pass score_thr (not all 8400: NMS would dominate) and
    most of the 40 are people (37 and 28 of the cases' 40); ``thr`` keeps the case's number of people;
(e) ``SAM preprocess``: the uint8 upload + ``sam_input`` (resize to 1024 + normalise on the device) vs
    sam2's ``SAM2Transforms`` on the CPU + float32 upload; and ``SAM embeddings``: ``prepare_batch`` of two
    COCO-size images (one encoder call) vs ``SAM2ImagePredictor.set_image`` of each (SAM 2.1 hiera-t,
    1024). The encoder's input is always 1024x1024, so that row is measured once (small case), with at
    most ``ENCODER_REPEAT`` runs (some 1.6 s per image on 2 cores).

Cases: ``examples/images/000000000785.jpg`` (640x425) with 8 synthetic people, and a synthetic 1920x1080
image with 20 (boxes and masks drawn: an ellipse body with a hole, head, arm; some cross the border).
Last line: ``adapter_stages: R rows, all identical`` (exit 0) or the rows that are not (exit 1). Without
the model stack (torch, mmdet, mmpose, sam2, cv2) it prints one line and exits 0.

The stages and their parity checks live in tests/models/adapter_stages.py (test code: the model tests run
them); this file times and prints them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.models.adapter_stages import (  # noqa: E402  (the repository root on the path first)
    BEFORE,
    ENCODER_REPEAT,
    SMALL_CASE,
    STAGES,
    AdapterStageRow,
    adapter_stage_rows,
    missing_stack,
)

__all__ = ["BEFORE", "SMALL_CASE", "STAGES", "AdapterStageRow", "adapter_stage_rows", "format_table", "main",
           "missing_stack"]


def _proc_stat() -> tuple[int, int] | None:
    """The machine's (busy, total) CPU jiffies from /proc/stat; None where there is none (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def others_busy_share(start: tuple[int, int] | None, end: tuple[int, int] | None, own_cpu_s: float) -> float | None:
    """Share of all cores that OTHER processes kept busy between two ``_proc_stat`` readings, given this
    process's CPU seconds in between (the machine's busy time less ours)."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return max(0.0, ((end[0] - start[0]) / hz - own_cpu_s) / ((end[1] - start[1]) / hz))


def format_table(rows: list[AdapterStageRow]) -> str:
    lines = [f"{'stage':47s} {'case':28s} {'ours ms':>9s} {'before ms':>10s} {'x':>6s} {'identical':>9s}"
             "  before = "]
    for r in rows:
        lines.append(f"{r.stage:47s} {r.case:28s} {r.ours_ms:9.2f} {r.before_ms:10.2f} {r.speedup:6.2f} "
                     f"{'yes' if r.identical else 'NO':>9s}  {BEFORE[r.stage]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per stage and path (min counts)")
    parser.add_argument("--small-only", action="store_true", help="only the COCO-size case")
    args = parser.parse_args(argv)
    why = missing_stack()
    if why is not None:
        print(f"adapter_stages: skipped, no model stack ({why})")
        return 0
    import torch

    load_before, stat_before, cpu_before = os.getloadavg(), _proc_stat(), time.process_time()
    t0 = time.perf_counter()
    rows = adapter_stage_rows(args.repeat, small_only=args.small_only)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    others = others_busy_share(stat_before, _proc_stat(), time.process_time() - cpu_before)
    print(f"adapter_stages: CPU, {os.cpu_count()} cores, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, min of {args.repeat} runs (SAM encoder: "
          f"{min(args.repeat, ENCODER_REPEAT)}), wall ms | load average before "
          f"{' '.join(f'{v:.2f}' for v in load_before)}, after {' '.join(f'{v:.2f}' for v in load_after)}; "
          f"other processes kept {'n/a' if others is None else f'{100 * others:.0f}%'} of the cores busy; "
          f"{wall:.0f} s in all")
    print(format_table(rows))
    print("(x = before / ours; identical = outputs compared exactly, np.array_equal / torch.equal)")
    bad = [r for r in rows if not r.identical]
    if bad:
        print("adapter_stages: NOT identical: " + "; ".join(f"{r.stage} [{r.case}]" for r in bad))
        return 1
    print(f"adapter_stages: {len(rows)} rows, all identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
