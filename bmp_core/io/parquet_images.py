"""Parquet image tables (what Hugging Face ``datasets`` writes) as input.

A row is addressed as ``FILE_URI#ROW`` with ``ROW`` its 0-based index in the file, zero-padded to
``ROW_DIGITS`` so the sorted listing keeps the file's row order. The planner reads only each file's
footer (row count, schema); the worker reads the rows of a shard row group by row group, in batches,
with only the image column (and the id column) projected: never the whole table.

The image column holds either the encoded bytes (``binary`` / ``large_binary``) or the
``{bytes, path}`` struct of an HF ``Image`` feature.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from bmp_core.io.uris import InputError, describe_storage, filesystem

PARQUET_SUFFIX = ".parquet"
ROW_DIGITS = 12
READ_BATCH_ROWS = 16  # rows decoded from Parquet pages at a time: bounds the bytes held per read


@dataclass(frozen=True)
class ParquetImageFile:
    """What the planner learns from a file's footer."""

    uri: str
    num_rows: int
    row_group_rows: tuple[int, ...]  # rows of each row group, in order


@dataclass(frozen=True)
class ParquetRow:
    """One row's image bytes (None with ``error`` set when the row has none) and its id."""

    row: int
    data: bytes | None
    key: str | None
    error: str | None = None


def _is_image_type(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and _is_image_type_bytes(t.field("bytes").type)


def _is_image_type_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def check_columns(uri: str, schema: pa.Schema, image_column: str, id_column: str | None) -> None:
    """Refuse a missing or unusable column with one line naming it and the columns that exist.

    Raises:
        InputError: as described.
    """
    names = schema.names
    for flag, column in (("--image-column", image_column), ("--id-column", id_column)):
        if column is not None and column not in names:
            raise InputError(f"{flag} {column!r}: no such column in {uri}; its columns are: {', '.join(names)}")
    image_type = schema.field(image_column).type
    if not _is_image_type(image_type):
        raise InputError(f"--image-column {image_column!r} in {uri} is of type {image_type}; expected binary "
                         "(encoded image bytes) or a Hugging Face Image struct {bytes, path}")


def read_footer(uri: str, image_column: str, id_column: str | None) -> ParquetImageFile:
    """Row count of a Parquet file, after checking its columns (only the footer is read).

    Raises:
        InputError: unreadable file, or a missing / unusable column.
    """
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            schema = meta.schema.to_arrow_schema()
    except FileNotFoundError as err:
        raise InputError(f"Parquet file not found: {uri}") from err
    except (OSError, ValueError, pa.ArrowException) as err:
        raise InputError(f"cannot read the Parquet file {describe_storage(uri)}: {type(err).__name__}: {err}") from err
    check_columns(uri, schema, image_column, id_column)
    return ParquetImageFile(uri, meta.num_rows, tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups)))


def read_rows(uri: str, rows: Sequence[int], image_column: str, id_column: str | None) -> Iterator[ParquetRow]:
    """The given rows (sorted ascending) of one file, reading only the row groups that hold them.

    Raises:
        OSError, pa.ArrowException: the file cannot be read (the caller makes error rows).
    """
    wanted = sorted(rows)
    columns = [image_column] + ([id_column] if id_column and id_column != image_column else [])
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        group_start, i = 0, 0
        for group in range(pf.metadata.num_row_groups):
            group_rows = pf.metadata.row_group(group).num_rows
            group_end = group_start + group_rows
            if i < len(wanted) and wanted[i] < group_end:
                row = group_start
                for batch in pf.iter_batches(READ_BATCH_ROWS, row_groups=[group], columns=columns):
                    images = batch.column(image_column)
                    ids = batch.column(id_column).to_pylist() if id_column else None
                    for j in range(batch.num_rows):
                        if i < len(wanted) and wanted[i] == row + j:
                            yield _row(wanted[i], images, j, None if ids is None else ids[j])
                            i += 1
                    row += batch.num_rows
                    if i >= len(wanted) or wanted[i] >= group_end:
                        break
            group_start = group_end
            if i >= len(wanted):
                break
    for missing in wanted[i:]:
        yield ParquetRow(missing, None, None, error=f"row {missing} not in {uri} (the file changed since the plan)")


def _row(row: int, images: pa.Array, j: int, key: object) -> ParquetRow:
    key_str = None if key is None else str(key)
    if pa.types.is_struct(images.type):
        value = images[j]
        if not value.is_valid:
            return ParquetRow(row, None, key_str, error="null image (the image column is null in this row)")
        data, path = value["bytes"].as_py(), value.get("path")
        if data is None:
            where = f" (path {path.as_py()!r})" if path is not None and path.as_py() else ""
            return ParquetRow(row, None, key_str, error=f"no image bytes in this row's Image struct{where}")
        return ParquetRow(row, data, key_str)
    data = images[j].as_py()
    if data is None:
        return ParquetRow(row, None, key_str, error="null image (the image column is null in this row)")
    return ParquetRow(row, data, key_str)


def guess_image_column(uri: str) -> str:
    """The one binary / Image-struct column of a file (to read an image back without the config).

    Raises:
        InputError: none, or several.
    """
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        schema = pq.ParquetFile(f).schema_arrow
    found = [field.name for field in schema if _is_image_type(field.type)]
    if len(found) != 1:
        raise InputError(f"cannot tell the image column of {uri} (candidates: {found or 'none'})")
    return found[0]
