"""Input listing and reading edges that mutation testing (scripts/mutation.sh) found unchecked, checked
against independent readers (tarfile, pyarrow, hashlib, the OS): names with ``#``, brace names that are
folders, the hint for a folder of containers, reading any entry back, and a Parquet group's errors and
read times."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
import re
import shutil
import subprocess
import tarfile
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bmp_core.config import JobConfig
from bmp_core.io.sources import (
    INPUT_KINDS,
    KIND_PARQUET,
    InputChangedError,
    ReadGroup,
    ShardEntries,
    check_unchanged,
    expand_braces,
    input_kind,
    list_containers,
    list_source,
    listing_table,
    read_entry_bytes,
    read_group,
    read_groups,
    split_member_uri,
    stream_tar,
)
from bmp_core.io.uris import InputError
from tests.tar_files import write_tar

EXTS = (".jpg",)


def test_only_a_container_before_the_first_hash_makes_a_member_uri(tmp_path: Path) -> None:
    assert split_member_uri("/d/s.tar#a/b#1.jpg") == ("/d/s.tar", "a/b#1.jpg")  # a member name may hold '#'
    assert split_member_uri("/d/t.PARQUET#000000000003") == ("/d/t.PARQUET", "000000000003")
    assert split_member_uri("/d/photo#1.jpg") is None and split_member_uri("/d/s.tar") is None
    write_tar(tmp_path / "s.tar", [("a/b#1.jpg", b"member bytes")])
    assert read_entry_bytes(f"{tmp_path / 's.tar'}#a/b#1.jpg") == b"member bytes"
    (tmp_path / "photo#1.jpg").write_bytes(b"a loose file")  # a '#' in a loose file's name: still that file
    assert read_entry_bytes(str(tmp_path / "photo#1.jpg")) == b"a loose file"


def test_a_parquet_row_is_read_back_with_its_column_or_the_only_image_column(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": pa.array([b"row 0", None, b"row 2"], pa.binary()), "n": [0, 1, 2]}), path)
    assert read_entry_bytes(f"{path}#000000000002") == b"row 2"
    with pytest.raises(OSError, match=r"^null image \(the image column is null in this row\)$"):
        read_entry_bytes(f"{path}#000000000001")
    # Two binary columns: the one to read must be named.
    pq.write_table(pa.table({"image": [b"image 0"], "thumb": [b"thumb 0"]}), path)
    with pytest.raises(InputError, match="cannot tell the image column"):
        read_entry_bytes(f"{path}#000000000000")
    assert read_entry_bytes(f"{path}#000000000000", image_column="thumb") == b"thumb 0"


def test_brace_names_that_are_folders_are_missing(tmp_path: Path) -> None:
    write_tar(tmp_path / "s-0.tar", [("a.jpg", b"x")])
    (tmp_path / "s-1.tar").mkdir()
    with pytest.raises(InputError, match=r"^2 of the 3 files .* do not exist, e.g. .*s-1.tar, .*s-2.tar$"):
        list_source(str(tmp_path / "s-{0..2}.tar"), EXTS)


def test_a_folder_without_images_hints_at_its_containers(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as empty:
        list_source(str(tmp_path / "empty"), EXTS)
    assert "it holds" not in str(empty.value)
    with pytest.raises(InputError, match=r"\(expected a folder, a glob, a .txt list file or an image\)$"):
        list_source(str(tmp_path / "missing"), EXTS)
    (tmp_path / "shards" / "sub").mkdir(parents=True)
    write_tar(tmp_path / "shards" / "sub" / "s-0.tar", [("a.jpg", b"x")])
    with pytest.raises(InputError, match=rf"; it holds .tar files: for those use --input '{tmp_path}/shards/\*.tar'$"):
        list_source(f"{tmp_path}/shards/", EXTS)
    (tmp_path / "tables").mkdir()
    pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "tables" / "t.parquet")
    with pytest.raises(InputError, match=r"; it holds .parquet files: for those use --image-column COL$"):
        list_source(str(tmp_path / "tables"), EXTS)


def test_a_parquet_groups_rows_errors_and_read_times(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": pa.array([b"r0", None, b"r2", b"r3"], pa.binary())}), path, row_group_size=2)
    listing = list_source(str(path), EXTS, "image")
    uris = listing.uris.to_pylist()
    spans = list(zip(listing.spans_start.to_pylist(), listing.spans_end.to_pylist(), strict=True))
    groups = read_groups(KIND_PARQUET, [10, 11, 12, 13], uris, spans)
    assert [g.kind for g in groups] == [KIND_PARQUET] * 2 and [g.container for g in groups] == [str(path)] * 2
    column = pq.read_table(path).column("image").to_pylist()
    for group in groups:
        t0 = time.perf_counter()
        got = read_group(group, "image")
        wall = time.perf_counter() - t0
        assert [(r.image_id, r.uri, r.data, r.container_uri) for r in got] == [
            (i, u, column[i - 10], str(path)) for i, u in zip(group.image_ids, group.uris, strict=True)]
        ok = [r for r in got if r.error is None]
        assert all(r.read_s is None for r in got if r.error is not None)
        assert all(r.read_s is not None and r.read_s > 0 for r in ok) and sum(r.read_s for r in ok) <= wall
    # A file that is not Parquet (any more): every row of the group is an error row naming the reason.
    path.write_bytes(b"no longer parquet")
    got = read_group(groups[1], "image")
    assert [(r.image_id, r.uri, r.data, r.container_uri) for r in got] == [(12, uris[2], None, str(path)),
                                                                           (13, uris[3], None, str(path))]
    assert all((r.error or "").startswith("read failed: ArrowInvalid: ") for r in got)


def test_loose_files_one_group_each_and_unreadable_ones_are_error_rows(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "ok.jpg").write_bytes(b"image")
    uris = [str(tmp_path / "gone.jpg"), str(tmp_path / "dir.jpg"), str(tmp_path / "ok.jpg")]
    groups = read_groups("files", [5, 6, 7], uris, [])
    t0 = time.perf_counter()
    got = [row for g in groups for row in read_group(g)]
    wall = time.perf_counter() - t0
    assert [(r.image_id, r.uri, r.data, r.error) for r in got] == [
        (5, uris[0], None, "missing file (not found)"), (6, uris[1], None, "not a file (a directory)"),
        (7, uris[2], b"image", None)]
    assert got[2].read_s is not None and 0 < got[2].read_s <= wall


def test_parquet_rows_are_grouped_in_row_order_whatever_order_they_come_in(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [f"r{i}".encode() for i in range(6)]}), path, row_group_size=3)
    listing = list_source(str(path), EXTS, "image")
    uris = listing.uris.to_pylist()
    spans = list(zip(listing.spans_start.to_pylist(), listing.spans_end.to_pylist(), strict=True))
    order = [4, 2, 5, 0, 3, 1]  # image ids falling as rows rise, and rows out of order within a row group
    groups = read_groups(KIND_PARQUET, [10 - r for r in order], [uris[r] for r in order], [spans[r] for r in order])
    assert [[s[0] for s in g.spans] for g in groups] == [[0, 1, 2], [3, 4, 5]]
    assert [g.image_ids for g in groups] == [(10, 9, 8), (7, 6, 5)]
    with pytest.raises(ValueError, match=r"^read_groups: a tar input is not read in groups$"):
        read_groups("tar", [0], [uris[0]], [spans[0]])
    with pytest.raises(ValueError, match=rf"^{tmp_path}/a.jpg is not a parquet entry$"):
        read_groups(KIND_PARQUET, [0], [str(tmp_path / "a.jpg")], [(0, 0)])


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash's brace expansion is the reference")
def test_brace_patterns_expand_as_bash_expands_them() -> None:
    for pattern in ("s-{000000..000003}.tar", "s{-2..1}.tar", "x{3..3}", "{001..3}", "{a,b}{1..2}.tar",
                    "{8..11}", "p{0..2}", "plain.tar", "a{x}b{1..2}"):
        bash = subprocess.run(["bash", "-c", f"printf '%s\\n' {pattern}"], capture_output=True, text=True,
                              check=True).stdout.split()
        assert expand_braces(pattern) == bash, pattern
    with pytest.raises(InputError, match=r"^brace range \{3..1\} in s-\{3..1\}.tar runs backwards$"):
        expand_braces("s-{3..1}.tar")


def test_a_missing_brace_name_list_names_three(tmp_path: Path) -> None:
    write_tar(tmp_path / "s-0.tar", [("a.jpg", b"x")])
    with pytest.raises(InputError) as err:
        list_source(str(tmp_path / "s-{0..5}.tar"), EXTS)
    named = str(err.value).split("e.g. ", 1)[1].split(", ")
    assert str(err.value).startswith("5 of the 6 files") and named == [str(tmp_path / f"s-{i}.tar") for i in (1, 2, 3)]


def test_tar_members_read_times_errors_and_a_damaged_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.tar"
    write_tar(path, [("a.jpg", b"A" * 3000), ("b.jpg", b"B" * 100), ("a.jpg", b"again")])
    with tarfile.open(path) as reference:
        last = reference.getmembers()[-1]
    end = -(-(last.offset_data + last.size) // 512) * 512
    path.write_bytes(path.read_bytes()[:end] + b"\x01" * 65536)  # garbage where the next header would be
    (tar,) = list_source(str(path), EXTS).tars
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        got = list(stream_tar(tar, EXTS, 40))
    wall = time.perf_counter() - t0
    assert [(r.image_id, r.uri, r.data, r.container_uri) for r in got] == [
        (40, f"{path}#a.jpg", b"A" * 3000, str(path)), (41, f"{path}#b.jpg", b"B" * 100, str(path)),
        (42, f"{path}#a.jpg", None, str(path))]
    assert got[2].error.startswith("duplicate member a.jpg") and got[2].read_s is None
    assert all(r.read_s is not None and r.read_s > 0 for r in got[:2]) and got[0].read_s + got[1].read_s <= wall
    assert f"tar {path}: its headers stop making sense" in caplog.text  # the warning names the damaged tar

    (tmp_path / "bad.tar").write_bytes(b"no tar at all" * 100)
    (bad,) = list_source(str(tmp_path / "bad.tar"), EXTS).tars
    (row,) = stream_tar(bad, EXTS, 0)
    assert (row.uri, row.container_uri, row.data) == (bad.uri, bad.uri, None)


def test_a_changed_tar_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "s.tar"
    write_tar(path, [("a.jpg", b"x")])
    (tar,) = list_source(str(path), EXTS).tars
    check_unchanged(tar)
    write_tar(path, [("a.jpg", b"x"), ("b.jpg", b"y")])
    with pytest.raises(InputChangedError, match=r"Restore it, or label the changed input into a new --output \(or "
                                                r"pass --force to start this one over\)$"):
        check_unchanged(tar)


def test_a_parquet_group_needs_the_image_column(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [b"r0"]}), path)
    listing = list_source(str(path), EXTS, "image")
    (group,) = read_groups(KIND_PARQUET, [0], listing.uris.to_pylist(), [(0, 0)])
    with pytest.raises(ValueError, match=r"^a Parquet input needs job.image_column$"):
        read_group(group)


def test_which_files_a_container_input_names(tmp_path: Path) -> None:
    for rel in ("d/b.tar", "d/sub/a.TAR", "d/c.tar.gz", "d/x.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_tar(tmp_path / rel, [("a.jpg", b"x")])
    (tmp_path / "d" / "dir.tar").mkdir()  # a folder named like a tar: never a container
    folder = list_containers(str(tmp_path / "d"), ".tar")  # recursive, any case of the suffix
    assert [c.uri for c in folder] == [str(tmp_path / "d/b.tar"), str(tmp_path / "d/sub/a.TAR")]
    glob = list_source(str(tmp_path / "d" / "*.tar"), EXTS)
    assert glob.uris.to_pylist() == [str(tmp_path / "d/b.tar")]
    # A list file: the input kind comes from its first entry, comments and blank lines skipped.
    (tmp_path / "tars.txt").write_text(f"# shards\n\n{tmp_path}/d/sub/a.TAR\n{tmp_path}/d/b.tar\n{tmp_path}/d/b.tar\n")
    listed = list_source(str(tmp_path / "tars.txt"), EXTS)
    assert listed.kind == "tar"
    assert listed.uris.to_pylist() == [str(tmp_path / "d/b.tar"), str(tmp_path / "d/sub/a.TAR")]
    assert listed.containers_sha256 == hashlib.sha256("".join(
        f"{t.uri}\t{os.stat(t.uri).st_size}\t{os.stat(t.uri).st_mtime}\n" for t in listed.tars).encode()).hexdigest()
    (tmp_path / "mixed.txt").write_text(f"{tmp_path}/d/b.tar\n{tmp_path}/d/x.jpg\n")
    with pytest.raises(InputError, match=rf"^list file {tmp_path}/mixed.txt mixes .tar files with others \(e.g. "
                                         rf"{tmp_path}/d/x.jpg\); list only .tar files, or only images$"):
        list_source(str(tmp_path / "mixed.txt"), EXTS)
    single = list_source(str(tmp_path / "d" / "b.tar"), EXTS)
    assert single.num_containers == 1 and single.total_bytes == os.stat(tmp_path / "d" / "b.tar").st_size
    (tmp_path / "empty.tar").write_bytes(b"")
    assert [t.size for t in list_source(str(tmp_path / "empty.tar"), EXTS).tars] == [0]
    with pytest.raises(InputError, match=rf"^input not found: {tmp_path}/none.tar$"):
        list_source(str(tmp_path / "none.tar"), EXTS)
    with pytest.raises(InputError, match=rf"^input {tmp_path}/d/\*x.tar names no .tar files$"):
        list_source(str(tmp_path / "d" / "*x.tar"), EXTS)
    with pytest.raises(InputError, match="pass --image-column"):
        list_source(str(tmp_path / "t.PARQUET/"), EXTS)
    # A list file that cannot be read is listed as images, whose listing names the problem.
    with pytest.raises(InputError, match="gone.txt"):
        list_source(str(tmp_path / "gone.txt"), EXTS)


def test_a_parquet_listing_reuses_a_frozen_one_for_unchanged_files(tmp_path: Path) -> None:
    for name, n in (("a.parquet", 3), ("b.parquet", 2)):
        pq.write_table(pa.table({"image": [b"x"] * n}), tmp_path / name, row_group_size=2)
    fresh = list_source(str(tmp_path), EXTS, "image")
    assert fresh.kind == KIND_PARQUET and fresh.num_containers == 2 and len(fresh.uris) == 5
    assert fresh.spans_end.to_pylist() == [0, 0, 1, 0, 0]  # each row's row group, as pyarrow's metadata says
    calls = []
    frozen = listing_table(fresh)  # what listing.parquet holds

    def reuse(digest: str, n: int) -> pa.Table:
        calls.append((digest, n))
        return frozen

    again = list_source(str(tmp_path), EXTS, "image", reuse=reuse)
    assert calls == [(fresh.containers_sha256, 2)]
    assert again.uris.equals(fresh.uris) and again.spans_end.equals(fresh.spans_end)
    assert again.containers_sha256 == fresh.containers_sha256 and again.num_containers == 2
    assert list_source(str(tmp_path), EXTS, "image", reuse=lambda *a: None).uris.equals(fresh.uris)
    pq.write_table(pa.table({"image": pa.array([], pa.binary())}), tmp_path / "empty.parquet")
    with pytest.raises(InputError, match=r"^input .*empty.parquet: its 1 .parquet file\(s\) hold no rows$"):
        list_source(str(tmp_path / "empty.parquet"), EXTS, "image")


def test_the_input_kind_of_a_name(tmp_path: Path) -> None:
    assert input_kind(f"{tmp_path}/shards.tar/", None) == "tar"  # a trailing slash is not part of the name
    assert input_kind(f"{tmp_path}/photos/", None) == "files" and input_kind("/x", "image") == KIND_PARQUET
    (tmp_path / "comments.txt").write_text("# nothing listed yet\n\n")
    assert input_kind(str(tmp_path / "comments.txt"), None) == "files"
    (tmp_path / "latin1.txt").write_bytes(b"# caf\xe9 shards\n/data/a.tar\n")  # not UTF-8: read all the same
    assert input_kind(str(tmp_path / "latin1.txt"), None) == "tar"


def test_listing_relative_list_entries_and_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "d").mkdir()
    for name in ("a.tar", "b.tar"):
        write_tar(tmp_path / "d" / name, [("x.jpg", b"x" * 100)])
    (tmp_path / "d" / "tars.txt").write_text("a.tar\nb.tar\n")  # relative to the list file's folder
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="bmp_core.io.sources"):
        listing = list_source(str(tmp_path / "d" / "tars.txt"), EXTS)
    wall = time.perf_counter() - t0
    assert listing.uris.to_pylist() == [str(tmp_path / "d" / "a.tar"), str(tmp_path / "d" / "b.tar")]
    (message,) = [r.getMessage() for r in caplog.records]
    match = re.fullmatch(r"listed 2 tar file\(s\), (\d+) bytes, in ([\d.]+) s", message)
    assert match and int(match[1]) == listing.total_bytes and float(match[2]) <= wall + 0.05

    (tmp_path / "p").mkdir()
    for name, n in (("a.parquet", 3), ("b.parquet", 2)):
        pq.write_table(pa.table({"image": [b"x"] * n}), tmp_path / "p" / name)
    caplog.clear()
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="bmp_core.io.sources"):
        fresh = list_source(str(tmp_path / "p"), EXTS, "image")
        list_source(str(tmp_path / "p"), EXTS, "image", reuse=lambda *a: listing_table(fresh))
    wall = time.perf_counter() - t0
    first, second = [r.getMessage() for r in caplog.records]
    match = re.fullmatch(r"listed 5 parquet entries in 2 .parquet file\(s\) in ([\d.]+) s", first)
    assert match and float(match[1]) <= wall + 0.05
    assert second == "2 .parquet file(s) unchanged since the plan: their 5 entries are the frozen listing's"


def test_a_folder_of_images_is_a_files_listing(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    listing = list_source(str(tmp_path), EXTS)
    assert listing.kind == "files" and listing.uris.to_pylist() == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        list_source(str(tmp_path / "empty"), EXTS)
    assert str(err.value) == f"input {tmp_path / 'empty'} lists no images (extensions: .jpg)"


class InlineExecutor(Executor):
    """Runs each task when it is submitted: what a read-ahead started is done, and countable, at once."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed over as the future's exception
            future.set_exception(err)
        return future


