"""Tars on S3 (the moto server of conftest.py; no Ray): listed by glob, brace pattern and list file
as boto3 lists them, pinned by the ETag S3 reports (the MD5 of a single-part upload), a rewrite noticed, and
streamed as tarfile reads the same bytes, front to back in bounded ranged GETs. Each listing and pin check
sees the bucket as it is now, also after an earlier listing in the same process (s3fs caches listings).

A few seconds, the server's start included: scripts/mutation.sh runs it for the mutants of
``bmp_core/io/sources.py`` (docs/mutation-scores.md).
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from bmp_core.io import tars
from bmp_core.io.sources import (
    InputChangedError,
    check_unchanged,
    list_source,
    listing_table,
    stream_tar,
)
from bmp_core.io.uris import InputError, filesystem
from tests.tar_files import write_tar

from .conftest import BUCKET

pytestmark = pytest.mark.integration

EXTS = (".jpg", ".png")


def _md5(data: bytes) -> Any:
    return hashlib.new("md5", data)


def _tar_bytes(tmp_path: Path, members: list[tuple[str, bytes]]) -> bytes:
    write_tar(tmp_path / "t.tar", members)
    return (tmp_path / "t.tar").read_bytes()


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own: moto keeps its objects per process, across servers and sessions."""
    return f"sources-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_calls(s3_endpoint: str) -> Iterator[list[tuple[str, dict]]]:
    """The S3 API calls our filesystem makes from here on: (operation, its parameters), as botocore's
    event system reports them (the client s3fs made for the endpoint)."""
    fs, _ = filesystem(f"s3://{BUCKET}/x")
    fs.ls(BUCKET)  # connects: fs.s3 exists from here on
    calls: list[tuple[str, dict]] = []

    def record(params: dict, model: Any, **_: Any) -> None:
        calls.append((model.name, dict(params)))

    fs.s3.meta.events.register("before-parameter-build.s3", record)
    yield calls
    fs.s3.meta.events.unregister("before-parameter-build.s3", record)


