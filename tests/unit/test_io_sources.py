"""Tar shards and Parquet image tables as input: listing, streaming tars, reading rows back, checked
against ``tarfile`` / ``pyarrow`` reading the same files whole, and the shell's own brace expansion."""

from __future__ import annotations

import io
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
    InputChangedError,
    expand_braces,
    list_source,
    read_entry_bytes,
    read_group,
    read_groups,
    split_member_uri,
    stream_tar,
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


def _read_all(listing: sources.InputListing, **columns: str | None) -> list[sources.RawImage]:
    uris = listing.uris.to_pylist()
    groups = read_groups(listing.kind, list(range(len(uris))), uris, _spans(listing))
    return sorted((r for g in groups for r in read_group(g, **columns)), key=lambda r: r.image_id)


def _stream_all(listing: sources.InputListing) -> list[sources.RawImage]:
    """Every tar of a listing streamed, as the workers of its shards would (shard t: tar t)."""
    return [r for t, tar in enumerate(listing.tars) for r in stream_tar(tar, EXTS, t * tars.TAR_ID_STRIDE)]


class _ForwardOnly(io.RawIOBase):
    """A file that can only be read forward, counting the bytes read (one pass, no seek back)."""

    def __init__(self, data: bytes) -> None:
        self._data, self.pos, self.bytes_read = data, 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray) -> int:  # type: ignore[override]
        n = len(self._data[self.pos: self.pos + len(buf)])
        buf[:n] = self._data[self.pos: self.pos + n]
        self.pos += n
        self.bytes_read += n
        return n


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for the reference expansion")
@pytest.mark.parametrize("pattern", ["shard-{000000..000011}.tar", "s{8..11}.tar", "a{x,y}/b{01..03}.tar",
                                     "plain.tar", "lit{x}.tar"])