def _read_ahead(kind: str, shard: ShardEntries, job: JobConfig, window: int) -> tuple[list[int], list]:
    """(image ids decoded before the first was taken, every decoded RawImage in the order it came);
    the same read on a thread pool gives the same images in the same order (read times aside)."""
    decoded: list[int] = []

    def decode(raw):  # type: ignore[no-untyped-def]
        decoded.append(raw.image_id)
        return raw

    out = INPUT_KINDS[kind].read_ahead(shard, job, InlineExecutor(), decode, window)
    ahead = list(decoded)
    got = list(out)
    with ThreadPoolExecutor(3) as pool:
        pooled = list(INPUT_KINDS[kind].read_ahead(shard, job, pool, lambda r: r, window))
    assert [dataclasses.replace(r, read_s=None) for r in pooled] == [dataclasses.replace(r, read_s=None) for r in got]
    return ahead, got


def test_a_shard_of_loose_files_is_read_ahead_in_order_and_at_most_a_window_ahead(tmp_path: Path) -> None:
    uris = []
    for i in range(6):
        (tmp_path / f"{i}.jpg").write_bytes(b"image %d" % i * (i + 1))
        uris.append(str(tmp_path / f"{i}.jpg"))
    uris.insert(2, str(tmp_path / "gone.jpg"))
    ids = [500 + 3 * k for k in range(len(uris))]
    ahead, got = _read_ahead("files", ShardEntries(ids, uris), JobConfig(batch_size=2), window=3)
    assert ahead == ids[:3]  # started before the first image is taken, and no more than the window
    expected = [(i, u, Path(u).read_bytes() if os.path.exists(u) else None) for i, u in zip(ids, uris, strict=True)]
    assert [(r.image_id, r.uri, r.data) for r in got] == expected
    assert [r.error for r in got] == [None, None, "missing file (not found)", None, None, None, None]