def _put(s3: Any, key: str, body: bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def _as_boto3_lists(s3: Any, prefix: str, keys: list[str]) -> list[tuple[str, int, str]]:
    """(URI, size, ETag without its quotes) of ``keys``, from boto3's list_objects_v2, checked against
    head_object; sorted by URI."""
    listed = {o["Key"]: o for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    out = []
    for key in sorted(keys):
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert (head["ContentLength"], head["ETag"]) == (listed[key]["Size"], listed[key]["ETag"])
        out.append((f"s3://{BUCKET}/{key}", listed[key]["Size"], listed[key]["ETag"].strip('"')))
    return out


def test_tars_on_s3_are_listed_and_pinned_as_boto3_lists_them(s3: Any, s3_calls: list, prefix: str,
                                                              tmp_path: Path) -> None:
    root = f"s3://{BUCKET}/{prefix}"
    bodies = {}
    for i, key in enumerate(["a/shard-000.tar", "a/shard-001.tar", "a/shard-002.tar", "a/sub/shard-009.tar",
                             "b/shard-000.tar", "b/shard-001.tar"]):
        bodies[f"{prefix}/list/{key}"] = _tar_bytes(tmp_path, [(f"{j}.jpg", bytes([i, j]) * (100 + 37 * i))
                                                             for j in range(i + 1)])
    for key, body in bodies.items():
        _put(s3, key, body)
    _put(s3, f"{prefix}/list/a/notes.txt", b"not a tar")
    _put(s3, f"{prefix}/list/a/shard-005.tar/inside.jpg", b"a key under a folder named like a tar")
    # The list file names tars relative to its own folder and by URI (and holds a comment and a blank line).
    _put(s3, f"{prefix}/list/tars.txt", f"# tars\na/shard-002.tar\n\n{root}/list/b/shard-000.tar\n".encode())
    # A single-part upload's ETag is the MD5 of its bytes (S3 and moto alike): the version is independent of us.
    for key, body in bodies.items():
        assert s3.head_object(Bucket=BUCKET, Key=key)["ETag"] == f'"{_md5(body).hexdigest()}"'

    def listed(uri: str) -> list[tuple[str, int, str]]:
        listing = list_source(uri, EXTS)
        assert listing.kind == "tar" and listing.num_containers == len(listing.tars)
        assert listing.uris.to_pylist() == [t.uri for t in listing.tars]
        table = listing_table(listing)
        rows = list(zip(table.column("uri").to_pylist(), table.column("size").to_pylist(),
                        table.column("version").to_pylist(), strict=True))
        assert rows == [(t.uri, t.size, t.version) for t in listing.tars]
        assert listing.total_bytes == sum(size for _, size, _ in rows)
        return rows

    a = [f"{prefix}/list/a/shard-000.tar", f"{prefix}/list/a/shard-001.tar", f"{prefix}/list/a/shard-002.tar"]
    expected_a = _as_boto3_lists(s3, f"{prefix}/list/a/", a)
    assert listed(f"{root}/list/a/*.tar") == expected_a
    assert listed(f"{root}/list/a/shard-{{000..002}}.tar") == expected_a
    both = a[:2] + [f"{prefix}/list/b/shard-000.tar", f"{prefix}/list/b/shard-001.tar"]
    del s3_calls[:]
    assert listed(f"{root}/list/{{a,b}}/shard-{{000..001}}.tar") == _as_boto3_lists(s3, f"{prefix}/list/", both)
    # A brace pattern costs one listing per folder, not a HEAD per name (thousands of shards in one folder).
    ours = [(op, params.get("Prefix")) for op, params in s3_calls if op in ("ListObjectsV2", "HeadObject")]
    assert sorted(ours) == [("ListObjectsV2", f"{prefix}/list/a/"), ("ListObjectsV2", f"{prefix}/list/b/")]
    listed_by_file = [f"{prefix}/list/a/shard-002.tar", f"{prefix}/list/b/shard-000.tar"]
    assert listed(f"{root}/list/tars.txt") == _as_boto3_lists(s3, f"{prefix}/list/", listed_by_file)
    # A recursive glob: every tar below, not the folder named like one.
    assert listed(f"{root}/list/**/*.tar") == _as_boto3_lists(s3, f"{prefix}/list/", list(bodies))
    # Brace names that are not tars on S3: missing ones, and a "folder" (a prefix of other keys).
    with pytest.raises(InputError, match=rf"^3 of the 6 files {root}/list/a/shard-{{000..005}}.tar names do not "
                                         rf"exist, e.g. {root}/list/a/shard-003.tar, {root}/list/a/shard-004.tar, "
                                         rf"{root}/list/a/shard-005.tar$"):
        list_source(f"{root}/list/a/shard-{{000..005}}.tar", EXTS)


def test_a_rewritten_tar_on_s3_gets_a_new_version_and_is_refused(s3: Any, prefix: str, tmp_path: Path) -> None:
    root = f"s3://{BUCKET}/{prefix}"
    old = _tar_bytes(tmp_path, [("0.jpg", b"first image bytes")])
    new = _tar_bytes(tmp_path, [("0.jpg", b"other image bytes")])
    assert len(new) == len(old) and new != old  # only the version can tell them apart
    _put(s3, f"{prefix}/rewrite/shard-000.tar", old)
    _put(s3, f"{prefix}/rewrite/shard-001.tar", old)
    pinned = list_source(f"{root}/rewrite/*.tar", EXTS)
    kept, rewritten = pinned.tars
    assert [t.version for t in pinned.tars] == [_md5(old).hexdigest()] * 2
    check_unchanged(kept)
    check_unchanged(rewritten)

    _put(s3, f"{prefix}/rewrite/shard-001.tar", new)
    _put(s3, f"{prefix}/rewrite/shard-002.tar", new)
    # Listed again in the same process: the rewrite and the new tar are seen (no listing cached from before).
    again = list_source(f"{root}/rewrite/shard-{{000..002}}.tar", EXTS)
    assert [(t.uri, t.size, t.version) for t in again.tars] == _as_boto3_lists(
        s3, f"{prefix}/rewrite/", [f"{prefix}/rewrite/shard-00{i}.tar" for i in range(3)])
    assert again.tars[1].version == _md5(new).hexdigest()
    assert again.containers_sha256 != list_source(f"{root}/rewrite/shard-{{000..001}}.tar", EXTS).containers_sha256 \
        != pinned.containers_sha256
    check_unchanged(kept)
    message = (rf"^the tar {rewritten.uri} changed since the plan froze the input \(size {len(old)} then, "
               rf"{len(new)} now; version {_md5(old).hexdigest()} then, {_md5(new).hexdigest()} now\)")
    with pytest.raises(InputChangedError, match=message):
        check_unchanged(rewritten)
    with pytest.raises(InputChangedError, match=message):
        next(stream_tar(rewritten, EXTS, 0))  # refused before any member is read
    s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/rewrite/shard-000.tar")
    with pytest.raises(InputChangedError, match=rf"^the tar {kept.uri} was deleted since the plan froze the input$"):
        check_unchanged(kept)


def test_a_tar_streamed_from_s3_is_what_tarfile_reads_in_bounded_ranged_gets(
        s3: Any, s3_calls: list, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = f"s3://{BUCKET}/{prefix}"
    monkeypatch.setattr(tars, "STREAM_BLOCK_BYTES", 32 << 10)  # several blocks in a small tar
    members = [(f"{i:03d}.jpg", hashlib.sha256(b"%d" % i).digest() * (40 + 90 * i)) for i in range(12)]
    members[3:3] = [("meta.json", b"{}"), ("sub/deep.PNG", b"png bytes" * 500)]
    _put(s3, f"{prefix}/stream/shard-000.tar", _tar_bytes(tmp_path, members))
    (tar,) = list_source(f"{root}/stream/shard-000.tar", EXTS).tars
    body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/stream/shard-000.tar")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as reference:
        expected = [(m.name, reference.extractfile(m).read(), m.offset_data + m.size) for m in reference.getmembers()
                    if m.isfile() and m.name.lower().endswith(EXTS)]
    assert len(expected) == 13 and len(body) > 4 * tars.STREAM_BLOCK_BYTES

    del s3_calls[:]
    images = list(stream_tar(tar, EXTS, 70_000_000))
    assert [(r.uri, r.data, r.end_offset) for r in images] == [(f"{tar.uri}#{n}", d, e) for n, d, e in expected]
    assert [r.image_id for r in images] == list(range(70_000_000, 70_000_013))
    assert all(r.error is None and r.container_uri == tar.uri and r.read_s >= 0 for r in images)
    # HEADs (the pin checked, the size), then the tar front to back: consecutive ranges, no byte twice, none
    # larger than a block plus the one read that ran past the cache (tarfile streams a record at a time).
    ops = [op for op, _ in s3_calls]
    heads = ops.index("GetObject")
    assert 1 <= heads <= 2 and ops == ["HeadObject"] * heads + ["GetObject"] * (len(ops) - heads)
    ranges = [tuple(int(b) for b in p["Range"].removeprefix("bytes=").split("-")) for _, p in s3_calls[heads:]]
    assert ranges[0][0] == 0 and ranges[-1][1] == len(body) - 1
    assert all(after[0] == before[1] + 1 for before, after in zip(ranges[:-1], ranges[1:], strict=True))
    assert all(end - start + 1 <= tars.STREAM_BLOCK_BYTES + tarfile.RECORDSIZE for start, end in ranges)


def test_a_listing_that_s3_refuses_names_the_endpoint_and_the_error(s3_endpoint: str) -> None:
    # A bucket that does not exist: the one line names the storage (endpoint) and what S3 answered.
    uri = "s3://no-such-bucket-here/shards/shard-{000..001}.tar"
    with pytest.raises(InputError, match=rf"^cannot list S3 {re.escape(uri)} via {s3_endpoint} \(credentials from "
                                         r"AWS_ACCESS_KEY_ID\): FileNotFoundError: .*bucket does not exist"):
        list_source(uri, EXTS)
