"""Local paths and ``s3://`` URIs behind one fsspec interface, and the listing of an input.

S3 settings come from the standard AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, read by botocore
itself) plus the endpoint, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, which we pass to s3fs
explicitly so MinIO and moto work with any s3fs version. Credentials are never copied into our
own objects, logs or outputs: ``describe_storage`` is what may be logged.

An input is one of: a folder (recursive, filtered by extension), a glob (``*``, ``?``, ``[``;
filtered by extension), a list file (``.txt``/``.lst``/``.list``: one URI or path per line,
``#`` comments; relative paths are relative to the list file; not filtered, so a listed
non-image becomes an error row rather than silently disappearing), or a single image.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bmp_core.errors import UserError

logger = logging.getLogger(__name__)

LIST_FILE_SUFFIXES = (".txt", ".lst", ".list")


class InputError(UserError, ValueError):
    """The input or output location cannot be used; the message says what to fix."""

    default_hint = "check the --input / --output path or URI (and, for s3://, the AWS settings)"


def storage_options(uri: str) -> dict[str, Any]:
    """fsspec options for ``uri``'s protocol (S3: the endpoint from the environment)."""
    if protocol_of(uri) != "s3":
        return {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def describe_storage(uri: str) -> str:
    """A loggable description of where ``uri`` lives (endpoint, never credentials)."""
    if protocol_of(uri) != "s3":
        return f"local filesystem ({uri})"
    endpoint = storage_options(uri).get("client_kwargs", {}).get("endpoint_url", "AWS default endpoint")
    source = "AWS_PROFILE" if os.environ.get("AWS_PROFILE") else (
        "AWS_ACCESS_KEY_ID" if os.environ.get("AWS_ACCESS_KEY_ID") else "botocore default chain"
    )
    return f"S3 {uri} via {endpoint} (credentials from {source})"


def protocol_of(uri: str) -> str:
    """``"s3"`` for ``s3://`` URIs, ``"file"`` for local paths and ``file://`` URIs."""
    if "://" not in uri:
        return "file"
    scheme = uri.split("://", 1)[0].lower()
    return "s3" if scheme in ("s3", "s3a") else scheme


_FS_CACHE: dict[tuple[str, str], fsspec.AbstractFileSystem] = {}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for ``uri``; one filesystem object per protocol and endpoint."""
    protocol = protocol_of(uri)
    options = storage_options(uri)
    key = (protocol, repr(options))
    if key not in _FS_CACHE:
        _FS_CACHE[key] = fsspec.filesystem(protocol, **options)
    fs = _FS_CACHE[key]
    if protocol == "file":
        path = uri.removeprefix("file://")
        return fs, os.path.abspath(os.path.expanduser(path))
    return fs, fs._strip_protocol(uri)


def join_uri(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or an ``s3://`` prefix."""
    return posixpath.join(base.rstrip("/"), *parts) if "://" in base else os.path.join(base, *parts)


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URI of a path as ``fs`` names it (``s3://bucket/key`` for S3, the path itself locally)."""
    return path if protocol_of_fs(fs) == "file" else f"s3://{path}"


def protocol_of_fs(fs: fsspec.AbstractFileSystem) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "s3" if protocol in ("s3", "s3a") else ("file" if protocol in ("file", "local") else protocol)


def read_bytes(uri: str) -> bytes:
    """The whole object at ``uri``.

    Raises:
        FileNotFoundError, PermissionError, OSError: as fsspec reports them.
    """
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def sha256_of(uri: str, chunk_bytes: int = 8 << 20) -> str:
    """sha256 hex of a file's content, read in chunks (a boxes file of millions of images is large).

    Raises:
        InputError: the file cannot be read; the message names it.
    """
    import hashlib

    digest = hashlib.sha256()
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            while chunk := f.read(chunk_bytes):
                digest.update(chunk)
    except FileNotFoundError as err:
        raise InputError(f"file not found: {uri}") from err
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {describe_storage(uri)}: {type(err).__name__}: {err}") from err
    return digest.hexdigest()


def list_input(uri: str, extensions: Sequence[str]) -> pa.StringArray:
    """Every image URI of the input, sorted, without duplicates.

    Args:
        uri: folder, glob, list file or single image, local or ``s3://``.
        extensions: lower-case suffixes (``.jpg``) kept when listing a folder or a glob.

    Returns:
        A sorted, de-duplicated ``pa.StringArray`` of absolute paths / ``s3://`` URIs. A list file
        of a million lines is handled without one Python object per line.

    Raises:
        InputError: the input does not exist, or lists nothing.
    """
    fs, path = filesystem(uri)
    try:
        if any(ch in path for ch in "*?["):
            found = _filter_ext(fs.glob(path), extensions)
            uris = pa.array([to_uri(fs, p) for p in found], pa.string())
        elif fs.isdir(path):
            uris = _list_folder(fs, path, extensions)
        elif fs.isfile(path) and path.lower().endswith(LIST_FILE_SUFFIXES):
            uris = read_list_file(fs.cat_file(path), to_uri(fs, posixpath.dirname(path)))
        elif fs.isfile(path):
            uris = pa.array([to_uri(fs, path)], pa.string())
        else:
            raise InputError(f"input not found: {uri} (expected a folder, a glob, a .txt list file or an image)")
    except InputError:
        raise
    except PermissionError as err:
        raise InputError(f"cannot list {describe_storage(uri)}: permission denied ({err}); check the AWS "
                         "credentials / bucket policy") from err
    except (OSError, ValueError) as err:
        raise InputError(f"cannot list {describe_storage(uri)}: {type(err).__name__}: {err}") from err
    if len(uris) == 0:
        raise InputError(f"input {uri} lists no images (extensions: {', '.join(extensions)})")
    return sort_unique(uris)


LIST_CHUNK = 100_000  # paths held as Python strings at once while listing a folder


def _list_folder(fs: fsspec.AbstractFileSystem, path: str, extensions: Sequence[str]) -> pa.StringArray:
    """Every file under the folder ``path`` (recursive) with one of ``extensions``, as URIs.

    Streamed page by page into Arrow chunks: ``fs.find`` builds an info dict per object (and s3fs
    caches them all), ~1 KB each, which for a prefix of 10 million images is ~10 GB on the driver.
    Here at most ``LIST_CHUNK`` paths are Python objects at a time. Symlinked folders are not
    entered (as ``fs.find``); symlinked files are listed.
    """
    exts = tuple(e.lower() for e in extensions)
    chunks: list[pa.Array] = []
    pending: list[str] = []
    for names in _iter_folder(fs, path):
        pending.extend(to_uri(fs, p) for p in names if p.lower().endswith(exts))
        if len(pending) >= LIST_CHUNK:
            chunks.append(pa.array(pending, pa.string()))
            pending = []
    chunks.append(pa.array(pending, pa.string()))
    return pa.concat_arrays(chunks)


def _iter_folder(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[list[str]]:
    """Pages of file paths under ``path`` in the filesystem's own form (no ``s3://``)."""
    protocol = protocol_of_fs(fs)
    if protocol == "file":
        for root, _dirs, files in os.walk(path, onerror=_raise):
            yield [os.path.join(root, f) for f in files]
    elif protocol == "s3":
        bucket, key, _ = fs.split_path(path)
        request = {"Bucket": bucket, "Prefix": f"{key.rstrip('/')}/" if key else "", **getattr(fs, "req_kw", {})}
        while True:  # list_objects_v2 pages of up to 1000 keys, all levels (no delimiter)
            page = fs.call_s3("list_objects_v2", **request)
            yield [f"{bucket}/{c['Key']}" for c in page.get("Contents", []) if not c["Key"].endswith("/")]
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]
    else:
        yield fs.find(path)


def _raise(err: OSError) -> None:
    raise err


def _filter_ext(paths: Sequence[str], extensions: Sequence[str]) -> list[str]:
    exts = tuple(e.lower() for e in extensions)
    return [p for p in paths if p.lower().endswith(exts)]


def sort_unique(uris: pa.StringArray) -> pa.StringArray:
    """Sorted by code point (byte order of UTF-8), duplicates dropped."""
    uris = pc.take(uris, pc.sort_indices(uris))
    if len(uris) < 2:
        return uris
    # Sorted, so duplicates are neighbours: cheaper than a hash-based unique().
    differs = pc.not_equal(uris.slice(1), uris.slice(0, len(uris) - 1))
    keep = pa.concat_arrays([pa.array([True]), differs])
    return pc.filter(uris, keep)


def read_list_file(data: bytes, base_uri: str) -> pa.StringArray:
    """One URI per line -> StringArray, built from the buffer (no per-line Python objects); relative
    lines are resolved against ``base_uri`` (the list file's folder)."""
    if not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == ord("\n")).astype(np.int64)
    offsets = np.concatenate([[0], ends + 1]).astype(np.int64)
    # Each line includes its "\n"; trimming whitespace removes it (and "\r", stray spaces).
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data))
    lines = pc.utf8_trim_whitespace(lines)
    keep = pc.and_(pc.not_equal(pc.utf8_length(lines), 0), pc.invert(pc.starts_with(lines, "#")))
    lines = pc.filter(lines, keep)
    # Relative entries are relative to the list file's folder.
    absolute = pc.or_(pc.match_substring(lines, "://"), pc.starts_with(lines, "/"))
    if not pc.all(absolute).as_py():  # only then pay for the joined copy
        base = pa.scalar(base_uri.rstrip("/") + "/", pa.large_string())
        prefixed = pc.binary_join_element_wise(base, lines, pa.scalar("", pa.large_string()))
        lines = pc.if_else(absolute, lines, prefixed)
    return lines.cast(pa.string())