def test_a_shard_of_parquet_rows_is_read_ahead_as_pyarrow_reads_them(tmp_path: Path) -> None:
    pq.write_table(pa.table({"image": pa.array([b"a0", b"a1", None, b"a3", b"a4"], pa.binary()),
                             "key": [f"k-a{i}" for i in range(5)]}), tmp_path / "a.parquet", row_group_size=2)
    pq.write_table(pa.table({"image": [b"b0", b"b1", b"b2"], "key": ["k-b0", "k-b1", "k-b2"]}),
                   tmp_path / "b.parquet", row_group_size=2)
    listing = list_source(str(tmp_path), EXTS, "image", "key")
    uris = listing.uris.to_pylist()
    spans = list(zip(listing.spans_start.to_pylist(), listing.spans_end.to_pylist(), strict=True))
    ids = list(range(1000, 1000 + len(uris)))
    job = JobConfig(batch_size=2, image_column="image", id_column="key")
    ahead, got = _read_ahead(KIND_PARQUET, ShardEntries(ids, uris, spans), job, window=3)
    assert ahead == ids[:3]
    expected = []
    for image_id, uri in zip(ids, uris, strict=True):
        file, row = uri.split("#")
        table = pq.read_table(file)
        expected.append((image_id, uri, table.column("image")[int(row)].as_py(), table.column("key")[int(row)].as_py(),
                         file))
    assert [(r.image_id, r.uri, r.data, r.key, r.container_uri) for r in got] == expected
    assert [r.error is None for r in got] == [d is not None for _, _, d, _, _ in expected]
    # A tar is streamed, never cut into groups: asking for one of its groups is a programming error.
    with pytest.raises(ValueError, match=r"^read_group: a tar input is not read in groups$"):
        read_group(ReadGroup("tar", "/d/s.tar", (0,), ("/d/s.tar#a.jpg",)))


