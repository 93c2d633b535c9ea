"""Streaming a tar: where each image member sits, cut and damaged tars, and what the warnings say, checked
against ``tarfile`` reading the same archive whole (the independent reference).

Written for mutation testing of ``bmp_core/io/tars.py`` (docs/development.md "Mutation testing").
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path

import pytest

from bmp_core.io import tars
from bmp_core.io.sources import list_source, read_entry_bytes, stream_tar

EXTS = (".jpg", ".png")


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _reference(path: Path) -> dict[str, tuple[int, int]]:
    """member name -> (header offset, end of data), as tarfile reads them (first copy of a name)."""
    out: dict[str, tuple[int, int]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            out.setdefault(m.name, (m.offset, m.offset_data + m.size))
    return out


def _stream(path: Path, size: int | None = None) -> list[tars.TarImage]:
    data = path.read_bytes()
    return list(tars.iter_tar_images(io.BytesIO(data), str(path), len(data) if size is None else size, EXTS))


def test_every_member_is_placed_where_tarfile_finds_it(tmp_path: Path) -> None:
    path = _tar(tmp_path / "a.tar", [("a.jpg", b"A" * 700), ("a.txt", b"t"), ("b.png", b"B" * 10),
                                     ("a.jpg", b"copy"), ("c.JPG", b"C" * 513)])
    ref = _reference(path)
    got = _stream(path)
    assert [(m.ordinal, m.name) for m in got] == [(0, "a.jpg"), (1, "b.png"), (2, "a.jpg"), (3, "c.JPG")]
    with tarfile.open(path) as tar:
        copy = [m for m in tar.getmembers() if m.name == "a.jpg"][1]
    expected_spans = [ref["a.jpg"], ref["b.png"], (copy.offset, copy.offset_data + copy.size), ref["c.JPG"]]
    assert [(m.offset, m.end) for m in got] == expected_spans
    assert [m.data for m in got] == [b"A" * 700, b"B" * 10, None, b"C" * 513]
    assert got[2].error == ("duplicate member a.jpg in the tar: its first copy (image member 0) is the one "
                            "labeled")
    assert [m.error for m in got if m.ordinal != 2] == [None, None, None]


def test_a_member_cut_by_the_end_of_the_file_is_one_error_at_its_place(tmp_path: Path) -> None:
    path = _tar(tmp_path / "full.tar", [("a.jpg", b"A" * 600), ("b.jpg", b"B" * 3000), ("c.jpg", b"C")])
    ref = _reference(path)
    cut_at = ref["b.jpg"][0] + 512 + 1000  # b's header and a third of its data
    (tmp_path / "cut.tar").write_bytes(path.read_bytes()[:cut_at])
    a, b = _stream(tmp_path / "cut.tar")
    assert (a.data, a.error) == (b"A" * 600, None)
    assert (b.ordinal, b.name, (b.offset, b.end), b.data) == (1, "b.jpg", ref["b.jpg"], None)
    assert b.error == f"truncated tar: member b.jpg needs bytes up to {ref['b.jpg'][1]}, the tar ends at {cut_at}"


def test_a_member_shorter_than_its_header_says_is_one_error_at_its_place(tmp_path: Path) -> None:
    """The plan's size says the member fits, but the stream ends early (the tar shrank, or a short read)."""
    path = _tar(tmp_path / "full.tar", [("a.jpg", b"A" * 600), ("b.jpg", b"B" * 3000)])
    ref = _reference(path)
    short = path.read_bytes()[: ref["b.jpg"][0] + 512 + 1000]
    a, b = tars.iter_tar_images(io.BytesIO(short), "x.tar", path.stat().st_size, EXTS)
    assert a.data == b"A" * 600
    assert (b.ordinal, b.name, (b.offset, b.end), b.data) == (1, "b.jpg", ref["b.jpg"], None)
    assert b.error is not None and b.error.startswith("truncated tar: member b.jpg cannot be read whole (")


