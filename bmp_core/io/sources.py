"""What an ``--input`` names, listed into the one frozen listing, and read back in runs.

Three kinds of input, one listing:

- loose image files (``uris.list_input``: folder, glob, list file, single image): one entry per file;
- WebDataset tar shards (the path, glob or brace pattern ``shard-{000000..000999}.tar`` ends with
  ``.tar``, or a list file lists only ``.tar`` files): one entry per image member,
  ``TAR#MEMBER`` (``tars.py``);
- Parquet image tables (``job.image_column`` set; a ``.parquet`` file, a folder or ``s3://`` prefix
  of them, a glob or a list file): one entry per row, ``FILE#ROW`` (``parquet_images.py``).

Every entry is one ``images`` row, so ids, shards, resume and the listing digest work the same for
all three. A tar or Parquet file (a *container*) is also pinned by its size and version (S3 ETag, or
local mtime) in ``containers_sha256``: a rerun against a rewritten container is refused even when
its listing happens to be the same. Each entry of a container carries a *span*: ``(header offset,
end of data)`` bytes of a tar member, ``(row, row group)`` of a Parquet row. ``read_groups`` cuts a
shard's entries into runs read with one request each; ``read_group`` reads one run.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import posixpath
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bmp_core.io import parquet_images, tars
from bmp_core.io.uris import (
    LIST_FILE_SUFFIXES,
    InputError,
    _read_list_file,
    _to_uri,
    describe_storage,
    filesystem,
    list_input,
    protocol_of,
    sort_unique,
)

logger = logging.getLogger(__name__)

KIND_FILES, KIND_TAR, KIND_PARQUET = "files", "tar", "parquet"
MEMBER_SEP = "#"
LISTING_THREADS = 32  # containers whose headers / footers are read at once (latency-bound on S3)
MAX_RUN_GAP_BYTES = 4 << 20  # a shard's tar members closer than this are read in the same request
MAX_RUN_BYTES = 64 << 20  # ... up to this many bytes per request (bounds a read's memory)


@dataclass(frozen=True)
class Container:
    """A tar or Parquet file of the input, as the plan pins it."""

    uri: str
    size: int
    version: str  # S3 ETag, or the local mtime in ns: a rewrite changes it


@dataclass(frozen=True)
class InputListing:
    """The sorted listing of an input.

    ``spans_start`` / ``spans_end`` (int64, one per URI) are None for loose files.
    ``containers_sha256`` is None for loose files.
    """

    kind: str
    uris: pa.StringArray
    spans_start: pa.Int64Array | None = None
    spans_end: pa.Int64Array | None = None
    containers_sha256: str | None = None
    num_containers: int = 0


@dataclass(frozen=True)
class ReadGroup:
    """Entries of a shard read together: one loose file, one run of a tar, or one Parquet file's rows."""

    kind: str
    container: str | None  # the tar / Parquet file; None for a loose file
    image_ids: tuple[int, ...]
    uris: tuple[str, ...]
    spans: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class RawImage:
    """One entry's bytes as read (``data`` None when reading failed: ``error`` says why)."""

    image_id: int
    uri: str
    data: bytes | None
    error: str | None = None
    container_uri: str | None = None
    key: str | None = None
    read_s: float | None = None


def split_member_uri(uri: str) -> tuple[str, str] | None:
    """``(container URI, member name or row)`` of ``TAR#MEMBER`` / ``FILE#ROW``; None for a loose file."""
    base, sep, rest = uri.partition(MEMBER_SEP)
    if not sep or not base.lower().endswith((tars.TAR_SUFFIX, parquet_images.PARQUET_SUFFIX)):
        return None
    return base, rest


