"""Input kinds: planning many WebDataset tars on S3 (moto), and streaming tars vs reading loose files.

Usage:
    python benchmarks/bench_inputs.py                # plan 10,000 tars; read 240 images as files and as tars
    python benchmarks/bench_inputs.py --tars 300 --members 50 --member-bytes 20000 --walk-headers

- plan: ``--tars`` synthetic tars of ``--members`` members each (``--member-bytes`` of filler, a
  ``.json`` sidecar per sample, as WebDataset writes them) uploaded to a moto server on 127.0.0.1; then
  ``list_source`` on ``s3://bench/tars/shard-{000000..N}.tar``: what the plan does (the tars' URIs,
  sizes and ETags, one LIST per 1,000; no tar is opened). Prints the wall time and the S3 requests
  (GET / LIST / HEAD, counted from moto's request log). ``--walk-headers`` also times what the
  previous plan did, a header walk of every tar on 32 threads (256 KiB read-ahead), for comparison.
- read: the same ``--images`` test photos (cycled) as loose objects and as tars of ``--per-tar``
  members, on moto and on local disk; the worker's read stage with ``--threads`` decode threads:
  loose files through ``read_groups`` + ``read_group``, tars streamed front to back
  (``stream_tar``, on the worker's read-ahead thread), with and without decoding. Prints images/s,
  requests and bytes fetched for each.

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

    from bmp_core.io.sources import list_source

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
    listing = list_source(pattern, (".jpg",))
    plan_s = time.perf_counter() - t0
    requests = counter.take()
    assert len(listing.tars) == args.tars and listing.total_bytes == total_bytes
    print(f"plan: {args.tars} tars ({total_bytes / 1e6:.0f} MB) pinned by URI + size + ETag in {plan_s:.2f} s, "
          f"requests {dict(requests)}; no tar opened")
    if args.walk_headers:
        fetched = _count_fetched_bytes()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            entries = sum(pool.map(_walk_headers, [t.uri for t in listing.tars]))
        walk_s = time.perf_counter() - t0
        walk = counter.take()
        print(f"for comparison, a header walk of every tar (the previous plan): {walk_s:.1f} s for {entries} "
              f"members, requests {dict(walk)} = {sum(walk.values()) / args.tars:.1f} per tar, "
              f"{fetched[0] / 1e6:.1f} MB fetched of {total_bytes / 1e6:.0f} MB")


def _walk_headers(tar_uri: str) -> int:
    """The image members of a tar found by seeking from header to header (what planning used to do)."""
    from bmp_core.io.uris import filesystem

    fs, path = filesystem(tar_uri)
    count = 0
    with fs.open(path, "rb", block_size=256 << 10, cache_type="readahead") as f, \
            tarfile.open(fileobj=f, mode="r:") as tar:
        while (info := tar.next()) is not None:
            count += info.name.endswith(".jpg")
            tar.members.clear()
    return count


def _count_fetched_bytes() -> list[int]:
    """Bytes s3fs's file objects fetch from now on (tar streams and header walks read through them)."""
    import s3fs.core

    fetched = [0]
    original = s3fs.core.S3File._fetch_range

    def counting(self: object, start: int, end: int) -> bytes:
        data = original(self, start, end)
        fetched[0] += len(data)
        return data

    s3fs.core.S3File._fetch_range = counting
    return fetched


def _read_stage(listing: object, threads: int, decode: bool) -> tuple[float, int, int]:
    """(seconds, images, bytes of image data) for the worker's read stage on a listing."""
    from bmp_core.io.images import decode_image_bgr
    from bmp_core.io.prefetch import prefetch, read_ahead
    from bmp_core.io.sources import read_group, read_groups, stream_tar

    def use(data: bytes | None) -> int:
        assert data is not None
        if decode:
            decode_image_bgr(data)
        return len(data)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        if listing.tars:  # a tar input  # type: ignore[attr-defined]
            raw = (r for t, tar in enumerate(listing.tars) for r in stream_tar(tar, (".jpg",), t))  # type: ignore[attr-defined]
            sizes = list(prefetch(pool, lambda r: use(r.data), read_ahead(raw, 2 * threads), 2 * threads))
        else:
            uris = listing.uris.to_pylist()  # type: ignore[attr-defined]
            groups = read_groups(listing.kind, list(range(len(uris))), uris, [])  # type: ignore[attr-defined]
            sizes = list(prefetch(pool, lambda g: use(read_group(g)[0].data), groups, 2 * threads))
    return time.perf_counter() - t0, len(sizes), sum(sizes)


def bench_read(args: argparse.Namespace, counter: RequestCounter, testdata: Path) -> None:
    import boto3

    from bmp_core.io.sources import list_source

    photos = sorted(testdata.rglob("*.jpg"))
    datas = [photos[i % len(photos)].read_bytes() for i in range(args.images)]
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    tmp = Path(tempfile.mkdtemp(prefix="bench_inputs_"))
    (tmp / "files").mkdir()
    (tmp / "tars").mkdir()
    for i, data in enumerate(datas):
        (tmp / "files" / f"{i:06d}.jpg").write_bytes(data)
        s3.put_object(Bucket=BUCKET, Key=f"files/{i:06d}.jpg", Body=data)
    tar_bytes = 0
    for k in range(-(-args.images // args.per_tar)):
        body = _tar_bytes([(f"{i:06d}.jpg", datas[i]) for i in range(k * args.per_tar,
                                                                     min(args.images, (k + 1) * args.per_tar))])
        tar_bytes += len(body)
        (tmp / "tars" / f"shard-{k:04d}.tar").write_bytes(body)
        s3.put_object(Bucket=BUCKET, Key=f"rtars/shard-{k:04d}.tar", Body=body)
    image_bytes = sum(len(d) for d in datas)
    print(f"read: {args.images} images ({image_bytes / 1e6:.1f} MB; as tars {tar_bytes / 1e6:.1f} MB), tars of "
          f"{args.per_tar}, {args.threads} threads")
    fetched = _count_fetched_bytes()
    inputs = {"local files": str(tmp / "files"), "local tars": str(tmp / "tars" / "*.tar"),
              "s3 files": f"s3://{BUCKET}/files/", "s3 tars": f"s3://{BUCKET}/rtars/*.tar"}
    for decode in (False, True):
        for name, uri in inputs.items():
            listing = list_source(uri, (".jpg",))
            counter.take()
            fetched[0] = 0
            seconds, images, nbytes = _read_stage(listing, args.threads, decode)
            requests = counter.take()
            assert images == args.images and nbytes == image_bytes
            s3_part = "" if name.startswith("local") else f", {sum(requests.values()) / args.images:.3f} requests/image"
            if name == "s3 tars":
                s3_part += f", {fetched[0] / image_bytes:.3f} x the image bytes fetched"
            print(f"  {'read+decode' if decode else 'read only':11s} {name:11s}: {args.images / seconds:7.0f} "
                  f"images/s, {sum(requests.values()):4d} requests{s3_part}")


def _default_testdata() -> Path:
    shared = REPO.parent / "shared" / "testdata"
    return shared if shared.is_dir() else REPO / "examples" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tars", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=4, help="images per synthetic tar (+ a sidecar each)")
    parser.add_argument("--member-bytes", type=int, default=2_000)
    parser.add_argument("--walk-headers", action="store_true",
                        help="also time a header walk of every tar (what the plan did before)")
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--per-tar", type=int, default=60)
    parser.add_argument("--threads", type=int, default=4, help="= job.decode_threads")
    parser.add_argument("--testdata", type=Path, default=_default_testdata())
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
