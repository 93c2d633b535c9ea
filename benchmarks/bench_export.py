"""Export speed and memory: a synthetic output exported to COCO and YOLO pose.

Usage:
    python benchmarks/bench_export.py                     # 200,000 images of 5 people (the issue's size)
    python benchmarks/bench_export.py --images 20000 --sizes-ratio 4

A synthetic output (``tests/export_fixtures.write_synthetic_output``: 640x480 images, 5 people each,
box-shaped masks drawn from 32 pre-encoded RLEs, random scores and keypoints, shards of 256) is
written once per size; each export then runs in a fresh process (one core: ``taskset`` when present,
no progress bar) so its peak RSS is its own. Two sizes (``--images`` and ``--images / --sizes-ratio``)
show whether memory stays flat as the output grows. The policy used: min pose score 0.4, val 5%.
Target (issue 15): >= 2,000 images/s on one core, peak RSS < 1 GiB, flat.

Last line: ``export: X images/s, peak RSS Y MiB`` (the slower format's rate, the largest peak).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def child(fmt: str, src: str, dest: str) -> None:
    from bmp_core.output.export.policy import ExportPolicy
    from bmp_core.output.export.run import ExportOptions, export_output

    t0 = time.perf_counter()
    manifest = export_output(src, dest, fmt, ExportPolicy(min_pose_score=0.4, val_fraction=0.05),
                             ExportOptions(link="list"))
    seconds = time.perf_counter() - t0
    images = sum(manifest.counts.images.values())
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"format": fmt, "images": images, "seconds": seconds, "rss_mib": rss_mib}))


def run_child(fmt: str, src: str, dest: str) -> dict:
    cmd = [sys.executable, __file__, "--child", fmt, src, dest]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--sizes-ratio", type=int, default=4, help="also run --images / this (0: one size)")
    parser.add_argument("--formats", nargs="+", default=["coco", "yolo-pose"])
    parser.add_argument("--child", nargs=3, metavar=("FORMAT", "SRC", "DEST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from tests.export_fixtures import write_synthetic_output

    sizes = sorted({args.images // args.sizes_ratio, args.images} if args.sizes_ratio else {args.images})
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        for n in sizes:
            src = str(Path(tmp) / f"out_{n}")
            t0 = time.perf_counter()
            write_synthetic_output(src, n)
            print(f"synthetic output: {n} images x 5 people in {time.perf_counter() - t0:.1f} s", flush=True)
            for fmt in args.formats:
                r = run_child(fmt, src, str(Path(tmp) / f"{fmt}_{n}"))
                r["size"] = n
                results.append(r)
                print(f"  {fmt:10s} {n:>8d} images: {r['images'] / r['seconds']:8.0f} images/s, "
                      f"{r['seconds']:.1f} s, peak RSS {r['rss_mib']:.0f} MiB", flush=True)
                shutil.rmtree(Path(tmp) / f"{fmt}_{n}", ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True)
    largest = [r for r in results if r["size"] == sizes[-1]]
    rate = min(r["images"] / r["seconds"] for r in largest)
    rss = max(r["rss_mib"] for r in results)
    print(f"export: {rate:.0f} images/s, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
