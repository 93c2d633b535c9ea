"""Scale of the job machinery: actors on the local Ray, and planning huge listings.

Usage:
    python benchmarks/bench_scale.py                       # actors 1,2,4,8,16 + plans of 1M and 10M
    python benchmarks/bench_scale.py --actors 1 4 --plan-sizes 1000000

Actors: fake models with a fixed simulated latency per image (``models.fake.latency_ms`` per detector
pass, its own compute included, so 2 passes x 25 ms = 50 ms per image) on tiny images, so what is
measured is the job's own overhead: listing, dispatch, reading, the loop's ops, RLE, Parquet
commits, progress. Ideal throughput = actors / latency, measured over the dispatch phase (run.json
``throughput_images_per_s``; workers' start and the end-to-end rate are printed too). Driver CPU per
image = the driver process's CPU seconds / images. Machine CPU busy = the share of all cores in use
(``/proc/stat``, every process) during the dispatch phase: near 100% means the machine, not the
job, is the limit (16 actors of 50 ms need 16 cores' worth of CPU slack on a real cluster, not 2).

Planning: a synthetic sorted listing of N ``s3://`` URIs built in Arrow, then what the driver does
before labeling (plan digest, listing table, shard slicing), each size in a fresh process so the peak
RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_images(folder: Path, count: int) -> None:
    """``count`` small distinct PNGs (64x48) in ``folder``."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(1, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"img_{i:06d}.png")


class CpuSampler:
    """Samples the machine's busy and total CPU jiffies (``/proc/stat``) every ``period_s`` in a thread;
    ``busy_share(t0, t1)`` is the share of all cores in use between two wall-clock times."""

    def __init__(self, period_s: float = 0.2) -> None:
        import threading

        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True)

    @staticmethod
    def read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            return None  # not Linux: no machine-wide figure
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            jiffies = self.read()
            if jiffies:
                self.samples.append((time.time(), *jiffies))

    def __enter__(self) -> CpuSampler:  # noqa: PYI034 - a plain class, never subclassed
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def busy_share(self, t0: float, t1: float) -> float | None:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2 or inside[-1][2] == inside[0][2]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2])


def run_actors(num_actors: int, images: Path, latency_ms: float, shard_size: int) -> dict[str, float]:
    from bmp_core.config import config_from_dict
    from jobs.ray_runner import RunOptions, run_job

    cfg = config_from_dict({}, [
        "models.kind=fake", "models.device=cpu", f"models.fake.latency_ms={latency_ms}", "models.fake.num_people=2",
        f"job.shard_size={shard_size}", "job.batch_size=4", "job.min_image_side=1",
    ])
    with tempfile.TemporaryDirectory() as out, CpuSampler() as cpu:
        cpu0 = time.process_time()
        run = run_job(cfg, RunOptions(str(images), out, num_workers=num_actors, progress=False))
        driver_cpu = time.process_time() - cpu0
    n = run.counts.images
    per_image_s = 2 * latency_ms / 1000.0  # two detector passes per image
    ideal = num_actors / per_image_s
    measured = run.throughput_images_per_s
    return {"actors": num_actors, "images": n, "images_per_s": measured, "ideal_images_per_s": ideal,
            "vs_ideal": measured / ideal, "driver_cpu_ms_per_image": 1000 * driver_cpu / n,
            "labeling_s": run.timings_s.labeling, "workers_start_s": run.timings_s.workers_start,
            "images_per_s_wall": run.throughput_images_per_s_wall,
            "machine_cpu_busy": cpu.busy_share(*run.dispatch_unix)}


def worker_cpu_per_image(images: Path, shard_size: int) -> float:
    """CPU seconds per image of the worker's own work (read, decode, loop ops, RLE, Parquet, commit) with
    zero model latency, in this process, after one warm-up shard: what caps throughput once the actors
    outnumber the cores."""
    from bmp_core.config import config_from_dict
    from jobs.worker import BmpWorker, ShardTask

    cfg = config_from_dict({}, ["models.kind=fake", "models.device=cpu", "models.fake.num_people=2",
                                f"job.shard_size={shard_size}", "job.batch_size=4", "job.min_image_side=1"])
    uris = tuple(sorted(str(p) for p in images.glob("*.png")))[:shard_size]
    worker = BmpWorker(cfg)
    with tempfile.TemporaryDirectory() as out:
        worker.process_shard(ShardTask(out, "bench", 0, 0, uris))  # warm-up: lazy imports
        cpu0 = time.process_time()
        for shard in range(1, 4):
            worker.process_shard(ShardTask(out, "bench", shard, 0, uris))
        return (time.process_time() - cpu0) / (3 * len(uris))


