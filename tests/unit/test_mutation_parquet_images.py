"""Parquet image rows' edges that mutation testing (scripts/mutation.sh) found unchecked, each checked
against pyarrow reading the same file: row groups longer than one read batch, rows past the file's
end, rows ending mid-batch, null images, ids and structs, ``large_binary``, the footer against
pyarrow's metadata, guessing the image column, and only the image column being read."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bmp_core.io.parquet_images import READ_BATCH_ROWS, ParquetRow, guess_image_column, read_footer, read_rows
from bmp_core.io.sources import read_entry_bytes
from bmp_core.io.uris import InputError


def _image(i: int) -> bytes:
    return f"image {i} bytes".encode()


def test_rows_of_row_groups_longer_than_a_read_batch(tmp_path: Path) -> None:
    n = 3 * READ_BATCH_ROWS + 5
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [_image(i) for i in range(2 * n)], "id": list(range(2 * n))}), path,
                   row_group_size=n)
    column = pq.read_table(path).column("image").to_pylist()
    wanted = [0, READ_BATCH_ROWS + 1, 2 * READ_BATCH_ROWS + 3, n - 1, n, n + 2 * READ_BATCH_ROWS + 1]
    rows = list(read_rows(str(path), wanted, "image", "id"))
    assert [(r.row, r.data, r.key, r.error) for r in rows] == [(w, column[w], str(w), None) for w in wanted]
    # One row whose batch goes on after it; no rows at all.
    assert [r.data for r in read_rows(str(path), [1], "image", None)] == [column[1]]
    assert list(read_rows(str(path), [], "image", None)) == []


def test_rows_past_the_end_are_error_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [_image(i) for i in range(3)]}), path)
    rows = list(read_rows(str(path), [2, 5, 7], "image", None))
    assert rows[0] == ParquetRow(2, _image(2), None)
    assert rows[1:] == [ParquetRow(r, None, None, error=f"row {r} not in {path} (the file changed since the plan)")
                        for r in (5, 7)]


def test_null_images_ids_and_structs(tmp_path: Path) -> None:
    null_error = "null image (the image column is null in this row)"
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"image": pa.array([_image(0), None, _image(2)], pa.binary()),
                             "id": pa.array(["a", "b", None])}), path)
    assert list(read_rows(str(path), [0, 1, 2], "image", "id")) == [
        ParquetRow(0, _image(0), "a"), ParquetRow(1, None, "b", error=null_error), ParquetRow(2, _image(2), None)]

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([None, {"bytes": None, "path": "x.jpg"}, {"bytes": None, "path": ""},
                       {"bytes": None, "path": None}, {"bytes": _image(4), "path": None}], struct)
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"image": images, "id": [10, 11, 12, 13, 14]}), path)
    no_bytes = "no image bytes in this row's Image struct"
    assert list(read_rows(str(path), range(5), "image", "id")) == [
        ParquetRow(0, None, "10", error=null_error), ParquetRow(1, None, "11", error=f"{no_bytes} (path 'x.jpg')"),
        ParquetRow(2, None, "12", error=no_bytes), ParquetRow(3, None, "13", error=no_bytes),
        ParquetRow(4, _image(4), "14")]


def test_large_binary_images_and_structs_are_image_columns(tmp_path: Path) -> None:
    struct = pa.struct([("bytes", pa.large_binary()), ("path", pa.string())])
    table = pa.table({"raw": pa.array([_image(0)], pa.large_binary()),
                      "hf": pa.array([{"bytes": _image(1), "path": "p.jpg"}], struct), "n": [1]})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    assert read_footer(str(path), "hf", None).num_rows == 1
    assert read_footer(str(path), "raw", None).num_rows == 1
    assert [r.data for r in read_rows(str(path), [0], "hf", None)] == [_image(1)]
    with pytest.raises(InputError, match=r"^--image-column 'n' in .* is of type int64; expected binary \(encoded "
                                         r"image bytes\) or a Hugging Face Image struct \{bytes, path\}$"):
        read_footer(str(path), "n", None)


def test_the_footer_is_pyarrows_metadata_and_unreadable_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [_image(i) for i in range(10)]}), path, row_group_size=4)
    footer = read_footer(str(path), "image", None)
    meta = pq.ParquetFile(path).metadata
    assert footer.uri == str(path) and footer.num_rows == meta.num_rows == 10
    assert footer.row_group_rows == tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups)) == (4, 4, 2)
    with pytest.raises(InputError, match=r"^Parquet file not found: .*missing.parquet$"):
        read_footer(str(tmp_path / "missing.parquet"), "image", None)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"^cannot read the Parquet file local filesystem \(.*bad.parquet\): "
                                         r"ArrowInvalid: "):
        read_footer(str(tmp_path / "bad.parquet"), "image", None)


def test_the_image_column_is_guessed_only_when_there_is_one(tmp_path: Path) -> None:
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"id": [1], "photo": pa.array([{"bytes": _image(0), "path": "a.jpg"}], struct)}),
                   tmp_path / "one.parquet")
    assert guess_image_column(str(tmp_path / "one.parquet")) == "photo"
    assert read_entry_bytes(f"{tmp_path / 'one.parquet'}#000000000000") == _image(0)
    pq.write_table(pa.table({"id": [1]}), tmp_path / "none.parquet")
    with pytest.raises(InputError, match=r"cannot tell the image column of .*none.parquet \(candidates: none\)"):
        guess_image_column(str(tmp_path / "none.parquet"))
    pq.write_table(pa.table({"a": [b"x"], "b": [b"y"]}), tmp_path / "two.parquet")
    with pytest.raises(InputError, match=r"\(candidates: \['a', 'b'\]\)"):
        guess_image_column(str(tmp_path / "two.parquet"))


def test_only_the_image_and_id_columns_are_read(tmp_path: Path) -> None:
    """A damaged column the job does not use (a caption) does not stop its images being read."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": [_image(i) for i in range(4)], "id": ["a", "b", "c", "d"],
                             "caption": [f"caption {i} " * 50 for i in range(4)]}), path, compression="NONE",
                   use_dictionary=False)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(2)
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset:chunk.data_page_offset + 64] = b"\xff" * 64  # its page header
    path.write_bytes(bytes(data))
    with pytest.raises((OSError, pa.ArrowException)):
        pq.read_table(path)  # pyarrow reading every column fails ...
    # ... reading the two the job needs does not.
    assert [(r.data, r.key) for r in read_rows(str(path), [0, 3], "image", "id")] == [(_image(0), "a"),
                                                                                     (_image(3), "d")]