def test_brace_patterns_expand_as_bash_does(pattern: str) -> None:
    reference = subprocess.run(["bash", "-c", f"printf '%s\\n' {pattern}"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert expand_braces(pattern) == reference


def test_the_plan_pins_tars_by_size_and_version_without_opening_them(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _write_tar(tmp_path / "b.tar", [("x.jpg", _jpeg(9))])
    _write_tar(tmp_path / "a.tar", [("y.jpg", _jpeg(8)), ("z.jpg", _jpeg(7))])
    (tmp_path / "notes.txt").write_text("not a tar")
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("the planner opened a tar"))
    listing = list_source(str(tmp_path / "*.tar"), EXTS)
    assert listing.kind == KIND_TAR and listing.num_containers == 2
    assert listing.uris.to_pylist() == [f"{tmp_path}/a.tar", f"{tmp_path}/b.tar"]  # sorted: shard t is tar t
    for tar in listing.tars:
        stat = os.stat(tar.uri)
        assert (tar.size, tar.version) == (stat.st_size, str(stat.st_mtime))  # fsspec's local mtime
    assert listing.total_bytes == sum(os.stat(t.uri).st_size for t in listing.tars)
    assert listing.containers_sha256 == sources.containers_digest(listing.tars)


def test_a_streamed_tar_yields_every_image_member_with_its_bytes(tmp_path: Path) -> None:
    long_dir = "d" * 120  # a name over 100 characters needs a pax header before the member's own
    members = [("0001.jpg", _jpeg(1)), ("0001.json", json.dumps({"a": 1}).encode()), ("0002.PNG", _jpeg(2)),
               (f"{long_dir}/0003.seg.jpg", _jpeg(3)), ("0004.txt", b"caption"), ("0005.jpeg", _jpeg(5))]
    _write_tar(tmp_path / "a.tar", members)
    _write_tar(tmp_path / "b.tar", [("x.jpg", _jpeg(9))], fmt=tarfile.GNU_FORMAT)
    listing = list_source(str(tmp_path / "*.tar"), EXTS)
    got = _stream_all(listing)
    image_names = [n for n, _ in members if n.lower().endswith(EXTS)]
    expected = [f"{tmp_path}/a.tar#{n}" for n in image_names] + [f"{tmp_path}/b.tar#x.jpg"]
    assert [r.uri for r in got] == expected  # tar order; .json / .txt sidecars are not images
    # ids: tar index x stride + ordinal among the image members
    assert [r.image_id for r in got] == [0, 1, 2, 3, tars.TAR_ID_STRIDE]
    reference = {f"{tmp_path}/{t}.tar#{n}": d for t in "ab" for n, d in _all_members(tmp_path / f"{t}.tar").items()}
    for r in got:
        assert r.error is None and r.data == reference[r.uri]
        assert r.container_uri == split_member_uri(r.uri)[0]  # type: ignore[index]
    assert [r.key for r in got] == ["0001", "0002", f"{long_dir}/0003", "0005", "x"]
    assert got[1].end_offset is not None and got[0].end_offset < got[1].end_offset  # type: ignore[operator]
    assert read_entry_bytes(expected[1]) == reference[expected[1]]  # viz reads one member back by name


def test_a_tar_is_read_in_one_forward_pass(tmp_path: Path) -> None:
    _write_tar(tmp_path / "a.tar", [(f"{i:03d}.{ext}", _jpeg(i, 48)) for i in range(20) for ext in ("jpg", "cls")])
    data = (tmp_path / "a.tar").read_bytes()
    stream = _ForwardOnly(data)
    got = list(tars.iter_tar_images(io.BufferedReader(stream), "a.tar", len(data), EXTS))
    assert [m.name for m in got] == [f"{i:03d}.jpg" for i in range(20)] and [m.ordinal for m in got] == list(range(20))
    assert stream.bytes_read <= len(data)  # never re-read, never seeked back (the stream cannot)
    assert all(m.data == _all_members(tmp_path / "a.tar")[m.name] for m in got)


def test_a_member_stored_twice_is_labeled_once_the_copy_is_an_error_row(tmp_path: Path) -> None:
    _write_tar(tmp_path / "a.tar", [("x.jpg", _jpeg(1)), ("y.jpg", _jpeg(3)), ("x.jpg", _jpeg(2))])
    first, other, copy = _stream_all(list_source(str(tmp_path / "a.tar"), EXTS))
    assert first.data == _jpeg(1) and other.data == _jpeg(3) and copy.data is None
    assert copy.image_id == 2 and "duplicate member x.jpg" in (copy.error or "")


def test_truncated_tar_streams_what_it_holds_and_the_cut_member_is_an_error(tmp_path: Path) -> None:
    members = [(f"{i:04d}.jpg", _jpeg(i, 64)) for i in range(5)]
    _write_tar(tmp_path / "full.tar", members)
    with tarfile.open(tmp_path / "full.tar") as tar:
        cut = tar.getmember("0002.jpg")
    (tmp_path / "cut.tar").write_bytes((tmp_path / "full.tar").read_bytes()[: cut.offset_data + cut.size // 2])
    got = _stream_all(list_source(str(tmp_path / "cut.tar"), EXTS))
    assert [r.uri.rsplit("#", 1)[1] for r in got] == ["0000.jpg", "0001.jpg", "0002.jpg"]
    assert [r.data for r in got[:2]] == [members[0][1], members[1][1]]
    assert got[2].data is None and "truncated tar" in (got[2].error or "")
    # Cut inside a sidecar (not an image): the images before it, then the stream ends.
    _write_tar(tmp_path / "full2.tar", [("a.jpg", _jpeg(1)), ("a.json", b"x" * 4000), ("b.jpg", _jpeg(2))])
    with tarfile.open(tmp_path / "full2.tar") as tar:
        side = tar.getmember("a.json")
    (tmp_path / "cut2.tar").write_bytes((tmp_path / "full2.tar").read_bytes()[: side.offset_data + 100])
    (only,) = _stream_all(list_source(str(tmp_path / "cut2.tar"), EXTS))
    assert only.data == _jpeg(1)


def test_a_rewritten_or_deleted_tar_stops_its_worker_and_changes_the_digest(tmp_path: Path) -> None:
    _write_tar(tmp_path / "a.tar", [("a.jpg", _jpeg(1)), ("b.jpg", _jpeg(2))])
    listing = list_source(str(tmp_path / "a.tar"), EXTS)
    _write_tar(tmp_path / "a.tar", [("b.jpg", _jpeg(2)), ("a.jpg", _jpeg(1))])  # same members, other order
    stat = (tmp_path / "a.tar").stat()
    os.utime(tmp_path / "a.tar", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # whatever the clock's grain
    relisted = list_source(str(tmp_path / "a.tar"), EXTS)
    assert relisted.uris.equals(listing.uris)  # the same listing ...
    assert relisted.containers_sha256 != listing.containers_sha256  # ... but the tar is not the same
    with pytest.raises(InputChangedError, match=r"the tar .*a.tar changed since the plan"):
        _stream_all(listing)  # the old plan's worker: refuses before reading a member
    assert [r.uri.rsplit("#", 1)[1] for r in _stream_all(relisted)] == ["b.jpg", "a.jpg"]
    (tmp_path / "a.tar").unlink()
    with pytest.raises(InputChangedError, match="was deleted since the plan"):
        _stream_all(relisted)


def test_not_a_tar_is_one_error_row_and_missing_brace_names_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.tar").write_bytes(b"this is no tar archive" * 40)
    (row,) = _stream_all(list_source(str(tmp_path / "bad.tar"), EXTS))
    assert row.uri == str(tmp_path / "bad.tar") and row.image_id == 0 and row.data is None
    assert "not a tar archive" in (row.error or "")
    _write_tar(tmp_path / "s-1.tar", [("a.jpg", _jpeg(1))])
    with pytest.raises(InputError, match=r"2 of the 3 files .* do not exist, e.g. .*s-0.tar"):
        list_source(str(tmp_path / "s-{0..2}.tar"), EXTS)


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
    groups = read_groups(KIND_PARQUET, list(range(8)), uris, _spans(listing))
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