# ------------------------------------------------------------------------------------------
# Brace patterns and container listing

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Every name of a brace pattern: ``{000..003}`` (zero padding kept when the bounds have it),
    ``{a,b}``; several braces multiply. A pattern without braces is itself.

    Raises:
        InputError: an empty alternative list or a range that runs backwards.
    """
    parts: list[list[str]] = []
    last = 0
    for match in _BRACE.finditer(pattern):
        parts.append([pattern[last:match.start()]])
        body = match.group(1)
        rng = _RANGE.match(body)
        if rng:
            lo_s, hi_s = rng.groups()
            lo, hi = int(lo_s), int(hi_s)
            if hi < lo:
                raise InputError(f"brace range {{{body}}} in {pattern} runs backwards")
            width = len(lo_s) if lo_s.startswith("0") and len(lo_s) > 1 else 0
            parts.append([str(n).zfill(width) for n in range(lo, hi + 1)])
        elif "," in body:
            parts.append(body.split(","))
        else:
            parts.append([match.group(0)])  # not a pattern, a literal "{x}"
        last = match.end()
    parts.append([pattern[last:]])
    return ["".join(p) for p in itertools.product(*parts)]


def _version(info: dict) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    return str(mtime)


def _container(fs: object, path: str, info: dict) -> Container:
    return Container(_to_uri(fs, path), int(info.get("size") or 0), _version(info))  # type: ignore[arg-type]


def list_containers(uri: str, suffix: str) -> list[Container]:
    """The ``suffix`` files (``.tar``, ``.parquet``) an input names, sorted by URI, with size and version.

    ``uri``: a file, a folder or prefix (recursive), a glob, a brace pattern, or a list file.

    Raises:
        InputError: nothing found, a brace-pattern name or listed file that does not exist, or a
            listing error (named).
    """
    fs, path = filesystem(uri)
    try:
        if "{" in path and _BRACE.search(path):
            found = _stat_all(fs, [p for p in expand_braces(path)], uri)
        elif any(ch in path for ch in "*?["):
            found = [_container(fs, p, i) for p, i in fs.glob(path, detail=True).items()
                     if p.lower().endswith(suffix) and i.get("type") != "directory"]
        elif fs.isdir(path):
            found = [_container(fs, p, i) for p, i in fs.find(path, detail=True).items()
                     if p.lower().endswith(suffix)]
        elif fs.isfile(path) and path.lower().endswith(LIST_FILE_SUFFIXES):
            listed = _read_list_file(fs.cat_file(path), _to_uri(fs, posixpath.dirname(path))).to_pylist()
            bad = [u for u in listed if not u.lower().endswith(suffix)]
            if bad:
                raise InputError(f"list file {uri} mixes {suffix} files with others (e.g. {bad[0]}); list only "
                                 f"{suffix} files, or only images")
            found = _stat_all(fs, [filesystem(u)[1] for u in listed], uri)
        elif fs.isfile(path):
            found = [_container(fs, path, fs.info(path))]
        else:
            raise InputError(f"input not found: {uri}")
    except InputError:
        raise
    except PermissionError as err:
        raise InputError(f"cannot list {describe_storage(uri)}: permission denied ({err})") from err
    except (OSError, ValueError) as err:
        raise InputError(f"cannot list {describe_storage(uri)}: {type(err).__name__}: {err}") from err
    if not found:
        raise InputError(f"input {uri} names no {suffix} files")
    unique = {c.uri: c for c in found}
    return [unique[u] for u in sorted(unique)]


def _stat_all(fs: object, paths: list[str], uri: str) -> list[Container]:
    """Size and version of each path: one listing per parent folder on S3 (not one HEAD per file)."""
    by_parent: dict[str, list[str]] = {}
    for p in paths:
        by_parent.setdefault(posixpath.dirname(p), []).append(p)
    found, missing = [], []
    for parent, wanted in by_parent.items():
        if protocol_of(uri) == "s3":
            infos = {i["name"]: i for i in fs.ls(parent, detail=True)}  # type: ignore[attr-defined]
        else:
            infos = {}
            for p in wanted:
                with contextlib.suppress(FileNotFoundError):
                    infos[p] = fs.info(p)  # type: ignore[attr-defined]
        for p in wanted:
            if p in infos and infos[p].get("type") != "directory":
                found.append(_container(fs, p, infos[p]))
            else:
                missing.append(p)
    if missing:
        raise InputError(f"{len(missing)} of the {len(paths)} files {uri} names do not exist, e.g. "
                         f"{', '.join(_to_uri(fs, p) for p in missing[:3])}")  # type: ignore[arg-type]
    return found


def containers_digest(containers: Sequence[Container]) -> str:
    """sha256 hex of ``uri\\tsize\\tversion\\n`` of every container, in order."""
    digest = hashlib.sha256()
    for c in containers:
        digest.update(f"{c.uri}\t{c.size}\t{c.version}\n".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------
# The listing


def input_kind(uri: str, image_column: str | None) -> str:
    """Which kind of input ``uri`` is (see the module doc)."""
    if image_column is not None:
        return KIND_PARQUET
    base = uri.rstrip("/")
    if base.lower().endswith(tars.TAR_SUFFIX):
        return KIND_TAR
    if base.lower().endswith(parquet_images.PARQUET_SUFFIX):
        raise InputError(f"{uri} is a Parquet input: pass --image-column (the column of image bytes)")
    if base.lower().endswith(LIST_FILE_SUFFIXES):
        fs, path = filesystem(uri)
        try:
            first = next((line.strip() for line in fs.cat_file(path).decode(errors="replace").splitlines()
                          if line.strip() and not line.strip().startswith("#")), "")
        except (OSError, ValueError):
            return KIND_FILES  # list_input reports the error
        if first.lower().endswith(tars.TAR_SUFFIX):
            return KIND_TAR
    return KIND_FILES


def list_source(uri: str, extensions: Sequence[str], image_column: str | None = None,
                id_column: str | None = None,
                reuse: Callable[[str, str, int], InputListing | None] | None = None) -> InputListing:
    """The sorted listing of any input kind.

    Args:
        uri: the ``--input``.
        extensions: image suffixes: files of a folder or glob, members of a tar.
        image_column, id_column: ``job.image_column`` / ``job.id_column`` (Parquet input).
        reuse: for a tar or Parquet input, called with (kind, containers digest, number of
            containers) once the containers are listed; a listing it returns is used instead of
            reading every tar's headers again (a resume: ``jobs.planner.list_job_input``).

    Raises:
        InputError: the input cannot be listed, lists nothing, or lacks a named column.
    """
    kind = input_kind(uri, image_column)
    if kind == KIND_FILES:
        try:
            return InputListing(KIND_FILES, list_input(uri, extensions))
        except InputError as err:
            raise InputError(f"{err}{_container_hint(uri)}") from err
    t0 = time.perf_counter()
    suffix = tars.TAR_SUFFIX if kind == KIND_TAR else parquet_images.PARQUET_SUFFIX
    containers = list_containers(uri, suffix)
    if reuse is not None:
        frozen = reuse(kind, containers_digest(containers), len(containers))
        if frozen is not None:
            logger.info("%d %s file(s) unchanged since the plan: their %d entries are the frozen listing's",
                        len(containers), suffix, len(frozen.uris))
            return frozen
    with ThreadPoolExecutor(min(LISTING_THREADS, len(containers))) as pool:
        if kind == KIND_TAR:
            parts = list(pool.map(lambda c: _tar_entries(c.uri, extensions), containers))
        else:
            assert image_column is not None
            parts = list(pool.map(lambda c: _parquet_entries(c.uri, image_column, id_column), containers))
    uris = pa.concat_arrays([p[0] for p in parts]) if parts else pa.array([], pa.string())
    starts = pa.concat_arrays([p[1] for p in parts])
    ends = pa.concat_arrays([p[2] for p in parts])
    if len(uris) == 0:
        what = f"image members ({', '.join(extensions)})" if kind == KIND_TAR else "rows"
        raise InputError(f"input {uri}: its {len(containers)} {suffix} file(s) hold no {what}")
    order = pc.sort_indices(uris)
    uris, starts, ends = pc.take(uris, order), pc.take(starts, order), pc.take(ends, order)
    if len(sort_unique(uris)) != len(uris):  # only when two inputs name the same container twice
        raise InputError(f"input {uri} names the same entry twice")
    logger.info("listed %d %s entries in %d %s file(s) in %.1f s", len(uris), kind, len(containers), suffix,
                time.perf_counter() - t0)
    return InputListing(kind, uris, starts, ends, containers_digest(containers), len(containers))


def _container_hint(uri: str) -> str:
    """A hint when a folder that lists no images holds tars or Parquet files (named another way)."""
    try:
        fs, path = filesystem(uri)
        if not fs.isdir(path):
            return ""
        for suffix, how in ((tars.TAR_SUFFIX, f"--input '{uri.rstrip('/')}/*.tar'"),
                            (parquet_images.PARQUET_SUFFIX, "--image-column COL")):
            if fs.glob(posixpath.join(path, f"**/*{suffix}")):
                return f"; it holds {suffix} files: for those use {how}"
    except (OSError, ValueError):
        pass
    return ""


def _tar_entries(tar_uri: str, extensions: Sequence[str]) -> tuple[pa.Array, pa.Array, pa.Array]:
    members = tars.list_tar_members(tar_uri, extensions)
    uris = pa.array([f"{tar_uri}{MEMBER_SEP}{m.name}" for m in members], pa.string())
    return (uris, pa.array([m.offset for m in members], pa.int64()), pa.array([m.end for m in members], pa.int64()))


def _parquet_entries(file_uri: str, image_column: str, id_column: str | None) -> tuple[pa.Array, pa.Array, pa.Array]:
    footer = parquet_images.read_footer(file_uri, image_column, id_column)
    rows = np.arange(footer.num_rows, dtype=np.int64)
    # Vectorised "FILE#000000000042": a table of millions of rows costs no Python string per row.
    padded = pc.utf8_lpad(pa.array(rows).cast(pa.string()), parquet_images.ROW_DIGITS, "0")
    uris = pc.binary_join_element_wise(pa.scalar(f"{file_uri}{MEMBER_SEP}"), padded, pa.scalar(""))
    # A row's span is (row, its row group): the worker reads a shard row group by row group.
    groups = np.repeat(np.arange(len(footer.row_group_rows), dtype=np.int64), footer.row_group_rows)
    return uris.cast(pa.string()), pa.array(rows), pa.array(groups)


# ------------------------------------------------------------------------------------------
# Reading a shard's entries back


def read_groups(kind: str, image_ids: Sequence[int], uris: Sequence[str],
                spans: Sequence[tuple[int, int]], max_run: int) -> list[ReadGroup]:
    """Cut a shard into what is read together, in the order to read it.

    Loose files: one group each. A tar: its members sorted by offset, cut into runs of at most
    ``max_run`` members whose gaps and size stay small (each run is one ranged read; a shard's
    runs never overlap, so a shard reads its part of the tar once). A Parquet file: the shard's
    rows of each row group (read in batches of ``READ_BATCH_ROWS``, image and id columns only).
    """
    if kind == KIND_FILES:
        return [ReadGroup(KIND_FILES, None, (i,), (u,)) for i, u in zip(image_ids, uris, strict=True)]
    by_container: dict[str, list[tuple[int, str, tuple[int, int]]]] = {}
    for image_id, uri, span in zip(image_ids, uris, spans, strict=True):
        split = split_member_uri(uri)
        if split is None:
            raise ValueError(f"{uri} is not a {kind} entry")
        by_container.setdefault(split[0], []).append((image_id, uri, span))
    groups = []
    for container, entries in by_container.items():
        entries.sort(key=lambda e: e[2][0])
        if kind == KIND_PARQUET:
            for _, rows in itertools.groupby(entries, key=lambda e: e[2][1]):  # one read per row group
                groups.append(_group(kind, container, list(rows)))
            continue
        run: list[tuple[int, str, tuple[int, int]]] = []
        for entry in entries:
            if run and (len(run) >= max_run or entry[2][0] - run[-1][2][1] > MAX_RUN_GAP_BYTES
                        or entry[2][1] - run[0][2][0] > MAX_RUN_BYTES):
                groups.append(_group(kind, container, run))
                run = []
            run.append(entry)
        if run:
            groups.append(_group(kind, container, run))
    return groups


def _group(kind: str, container: str, entries: list[tuple[int, str, tuple[int, int]]]) -> ReadGroup:
    return ReadGroup(kind, container, tuple(e[0] for e in entries), tuple(e[1] for e in entries),
                     tuple(e[2] for e in entries))


def read_error(err: Exception) -> str:
    """The ``images`` error of a failed read."""
    if isinstance(err, FileNotFoundError):
        return "missing file (not found)"
    if isinstance(err, IsADirectoryError):
        return "not a file (a directory)"
    if isinstance(err, PermissionError):
        return f"permission denied ({err})"
    return f"read failed: {type(err).__name__}: {err}"


def read_group(group: ReadGroup, image_column: str | None = None, id_column: str | None = None) -> list[RawImage]:
    """The bytes of every entry of a group (errors as ``RawImage.error``, never raised for one entry)."""
    from bmp_core.io.uris import read_bytes

    t0 = time.perf_counter()
    if group.kind == KIND_FILES:
        (image_id,), (uri,) = group.image_ids, group.uris
        try:
            data = read_bytes(uri)
        except OSError as err:
            return [RawImage(image_id, uri, None, read_error(err))]
        return [RawImage(image_id, uri, data, read_s=time.perf_counter() - t0)]
    assert group.container is not None
    if group.kind == KIND_TAR:
        return _read_tar_group(group, t0)
    if image_column is None:
        raise ValueError("a Parquet input needs job.image_column")
    return _read_parquet_group(group, image_column, id_column, t0)


def _read_tar_group(group: ReadGroup, t0: float) -> list[RawImage]:
    container = group.container
    assert container is not None
    names = [u[len(container) + len(MEMBER_SEP):] for u in group.uris]
    try:
        buffer, start = tars.read_tar_span(container, group.spans[0][0], group.spans[-1][1])
    except OSError as err:
        reason = read_error(err)
        return [RawImage(i, u, None, reason, container, tars.webdataset_key(n))
                for i, u, n in zip(group.image_ids, group.uris, names, strict=True)]
    per_image_s = (time.perf_counter() - t0) / len(names)  # one request for the run, shared evenly
    out = []
    for image_id, uri, name, (offset, end) in zip(group.image_ids, group.uris, names, group.spans, strict=True):
        key = tars.webdataset_key(name)
        try:
            data = tars.member_bytes(buffer, start, name, offset, end)
        except tars.TarMemberError as err:
            out.append(RawImage(image_id, uri, None, str(err), container, key))
            continue
        out.append(RawImage(image_id, uri, data, None, container, key, per_image_s))
    return out


def _read_parquet_group(group: ReadGroup, image_column: str, id_column: str | None, t0: float) -> list[RawImage]:
    container = group.container
    assert container is not None
    by_row = {span[0]: (i, u) for i, u, span in zip(group.image_ids, group.uris, group.spans, strict=True)}
    try:
        rows = list(parquet_images.read_rows(container, sorted(by_row), image_column, id_column))
    except (OSError, pa.ArrowException) as err:
        reason = read_error(err)
        return [RawImage(i, u, None, reason, container) for i, u in zip(group.image_ids, group.uris, strict=True)]
    per_image_s = (time.perf_counter() - t0) / max(1, len(rows))
    return [RawImage(by_row[r.row][0], by_row[r.row][1], r.data, r.error, container, r.key,
                     None if r.error else per_image_s) for r in rows]


def read_entry_bytes(uri: str, image_column: str | None = None) -> bytes:
    """The bytes of one listing entry of any kind (reading an image back: viz, report).

    Raises:
        FileNotFoundError, OSError: it cannot be read.
    """
    from bmp_core.io.uris import read_bytes

    split = split_member_uri(uri)
    if split is None:
        return read_bytes(uri)
    container, rest = split
    if container.lower().endswith(tars.TAR_SUFFIX):
        return tars.read_member_by_name(container, rest)
    column = image_column or parquet_images.guess_image_column(container)
    (row,) = parquet_images.read_rows(container, [int(rest)], column, None)
    if row.data is None:
        raise OSError(row.error)
    return row.data