def test_the_frozen_listing_tables_have_the_documented_columns(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    write_tar(tmp_path / "s.tar", [("a.jpg", b"x")])
    pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "t.parquet")
    files = listing_table(list_source(str(tmp_path / "img"), EXTS))
    assert files.schema == pa.schema([("image_id", pa.int64()), ("uri", pa.string())])
    tar_listing = list_source(str(tmp_path / "s.tar"), EXTS)
    tar_table = listing_table(tar_listing)
    assert tar_table.schema == pa.schema([("shard_id", pa.int64()), ("uri", pa.string()), ("size", pa.int64()),
                                          ("version", pa.string())])
    assert tar_table.to_pylist() == [{"shard_id": 0, "uri": str(tmp_path / "s.tar"),
                                      "size": os.stat(tmp_path / "s.tar").st_size,
                                      "version": tar_listing.tars[0].version}]
    parquet = listing_table(list_source(str(tmp_path / "t.parquet"), EXTS, "image"))
    assert parquet.schema == pa.schema([("image_id", pa.int64()), ("uri", pa.string()), ("span_start", pa.int64()),
                                        ("span_end", pa.int64())])


def test_a_reused_parquet_listing_is_the_fresh_one(tmp_path: Path) -> None:
    for name, n in (("a.parquet", 3), ("b.parquet", 4)):
        pq.write_table(pa.table({"image": [b"x"] * n}), tmp_path / name, row_group_size=2)
    fresh = list_source(str(tmp_path), EXTS, "image")
    again = list_source(str(tmp_path), EXTS, "image", reuse=lambda digest, n: listing_table(fresh))
    assert again.kind == fresh.kind == KIND_PARQUET
    assert again.spans_start.equals(fresh.spans_start) and listing_table(again).equals(listing_table(fresh))


