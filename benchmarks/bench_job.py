"""Job overhead: the whole job in local mode vs the bare loop, same images, same config.

Usage:
    python benchmarks/bench_job.py                                   # configs/tiny_random.yaml, 48 images
    python benchmarks/bench_job.py --config configs/fake.yaml --images 480
    python benchmarks/bench_job.py --config configs/bmp_d3.yaml models.device=cuda   # on a GPU

Input: ``--images`` symlinks (unique names) cycling over the OCHuman + COCO test images in a temp folder.

- job: ``run_job`` into a temp output, local mode (an embedded Ray, one worker as docs/running-jobs.md documents
  for a machine without a GPU; ``--num-workers`` for more), the config's ``job`` settings except
  ``job.shard_size`` (``--shard-size``: the test configs use 2, which no real run would). Throughput
  over the dispatch phase (run.json ``throughput_images_per_s``: workers ready -> last shard committed:
  listing, reading, decoding, the loop, RLE, Parquet parts, commits, Ray) and end to end (Ray start and
  model builds, finalize included: ``throughput_images_per_s_wall``).
- bare: ``run_bmp_batch`` in this process on the same images, decoded beforehand, models built once
  (neither timed), in batches of ``job.batch_size``. No warm-up batch: the job's worker starts cold too
  (its first forward of each input shape pays oneDNN / cuDNN set-up, ~1.5 s per image on CPU with
  tiny_random), so an untimed warm-up on one side only would count that set-up as job overhead.

Per worker (run.json ``worker_loads``): images, the time its shards held the models, and the share of
it the labeling loop waited for the next decoded image (the proxy for an idle GPU: reading or decoding
slower than the models). Object store: the bytes Ray spilled to disk during the run (its raylet's
store stats, a private Ray API: "n/a" when it moved).

The last line is the dispatch-phase ratio ``job/bare: X.XX`` (target >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmp_core.config import load_config
from bmp_core.io.images import decode_image_bgr

DEFAULT_TESTDATA = REPO.parent / "shared" / "testdata"


def make_input(testdata: Path, folder: Path, count: int) -> list[Path]:
    """``count`` uniquely named symlinks cycling over the test images; returns them in listing order."""
    sources = sorted((testdata / "ochuman").glob("*.jpg")) + sorted((testdata / "coco").glob("*.jpg"))
    if not sources:
        raise SystemExit(f"no test images under {testdata}")
    folder.mkdir(parents=True)
    links = []
    for i in range(count):
        src = sources[i % len(sources)]
        link = folder / f"{i:06d}_{src.name}"
        link.symlink_to(src.resolve())
        links.append(link)
    return sorted(links)


def run_bare(cfg, paths: list[Path]) -> float:
    """Images/s of ``run_bmp_batch`` alone on pre-decoded images."""
    from bmp_core.loop import run_bmp_batch
    from bmp_core.models import build_models

    images = [decode_image_bgr(p.read_bytes(), cfg.job.max_image_pixels, cfg.job.min_image_side) for p in paths]
    models = build_models(cfg.models)
    bs = cfg.job.batch_size
    t0 = time.perf_counter()
    for i in range(0, len(images), bs):
        run_bmp_batch(images[i: i + bs], models, cfg.loop)
    return len(images) / (time.perf_counter() - t0)


def spilled_bytes(ray) -> int | None:
    """Bytes Ray's object store spilled to disk so far (all nodes), or None when the API is not there."""
    try:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
        return int(reply.store_stats.spilled_bytes_total)
    except Exception:  # noqa: BLE001 - a private API: report n/a rather than fail the benchmark
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny_random.yaml"))
    parser.add_argument("--testdata", default=str(DEFAULT_TESTDATA), help="folder with coco/ and ochuman/")
    parser.add_argument("--images", type=int, default=48, help="input size (symlinks over the test images)")
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=None, help="default: the job's own (1 on CPU)")
    parser.add_argument("overrides", nargs="*", help="config key.path=value overrides")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cfg = load_config(args.config, [f"job.shard_size={args.shard_size}", *args.overrides])
    import ray

    from jobs.ray_runner import RunOptions, run_job

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_input(Path(args.testdata), Path(tmp) / "in", args.images)
        # Ray started here, as run_job would (an embedded local Ray), so that its store stats are still
        # there to read after the job: run_job keeps a Ray it did not start.
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
        try:
            run = run_job(cfg, RunOptions(str(Path(tmp) / "in"), str(Path(tmp) / "out"),
                                          num_workers=args.num_workers, progress=False))
            spilled = spilled_bytes(ray)
        finally:
            ray.shutdown()
        bare = run_bare(cfg, paths)
    job, job_wall, t = run.throughput_images_per_s, run.throughput_images_per_s_wall, run.timings_s
    threads = {w.torch_threads for w in run.workers}
    print(f"config {args.config} | device {cfg.models.device} | {args.images} images, shard_size {cfg.job.shard_size}, "
          f"batch_size {cfg.job.batch_size}, decode_threads {cfg.job.decode_threads}, queue_depth "
          f"{cfg.job.queue_depth}, {len(run.workers)} worker(s), torch threads {threads} | "
          f"{os.cpu_count()} CPUs")
    print(f"job : {job:.2f} images/s over dispatch ({t.labeling:.1f} s); end to end {job_wall:.2f} images/s "
          f"(listing {t.listing:.2f} s, workers start {t.workers_start:.1f} s, finalize {t.finalize:.2f} s, "
          f"wall {t.wall:.1f} s)")
    for w in run.worker_loads:
        print(f"worker {w.worker}: {w.images} images in {w.shards} shard(s), models {w.models_s:.2f} s, waited for "
              f"input {w.input_wait_s:.2f} s = {100 * w.input_wait_share:.1f} % (idle-GPU proxy)")
    print(f"object store spilled: {'n/a' if spilled is None else f'{spilled} bytes'}")
    print(f"bare: {bare:.2f} images/s (run_bmp_batch, pre-decoded, models built once, cold like the worker)")
    print(f"job/bare wall-clock: {job_wall / bare:.2f}")
    print(f"job/bare: {job / bare:.2f}")


if __name__ == "__main__":
    main()