def plan_once(num_images: int) -> dict[str, float]:
    """Runs in a child process: build and plan a synthetic listing of ``num_images`` URIs."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from bmp_core.config import BmpConfig
    from jobs.planner import listing_table, make_plan, shard_uris

    t0 = time.perf_counter()
    ids = pc.cast(pa.array(np.arange(num_images, dtype=np.int64)), pa.string())
    padded = pc.utf8_lpad(ids, 10, "0")
    uris = pc.binary_join_element_wise("s3://bucket/dataset/images/", padded, ".jpg", "")
    uris = pc.take(uris, pc.sort_indices(uris))  # the driver sorts what it lists
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = make_plan(BmpConfig(), uris)
    table = listing_table(uris)
    first, last = shard_uris(uris, plan, 0), shard_uris(uris, plan, plan.num_shards - 1)
    t_plan = time.perf_counter() - t0
    assert len(first) == 256 and table.num_rows == num_images and last
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": num_images, "shards": plan.num_shards, "build_listing_s": t_build, "plan_s": t_plan,
            "peak_rss_mib": peak_mib}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actors", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    parser.add_argument("--latency-ms", type=float, default=25.0, help="per detector pass (2 passes/image)")
    parser.add_argument("--images-per-actor", type=int, default=60)
    parser.add_argument("--shard-size", type=int, default=20)
    parser.add_argument("--plan-sizes", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--_plan-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._plan_child:
        print(json.dumps(plan_once(args._plan_child)))
        return

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    rows = []
    ceiling = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        if args.actors:
            make_images(Path(tmp) / "cpu_probe", args.shard_size)
            cpu_s = worker_cpu_per_image(Path(tmp) / "cpu_probe", args.shard_size)
            cores = os.cpu_count() or 1
            ceiling = cores / cpu_s
            print(f"worker CPU per image (no model latency): {1000 * cpu_s:.1f} ms -> CPU-bound ceiling on "
                  f"{cores} cores: {ceiling:.0f} img/s (ideal {max(args.actors)} actors: "
                  f"{max(args.actors) / (2 * args.latency_ms / 1000):.0f} img/s)", flush=True)
        for n in args.actors:
            folder = Path(tmp) / f"images_{n}"
            make_images(folder, n * args.images_per_actor)
            rows.append(run_actors(n, folder, args.latency_ms, args.shard_size))
            r = rows[-1]
            print(f"actors {r['actors']:2d}: {r['images']:5d} images, {r['images_per_s']:7.1f} img/s "
                  f"(ideal {r['ideal_images_per_s']:6.1f}, {r['vs_ideal']:.2f} x; "
                  f"{r['images_per_s'] / min(r['ideal_images_per_s'], ceiling):.2f} x min(ideal, CPU ceiling)), "
                  f"driver CPU {r['driver_cpu_ms_per_image']:.2f} ms/image | "
                  f"workers start {r['workers_start_s']:.1f} s, "
                  f"end to end {r['images_per_s_wall']:.1f} img/s | machine CPU busy during dispatch "
                  f"{_pct(r['machine_cpu_busy'])} of {os.cpu_count()} cores", flush=True)
    for size in args.plan_sizes:
        out = subprocess.run([sys.executable, __file__, "--_plan-child", str(size)], capture_output=True,
                             text=True, check=True)
        p = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"plan {p['images']:>10,d} URIs: {p['shards']:,d} shards, plan {p['plan_s']:.2f} s "
              f"(+ {p['build_listing_s']:.2f} s to synthesise the listing), peak RSS {p['peak_rss_mib']:.0f} MiB",
              flush=True)
    if rows:
        print(f"scale: {rows[-1]['actors']} actors at {rows[-1]['vs_ideal']:.2f} x ideal")


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%"


if __name__ == "__main__":
    main()
