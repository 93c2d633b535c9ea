"""Input kinds: planning many WebDataset tars on S3 (moto), and reading tar members vs loose files.

Usage:
    python benchmarks/bench_inputs.py                       # 300 tars x 50 members of 20 kB, 240 images read
    python benchmarks/bench_inputs.py --tars 10000 --members 1000     # the issue's scale (hours on moto)

- plan: ``--tars`` synthetic tars of ``--members`` members each (``--member-bytes`` of filler, a
  ``.json`` sidecar per sample, as WebDataset writes them) uploaded to a moto server on 127.0.0.1; then
  ``list_source`` on ``s3://bench/tars/*.tar`` (one LIST, then one header walk per tar on
  ``LISTING_THREADS`` threads). Prints the wall time, S3 requests (GET / LIST / HEAD, counted from
  moto's request log), bytes served, and entries/s, and the same for listing the tar URIs alone (what
  a plan that left members to the workers would cost).
- read: the same ``--images`` test photos (cycled) as loose objects and as tars of ``--per-tar``
  members, on moto and on local disk; the worker's read stage (``read_groups`` + ``read_group``, runs
  of ``job.batch_size`` members, ``decode_threads`` threads) with and without decoding. Prints
  images/s, requests and bytes read for each.

moto is a Python server on the same machine: its per-request cost (~ms) is far below S3's (~20-50 ms
first byte) and its bandwidth is the CPU's, so requests per image is the figure that carries over.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import sys
import tarfile
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUCKET = "bench"


class RequestCounter(logging.Handler):
    """Counts moto's werkzeug request lines: ``"GET /bench/x HTTP/1.1" 200 -``."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    _REQUEST = re.compile(r"(GET|HEAD|PUT|POST) /")  # 206 lines come wrapped in ANSI colour codes

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        match = self._REQUEST.search(msg)
        if match:
            method = match.group(1)
            self.counts["LIST" if method == "GET" and "list-type" in msg else method] += 1

    def take(self) -> Counter[str]:
        out, self.counts = self.counts, Counter()
        return out


def start_moto() -> tuple[object, RequestCounter]:
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    counter = RequestCounter()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.addHandler(counter)
    werkzeug.propagate = False
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket=BUCKET)
    return server, counter


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def bench_plan(args: argparse.Namespace, counter: RequestCounter) -> None:
    import boto3

    from bmp_core.io.sources import list_containers, list_source

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    filler = os.urandom(args.member_bytes)
    t0 = time.perf_counter()

    def upload(k: int) -> int:
        members = []
        for i in range(args.members):
            members += [(f"{k:06d}{i:04d}.jpg", filler), (f"{k:06d}{i:04d}.json", b'{"a": 1}')]
        body = _tar_bytes(members)
        s3.put_object(Bucket=BUCKET, Key=f"tars/shard-{k:06d}.tar", Body=body)
        return len(body)

    with ThreadPoolExecutor(16) as pool:
        total_bytes = sum(pool.map(upload, range(args.tars)))
    print(f"uploaded {args.tars} tars x {args.members} members ({total_bytes / 1e6:.0f} MB) in "
          f"{time.perf_counter() - t0:.1f} s")
    counter.take()
    pattern = f"s3://{BUCKET}/tars/shard-{{000000..{args.tars - 1:06d}}}.tar"
    t0 = time.perf_counter()
    containers = list_containers(pattern, ".tar")
    tars_s = time.perf_counter() - t0
    tars_requests = counter.take()
    fetched = _count_fetched_bytes()
    t0 = time.perf_counter()
    listing = list_source(pattern, (".jpg",))
    plan_s = time.perf_counter() - t0
    requests = counter.take()
    entries = len(listing.uris)
    assert entries == args.tars * args.members and len(containers) == args.tars
    print(f"plan, tar URIs + sizes + ETags only: {tars_s:.2f} s, requests {dict(tars_requests)}")
    print(f"plan, members enumerated (header walk, {args.member_bytes} B members): {plan_s:.1f} s for {entries} "
          f"entries ({entries / plan_s:.0f} entries/s, {args.tars / plan_s:.1f} tars/s), requests "
          f"{dict(requests)} = {sum(requests.values()) / args.tars:.1f} per tar, {fetched[0] / 1e6:.1f} MB fetched "
          f"of {total_bytes / 1e6:.0f} MB; "
          f"projected for 10,000 tars: {10_000 / (args.tars / plan_s) / 60:.1f} min")