def test_spark_style_parquet_folders_and_missing_list_files_are_named(tmp_path: Path) -> None:
    # Spark writes a table as a folder named like a file, "events.parquet/": it needs --image-column too.
    (tmp_path / "events.parquet").mkdir()
    pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "events.parquet" / "part-0.parquet")
    with pytest.raises(InputError, match=r"events.parquet/ is a Parquet input: pass --image-column"):
        list_source(f"{tmp_path}/events.parquet/", EXTS)
    # A list file that does not exist is reported as any missing input is, with what an input may be.
    with pytest.raises(InputError, match=rf"^input not found: {tmp_path}/tars.txt \(expected a folder, a glob, a "
                                         r"\.txt list file or an image\)$"):
        list_source(f"{tmp_path}/tars.txt", EXTS)


def test_a_tar_with_more_image_members_than_the_id_stride_is_refused_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tar ``t``'s images are ids ``t * TAR_ID_STRIDE + k``: a tar with more image members than the stride
    would take the next tar's ids, so it is refused (naming it) once its member ``TAR_ID_STRIDE`` is reached.
    A stride of 3 stands in for the real ten million; members are counted as tarfile lists them."""
    from bmp_core.io import tars

    monkeypatch.setattr(tars, "TAR_ID_STRIDE", 3)
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    write_tar(tmp_path / "full.tar", [(n, n.encode()) for n in names[:3]])
    write_tar(tmp_path / "over.tar", [(n, n.encode()) for n in names])
    with tarfile.open(tmp_path / "full.tar") as reference:
        expected = [(m.name, reference.extractfile(m).read()) for m in reference.getmembers()]
    (full,) = list_source(str(tmp_path / "full.tar"), EXTS).tars
    got = list(stream_tar(full, EXTS, 6))  # exactly the stride: every member, ids 6, 7, 8
    assert [(r.image_id, r.uri.split("#", 1)[1], r.data) for r in got] == [
        (6 + k, name, data) for k, (name, data) in enumerate(expected)]
    (over,) = list_source(str(tmp_path / "over.tar"), EXTS).tars
    stream = stream_tar(over, EXTS, 0)
    assert [r.image_id for r in itertools.islice(stream, 3)] == [0, 1, 2]
    with pytest.raises(InputError) as err:
        next(stream)
    assert str(err.value) == f"the tar {over.uri} holds more than 3 image members: split it into smaller tars"


def test_a_listing_the_storage_refuses_for_permission_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests run as root (chmod cannot deny a listing), so the storage's own refusal is raised where
    fsspec's local filesystem would raise it."""
    from fsspec.implementations.local import LocalFileSystem

    def denied(self: LocalFileSystem, path: str, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", path)

    write_tar(tmp_path / "a.tar", [("a.jpg", b"a")])
    monkeypatch.setattr(LocalFileSystem, "glob", denied)
    with pytest.raises(InputError) as err:
        list_containers(str(tmp_path / "*.tar"), ".tar")
    pattern = f"{tmp_path}/*.tar"
    assert str(err.value) == (f"cannot list local filesystem ({pattern}): permission denied "
                              f"([Errno 13] Permission denied: '{pattern}')")