def test_a_tar_that_ends_right_after_a_members_data_is_whole(tmp_path: Path) -> None:
    path = _tar(tmp_path / "full.tar", [("a.jpg", b"A" * 1024)])
    end = _reference(path)["a.jpg"][1]
    (tmp_path / "exact.tar").write_bytes(path.read_bytes()[:end])
    (only,) = _stream(tmp_path / "exact.tar")
    assert (only.data, only.error, only.end) == (b"A" * 1024, None, end)


def test_an_empty_tar_yields_nothing_and_warns_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _tar(tmp_path / "empty.tar", [])
    with caplog.at_level(logging.WARNING, logger="bmp_core.io.tars"):
        assert _stream(path) == []
    assert caplog.records == []


def test_data_after_the_end_of_the_tar_is_a_warning_at_the_slack_bound(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = _tar(tmp_path / "a.tar", [("a.jpg", b"A" * 100)])
    end = _reference(path)["a.jpg"][1]
    # Up to two zero blocks and a 10240-byte record of padding after the last member: a normal tar's end.
    (tmp_path / "padded.tar").write_bytes(path.read_bytes()[:end] + bytes(2 * 512 + 10240))
    with caplog.at_level(logging.WARNING, logger="bmp_core.io.tars"):
        assert [m.data for m in _stream(tmp_path / "padded.tar")] == [b"A" * 100]
    assert caplog.records == []
    # More than that: whatever follows is not read, and the log says where the reading stopped.
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(path.read_bytes()[:end] + bytes(2 * 512 + 10240) + os.urandom(1))
    size = damaged.stat().st_size
    with caplog.at_level(logging.WARNING, logger="bmp_core.io.tars"):
        assert [m.data for m in _stream(damaged)] == [b"A" * 100]
    assert [r.getMessage() for r in caplog.records] == [
        f"tar {damaged}: its headers stop making sense at about byte {end} of {size}; whatever follows is not "
        "read (a damaged tar?)"
    ]


def test_a_cut_in_a_sidecar_ends_the_stream_with_a_warning_naming_where(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    path = _tar(tmp_path / "full.tar", [("a.jpg", b"A" * 10), ("a.json", b"j" * 4000), ("b.jpg", b"B")])
    side_start, side_end = _reference(path)["a.json"]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[: side_start + 512 + 100])
    with caplog.at_level(logging.WARNING, logger="bmp_core.io.tars"):
        assert [m.name for m in _stream(cut)] == ["a.jpg"]
    (message,) = [r.getMessage() for r in caplog.records]
    size = cut.stat().st_size
    assert message.startswith(f"tar {cut} is cut short after byte {side_end} of {size} (")
    assert message.endswith(" end of data): nothing after it is read")  # tarfile's own reason


def test_reading_one_member_back_and_a_missing_one(tmp_path: Path) -> None:
    path = _tar(tmp_path / "a.tar", [("d/a.jpg", b"first"), ("d/b.jpg", b"second")])
    assert read_entry_bytes(f"{path}#d/b.jpg") == b"second"
    with pytest.raises(FileNotFoundError, match=rf"^no member d/c.jpg in {path}$"):
        read_entry_bytes(f"{path}#d/c.jpg")


def test_streamed_rows_end_where_tarfile_says_each_member_ends(tmp_path: Path) -> None:
    path = _tar(tmp_path / "s.tar", [("x/0001.seg.jpg", b"1" * 300), ("0002.png", b"2" * 5)])
    ref = _reference(path)
    (tar,) = list_source(str(path), EXTS).tars
    rows = list(stream_tar(tar, EXTS, 3 * tars.TAR_ID_STRIDE))
    assert [(r.image_id, r.key, r.end_offset) for r in rows] == [
        (3 * tars.TAR_ID_STRIDE, "x/0001", ref["x/0001.seg.jpg"][1]),
        (3 * tars.TAR_ID_STRIDE + 1, "0002", ref["0002.png"][1]),
    ]