def _count_fetched_bytes() -> list[int]:
    """Bytes s3fs's file objects fetch from now on (the header walk reads through them)."""
    import s3fs.core

    fetched = [0]
    original = s3fs.core.S3File._fetch_range

    def counting(self: object, start: int, end: int) -> bytes:
        data = original(self, start, end)
        fetched[0] += len(data)
        return data

    s3fs.core.S3File._fetch_range = counting
    return fetched


def _read_stage(kind: str, uris: list[str], spans: list[tuple[int, int]], batch: int, threads: int,
                decode: bool) -> tuple[float, int]:
    """(seconds, bytes returned) for the worker's read stage on ``uris``."""
    from bmp_core.io.images import decode_image_bgr
    from bmp_core.io.prefetch import prefetch
    from bmp_core.io.sources import read_group, read_groups

    groups = read_groups(kind, list(range(len(uris))), uris, spans, max_run=batch)
    requested = sum(g.spans[-1][1] - g.spans[0][0] for g in groups) if spans else None
    nbytes = 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for raws in prefetch(pool, read_group, groups, 2 * threads):
            for raw in raws:
                assert raw.data is not None, raw.error
                nbytes += len(raw.data)
                if decode:
                    decode_image_bgr(raw.data)
    return time.perf_counter() - t0, requested if requested is not None else nbytes


def bench_read(args: argparse.Namespace, counter: RequestCounter, testdata: Path) -> None:
    import boto3

    from bmp_core.io.sources import list_source

    photos = sorted((testdata / "ochuman").glob("*.jpg")) + sorted((testdata / "coco").glob("*.jpg"))
    datas = [photos[i % len(photos)].read_bytes() for i in range(args.images)]
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    tmp = Path(tempfile.mkdtemp(prefix="bench_inputs_"))
    (tmp / "files").mkdir()
    (tmp / "tars").mkdir()
    for i, data in enumerate(datas):
        (tmp / "files" / f"{i:06d}.jpg").write_bytes(data)
        s3.put_object(Bucket=BUCKET, Key=f"files/{i:06d}.jpg", Body=data)
    for k in range(-(-args.images // args.per_tar)):
        body = _tar_bytes([(f"{i:06d}.jpg", datas[i]) for i in range(k * args.per_tar,
                                                                     min(args.images, (k + 1) * args.per_tar))])
        (tmp / "tars" / f"shard-{k:04d}.tar").write_bytes(body)
        s3.put_object(Bucket=BUCKET, Key=f"rtars/shard-{k:04d}.tar", Body=body)
    image_bytes = sum(len(d) for d in datas)
    print(f"read: {args.images} images ({image_bytes / 1e6:.1f} MB), tars of {args.per_tar}, runs of "
          f"{args.batch_size}, {args.threads} threads")
    inputs = {"local files": str(tmp / "files"), "local tars": str(tmp / "tars" / "*.tar"),
              "s3 files": f"s3://{BUCKET}/files/", "s3 tars": f"s3://{BUCKET}/rtars/*.tar"}
    for decode in (False, True):
        for name, uri in inputs.items():
            listing = list_source(uri, (".jpg",))
            spans = ([] if listing.spans_start is None else
                     list(zip(listing.spans_start.to_pylist(), listing.spans_end.to_pylist(), strict=True)))
            counter.take()
            seconds, nbytes = _read_stage(listing.kind, listing.uris.to_pylist(), spans, args.batch_size,
                                          args.threads, decode)
            requests = counter.take()
            assert nbytes >= image_bytes
            print(f"  {'read+decode' if decode else 'read only':11s} {name:11s}: {args.images / seconds:7.0f} "
                  f"images/s, {nbytes / 1e6:.2f} MB read ({nbytes / image_bytes:.3f} x the images), "
                  f"{sum(requests.values()):4d} requests"
                  f"{'' if name.startswith('local') else f' ({sum(requests.values()) / args.images:.2f}/image)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tars", type=int, default=300)
    parser.add_argument("--members", type=int, default=50, help="images per synthetic tar (+ a sidecar each)")
    parser.add_argument("--member-bytes", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--per-tar", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4, help="= job.batch_size: members per ranged read")
    parser.add_argument("--threads", type=int, default=4, help="= job.decode_threads")
    parser.add_argument("--testdata", type=Path, default=REPO.parent / "shared" / "testdata")
    parser.add_argument("--skip-plan", action="store_true")
    parser.add_argument("--skip-read", action="store_true")
    args = parser.parse_args()
    server, counter = start_moto()
    try:
        if not args.skip_plan:
            bench_plan(args, counter)
        if not args.skip_read:
            bench_read(args, counter, args.testdata)
    finally:
        server.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
