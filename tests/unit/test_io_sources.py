"""Tar shards and Parquet image tables as input: listing, spans, reading back, checked against
``tarfile`` / ``pyarrow`` reading the same files whole, and the shell's own brace expansion."""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bmp_core.io import sources, tars
from bmp_core.io.parquet_images import read_rows
from bmp_core.io.sources import (
    KIND_PARQUET,
    KIND_TAR,
    expand_braces,
    list_source,
    read_entry_bytes,
    read_group,
    read_groups,
    split_member_uri,
)
from bmp_core.io.uris import InputError

EXTS = (".jpg", ".jpeg", ".png")


def _jpeg(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> None:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            _add(tar, name, data)


def _all_members(path: Path) -> dict[str, bytes]:
    """What tarfile reads from the whole archive (the independent reference)."""
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _spans(listing: sources.InputListing) -> list[tuple[int, int]]:
    assert listing.spans_start is not None and listing.spans_end is not None
    return list(zip(listing.spans_start.to_pylist(), listing.spans_end.to_pylist(), strict=True))


def _read_all(listing: sources.InputListing, max_run: int = 3, **columns: str | None) -> list[sources.RawImage]:
    uris = listing.uris.to_pylist()
    groups = read_groups(listing.kind, list(range(len(uris))), uris, _spans(listing), max_run)
    return sorted((r for g in groups for r in read_group(g, **columns)), key=lambda r: r.image_id)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for the reference expansion")
@pytest.mark.parametrize("pattern", ["shard-{000000..000011}.tar", "s{8..11}.tar", "a{x,y}/b{01..03}.tar",
                                     "plain.tar", "lit{x}.tar"])
def test_brace_patterns_expand_as_bash_does(pattern: str) -> None:
    reference = subprocess.run(["bash", "-c", f"printf '%s\\n' {pattern}"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert expand_braces(pattern) == reference


def test_tar_listing_one_entry_per_image_member_with_its_bytes(tmp_path: Path) -> None:
    long_dir = "d" * 120  # a name over 100 characters needs a pax header before the member's own
    members = [("0001.jpg", _jpeg(1)), ("0001.json", json.dumps({"a": 1}).encode()), ("0002.PNG", _jpeg(2)),
               (f"{long_dir}/0003.seg.jpg", _jpeg(3)), ("0004.txt", b"caption"), ("0005.jpeg", _jpeg(5))]
    _write_tar(tmp_path / "a.tar", members)
    _write_tar(tmp_path / "b.tar", [("x.jpg", _jpeg(9))], fmt=tarfile.GNU_FORMAT)
    listing = list_source(str(tmp_path / "*.tar"), EXTS)
    assert listing.kind == KIND_TAR and listing.num_containers == 2
    uris = listing.uris.to_pylist()
    expected = sorted([f"{tmp_path}/a.tar#{n}" for n, _ in members if n.lower().endswith(EXTS)] +
                      [f"{tmp_path}/b.tar#x.jpg"])
    assert uris == expected  # .json / .txt sidecars are not images
    reference = {f"{tmp_path}/{t}.tar#{n}": d for t in "ab" for n, d in _all_members(tmp_path / f"{t}.tar").items()}
    got = _read_all(listing)
    assert [r.uri for r in got] == uris
    for r in got:
        assert r.error is None and r.data == reference[r.uri]
        assert r.container_uri == split_member_uri(r.uri)[0]  # type: ignore[index]
    assert {r.key for r in got} == {"0001", "0002", f"{long_dir}/0003", "0005", "x"}
    assert read_entry_bytes(uris[1]) == reference[uris[1]]  # viz reads one member back by name


def test_a_member_stored_twice_keeps_its_last_copy(tmp_path: Path) -> None:
    _write_tar(tmp_path / "a.tar", [("x.jpg", _jpeg(1)), ("x.jpg", _jpeg(2))])
    (got,) = _read_all(list_source(str(tmp_path / "a.tar"), EXTS))
    assert got.data == _jpeg(2)


def test_truncated_tar_lists_what_it_holds_and_the_cut_member_is_an_error(tmp_path: Path) -> None:
    members = [(f"{i:04d}.jpg", _jpeg(i, 64)) for i in range(5)]
    _write_tar(tmp_path / "full.tar", members)
    full = list_source(str(tmp_path / "full.tar"), EXTS)
    cut_at = (_spans(full)[2][0] + _spans(full)[2][1]) // 2  # inside member 2's data
    (tmp_path / "cut.tar").write_bytes((tmp_path / "full.tar").read_bytes()[:cut_at])
    listing = list_source(str(tmp_path / "cut.tar"), EXTS)
    assert [u.rsplit("#", 1)[1] for u in listing.uris.to_pylist()] == ["0000.jpg", "0001.jpg", "0002.jpg"]
    got = _read_all(listing, max_run=10)  # one run: the short read must not spoil the members before
    assert [r.data for r in got[:2]] == [members[0][1], members[1][1]]
    assert got[2].data is None and "truncated tar" in (got[2].error or "")


def test_a_rewritten_tar_is_noticed_per_member_and_by_the_digest(tmp_path: Path) -> None:
    _write_tar(tmp_path / "a.tar", [("a.jpg", _jpeg(1)), ("b.jpg", _jpeg(2))])
    listing = list_source(str(tmp_path / "a.tar"), EXTS)
    _write_tar(tmp_path / "a.tar", [("b.jpg", _jpeg(2)), ("a.jpg", _jpeg(1))])  # same members, other order
    stat = (tmp_path / "a.tar").stat()
    os.utime(tmp_path / "a.tar", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # whatever the clock's grain
    relisted = list_source(str(tmp_path / "a.tar"), EXTS)
    assert relisted.uris.equals(listing.uris)  # the same listing ...
    assert relisted.containers_sha256 != listing.containers_sha256  # ... but the tar is not the same
    got = _read_all(listing)  # the stale spans now point at the other member
    assert all(r.data is None and "changed since the plan" in (r.error or "") for r in got)


def test_not_a_tar_and_missing_brace_names_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.tar").write_bytes(b"this is no tar archive" * 40)
    with pytest.raises(InputError, match="cannot read the tar .*bad.tar"):
        list_source(str(tmp_path / "bad.tar"), EXTS)
    _write_tar(tmp_path / "s-1.tar", [("a.jpg", _jpeg(1))])
    with pytest.raises(InputError, match=r"2 of the 3 files .* do not exist, e.g. .*s-0.tar"):
        list_source(str(tmp_path / "s-{0..2}.tar"), EXTS)


def test_runs_are_cut_by_count_and_never_overlap(tmp_path: Path) -> None:
    _write_tar(tmp_path / "a.tar", [(f"{i:02d}.jpg", _jpeg(i)) for i in range(7)])
    listing = list_source(str(tmp_path / "a.tar"), EXTS)
    uris = listing.uris.to_pylist()
    groups = read_groups(KIND_TAR, list(range(7)), uris, _spans(listing), max_run=3)
    assert [len(g.uris) for g in groups] == [3, 3, 1]
    ranges = [(g.spans[0][0], g.spans[-1][1]) for g in groups]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))  # one pass over the tar


def _parquet(path: Path, struct: bool, row_group_size: int = 3) -> list[bytes]:
    images = [_jpeg(i) for i in range(8)]
    column = ([{"bytes": b, "path": f"img{i}.jpg"} for i, b in enumerate(images)] if struct else images)
    table = pa.table({"id": [f"id-{i}" for i in range(8)], "image": column, "label": list(range(8))})
    pq.write_table(table, path, row_group_size=row_group_size)
    return images


@pytest.mark.parametrize("struct", [False, True], ids=["binary", "hf-image-struct"])
def test_parquet_rows_with_ids_read_group_by_group(tmp_path: Path, struct: bool) -> None:
    images = _parquet(tmp_path / "t.parquet", struct)
    listing = list_source(str(tmp_path / "t.parquet"), EXTS, "image", "id")
    assert listing.kind == KIND_PARQUET and len(listing.uris) == 8
    assert listing.uris.to_pylist() == [f"{tmp_path}/t.parquet#{i:012d}" for i in range(8)]
    got = _read_all(listing, image_column="image", id_column="id")
    assert [r.data for r in got] == images
    uris = listing.uris.to_pylist()
    groups = read_groups(KIND_PARQUET, list(range(8)), uris, _spans(listing), max_run=4)
    assert [len(g.uris) for g in groups] == [3, 3, 2]  # one read per row group of 3 rows
    assert [r.key for r in got] == [f"id-{i}" for i in range(8)]
    # A subset spanning row groups: only those rows come back, in row order.
    assert [r.row for r in read_rows(str(tmp_path / "t.parquet"), [7, 1, 4], "image", None)] == [1, 4, 7]


def test_parquet_null_image_is_an_error_row(tmp_path: Path) -> None:
    table = pa.table({"image": pa.array([_jpeg(1), None], pa.binary())})
    pq.write_table(table, tmp_path / "t.parquet")
    got = _read_all(list_source(str(tmp_path / "t.parquet"), EXTS, "image"), image_column="image")
    assert got[0].data == _jpeg(1) and got[1].data is None and "null image" in (got[1].error or "")


def test_parquet_missing_or_wrong_column_names_the_columns_that_exist(tmp_path: Path) -> None:
    _parquet(tmp_path / "t.parquet", struct=True)
    with pytest.raises(InputError, match=r"^--image-column 'img': no such column in .*t.parquet; its columns "
                                         r"are: id, image, label$"):
        list_source(str(tmp_path / "t.parquet"), EXTS, "img")
    with pytest.raises(InputError, match=r"^--id-column 'key': no such column"):
        list_source(str(tmp_path / "t.parquet"), EXTS, "image", "key")
    with pytest.raises(InputError, match=r"--image-column 'label' .* is of type int64"):
        list_source(str(tmp_path / "t.parquet"), EXTS, "label")
    with pytest.raises(InputError, match="pass --image-column"):
        list_source(str(tmp_path / "t.parquet"), EXTS)


def test_webdataset_key() -> None:
    # webdataset's base_plus_ext splits at the first dot of the file name, keeping the folder.
    assert tars.webdataset_key("a/b/0001.seg.png") == "a/b/0001"
    assert tars.webdataset_key("0001.jpg") == "0001"


def test_a_tar_member_matches_coco_file_names_by_its_member_path() -> None:
    from bmp_core.io.image_matching import FileNameIndex

    index = FileNameIndex([("val2017/x.jpg", "val"), ("train2017/x.jpg", "train"), ("y.jpg", "y")])
    assert index.lookup("s3://b/shard-000001.tar#val2017/x.jpg") == "val"
    assert index.lookup("/data/shard.tar#train2017/x.jpg") == "train"
    assert index.lookup("s3://b/shard.tar#y.jpg") == "y"
    assert index.lookup("s3://b/shard.tar#x.jpg") is None  # no folder: neither val2017 nor train2017


def test_a_folder_of_tars_says_how_to_name_them(tmp_path: Path) -> None:
    _write_tar(tmp_path / "shard-0.tar", [("a.jpg", _jpeg(1))])
    with pytest.raises(InputError, match=r"lists no images .*holds \.tar files: for those use --input '.*/\*\.tar'"):
        list_source(str(tmp_path), EXTS)
