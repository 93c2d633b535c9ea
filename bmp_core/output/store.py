"""One output location (local folder or ``s3://`` prefix) through fsspec, with atomic writes.

Every file the job, finalize, traces and the inspection commands write into an output goes
through ``OutputStore``: a reader never sees half a file, locally (temp file + rename) or on S3 (one
PUT, atomic already; streamed text is a multipart upload, visible only once complete).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from bmp_core.errors import UserError
from bmp_core.io.uris import filesystem, join_uri, protocol_of


class OutputStateError(UserError, RuntimeError):
    """The output cannot be used as asked (changed config or listing, locked); the message says why."""

    default_hint = "use another --output, or --force to start it over (see docs/running-jobs.md)"


def write_file_atomic(path: str, data: bytes, replace: bool = True) -> bool:
    """Write a complete local file under ``path`` in one step.

    The bytes go to a temp file beside it first; then ``os.replace`` (``replace=True``: the new
    content wins) or ``os.link`` (``replace=False``: created only if the name does not exist yet,
    atomic against concurrent creators, which the output lock relies on).

    Returns:
        True written; False only with ``replace=False`` when ``path`` already existed.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class OutputStore:
    """Reads and writes one output location; ``rel`` arguments are paths inside it (``layout.py``)."""

    def __init__(self, output_uri: str) -> None:
        self.uri = output_uri.rstrip("/") if "://" in output_uri else output_uri
        self.fs, self.root = filesystem(self.uri)
        self.is_local = protocol_of(self.uri) == "file"
        if self.is_local:
            self.uri = self.root  # absolute: workers may run in another directory

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def uri_of(self, *parts: str) -> str:
        return join_uri(self.uri, *parts)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole object atomically (``write_file_atomic`` locally; one PUT on S3)."""
        if self.is_local:
            write_file_atomic(self.path(rel), data)
        else:
            self.fs.pipe_file(self.path(rel), data)

    @contextlib.contextmanager
    def open_text_for_write(self, rel: str) -> Iterator[IO[str]]:
        """A text file streamed to ``rel`` (local: temp + rename on success; S3: multipart upload)."""
        path = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    yield f
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            # Not fsspec's text mode: closing that file commits it, so a write that failed half-way would
            # leave half an object. With autocommit=False closing only uploads (s3fs: parts of a multipart
            # upload); commit() then makes the object appear whole, discard() aborts the upload.
            raw = self.fs.open(path, "wb", autocommit=False)
            try:
                with io.TextIOWrapper(raw, encoding="utf-8") as f:
                    yield f
            except BaseException:
                raw.discard()
                raise
            raw.commit()

    def read_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            return None

    def read_many(self, rels: Sequence[str]) -> dict[str, bytes]:
        """``rel -> bytes`` of the objects that exist, fetched in one concurrent batch (s3fs fetches a
        list of keys in parallel: thousands of commit markers take a second or two, not a round trip
        each)."""
        if not rels:
            return {}
        by_path = {self.path(rel): rel for rel in rels}
        blobs = self.fs.cat(list(by_path), on_error="omit")
        return {by_path[p]: data for p, data in blobs.items() if p in by_path}

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        return None if data is None else json.loads(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=False).encode())

    def write_table(self, rel: str, table: pa.Table) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(rel, sink.getvalue())

    def read_parquet(self, rel: str, columns: Sequence[str] | None = None,
                     filters: list[Any] | None = None) -> pa.Table:
        """One Parquet file; through a file object, so only ``columns`` are fetched.

        A column of ``columns`` the file does not have is left out rather than refused: a part written before
        a nullable column existed (the reader adds it as nulls, ``reader._cast``) reads like a newer one.
        """
        with self.fs.open(self.path(rel), "rb") as f:
            if columns is None:
                return pq.read_table(f, filters=filters)
            parquet = pq.ParquetFile(f)
            present = set(parquet.schema_arrow.names)
            f.seek(0)
            return pq.read_table(f, columns=[c for c in columns if c in present], filters=filters)

    def list_dir(self, rel: str) -> list[str]:
        """Names (not paths) of the objects directly under ``rel``; [] when it does not exist."""
        self.fs.invalidate_cache()  # s3fs caches listings; another process may have written since
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel), detail=False))
        except FileNotFoundError:
            return []

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(rel), recursive=True)
