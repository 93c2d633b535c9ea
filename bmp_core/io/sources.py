"""What an ``--input`` names, listed into the one frozen listing, and read back by the workers.

Three kinds of input, one ``InputKind`` class each (``FilesInput``, ``TarInput``, ``ParquetInput``),
registered in ``INPUT_KINDS``; the planner and the workers call them and never ask which kind they have:

- loose image files (``uris.list_input``: folder, glob, list file, single image): one listing entry
  (one image) per file;
- WebDataset tar shards (the path, glob or brace pattern ``shard-{000000..000999}.tar`` ends with
  ``.tar``, or a list file lists only ``.tar`` files): one listing entry per *tar*, pinned by its
  size and version and never opened by the planner; the worker streams it and makes one image per
  image member, ``TAR#MEMBER`` (``stream_tar``; the numbering is in ``tars.py``);
- Parquet image tables (``job.image_column`` set; a ``.parquet`` file, a folder or ``s3://`` prefix
  of them, a glob or a list file): one entry per row, ``FILE#ROW`` (``parquet_images.py``; a file's
  footer says how many rows it has, so the planner reads the footers, not the rows).

A tar or Parquet file (a *container*) is pinned by its size and version (S3 ETag, or local mtime)
in ``containers_sha256``: a rerun against a rewritten container is refused even when its listing
happens to be the same, and a worker that finds a tar other than the plan's stops
(``InputChangedError``). A Parquet row carries a *span* ``(row, row group)``; ``read_groups`` cuts
a shard's rows into row groups, ``read_group`` reads one.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import posixpath
import re
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bmp_core.config import JobConfig
from bmp_core.io import parquet_images, tars
from bmp_core.io.prefetch import prefetch, read_ahead
from bmp_core.io.uris import (
    LIST_FILE_SUFFIXES,
    InputError,
    describe_storage,
    filesystem,
    list_input,
    protocol_of,
    read_list_file,
    sort_unique,
    to_uri,
)

logger = logging.getLogger(__name__)

KIND_FILES, KIND_TAR, KIND_PARQUET = "files", "tar", "parquet"
MEMBER_SEP = "#"
LISTING_THREADS = 32  # Parquet footers read at once (latency-bound on S3)
T = TypeVar("T")


@dataclass(frozen=True)
class Container:
    """A tar or Parquet file of the input, as the plan pins it."""

    uri: str
    size: int
    version: str  # S3 ETag, or the local mtime in ns: a rewrite changes it


@dataclass(frozen=True)
class InputListing:
    """The sorted listing of an input.

    ``uris``: one per image (loose files, Parquet rows), or one per tar (a tar input: ``tars``
    holds the same tars with their pinned sizes and versions, in the same order).
    ``spans_start`` / ``spans_end`` (int64, one per URI): a Parquet row's (row, row group); None otherwise.
    ``containers_sha256`` is None for loose files.
    """

    kind: str
    uris: pa.StringArray
    spans_start: pa.Int64Array | None = None
    spans_end: pa.Int64Array | None = None
    containers_sha256: str | None = None
    num_containers: int = 0
    tars: tuple[Container, ...] = ()

    @property
    def total_bytes(self) -> int:
        """The tars' bytes (a tar input; 0 otherwise)."""
        return sum(c.size for c in self.tars)


class InputChangedError(InputError):
    """A tar the plan pinned is not the same file any more (rewritten, resized or deleted)."""


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
    end_offset: int | None = None  # a tar member: the byte just past its data (how far the stream got)


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
    return Container(to_uri(fs, path), int(info.get("size") or 0), _version(info))  # type: ignore[arg-type]


def list_containers(uri: str, suffix: str) -> list[Container]:
    """The ``suffix`` files (``.tar``, ``.parquet``) an input names, sorted by URI, with size and version.

    ``uri``: a file, a folder or prefix (recursive), a glob, a brace pattern, or a list file.

    Raises:
        InputError: nothing found, a brace-pattern name or listed file that does not exist, or a
            listing error (named).
    """
    fs, path = filesystem(uri)
    # The input as it is now: s3fs answers from the listings it cached earlier in this process (a second
    # job or a price estimate in one Python process) and would hide a rewritten, added or deleted file.
    fs.invalidate_cache()
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
            listed = read_list_file(fs.cat_file(path), to_uri(fs, posixpath.dirname(path))).to_pylist()
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
                         f"{', '.join(to_uri(fs, p) for p in missing[:3])}")  # type: ignore[arg-type]
    return found


def containers_digest(containers: Sequence[Container]) -> str:
    """sha256 hex of ``uri\\tsize\\tversion\\n`` of every container, in order."""
    digest = hashlib.sha256()
    for c in containers:
        digest.update(f"{c.uri}\t{c.size}\t{c.version}\n".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------
# The listing


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


def read_error(err: Exception) -> str:
    """The ``images`` error of a failed read."""
    if isinstance(err, FileNotFoundError):
        return "missing file (not found)"
    if isinstance(err, IsADirectoryError):
        return "not a file (a directory)"
    if isinstance(err, PermissionError):
        return f"permission denied ({err})"
    return f"read failed: {type(err).__name__}: {err}"


def check_unchanged(tar: Container) -> None:
    """Refuse to read a tar that is not the one the plan pinned (one HEAD / stat).

    Raises:
        InputChangedError: it was rewritten (other size or version) or deleted since the plan.
    """
    fs, path = filesystem(tar.uri)
    try:
        # refresh: a HEAD now, not s3fs's listing cache (a listing in this process would hide a rewrite)
        now = _container(fs, path, fs.info(path, refresh=True))  # type: ignore[attr-defined]
    except FileNotFoundError as err:
        raise InputChangedError(f"the tar {tar.uri} was deleted since the plan froze the input") from err
    if (now.size, now.version) != (tar.size, tar.version):
        raise InputChangedError(
            f"the tar {tar.uri} changed since the plan froze the input (size {tar.size} then, {now.size} now; "
            f"version {tar.version} then, {now.version} now): its members are no longer the plan's. Restore it, "
            "or label the changed input into a new --output (or pass --force to start this one over)")


def stream_tar(tar: Container, extensions: Sequence[str], first_image_id: int) -> Iterator[RawImage]:
    """Every image member of one tar as a ``RawImage``, front to back in one sequential read.

    Image ``first_image_id + k`` is the tar's image member ``k`` (``tars.iter_tar_images``: a cut,
    duplicate or unreadable member is a ``RawImage`` with an error). A file that is not a tar at
    all is one ``RawImage`` for the tar itself (its URI, an error): the tar is an ``images`` row
    like any input that cannot be read, rather than a job that stops.

    Raises:
        InputChangedError: the tar is not the plan's (``check_unchanged``), checked before reading.
        InputError: the tar holds more than ``tars.TAR_ID_STRIDE`` image members.
        OSError: storage failed mid-read (the shard fails and is retried).
    """
    check_unchanged(tar)
    fs, path = filesystem(tar.uri)
    opener = (fs.open(path, "rb", block_size=tars.STREAM_BLOCK_BYTES, cache_type="readahead")
              if protocol_of(tar.uri) == "s3" else fs.open(path, "rb"))
    t0 = time.perf_counter()
    with opener as f:
        members = tars.iter_tar_images(f, tar.uri, tar.size, extensions)
        try:
            first = next(members, None)
        except tarfile.ReadError as err:  # the first header: nothing in the file can be named
            yield RawImage(first_image_id, tar.uri, None, f"not a tar archive (or empty): {err}", tar.uri)
            return
        for member in itertools.chain([] if first is None else [first], members):
            if member.ordinal >= tars.TAR_ID_STRIDE:
                raise InputError(f"the tar {tar.uri} holds more than {tars.TAR_ID_STRIDE} image members: split it "
                                 "into smaller tars")
            read_s = time.perf_counter() - t0  # this member's share of the stream (the consumer's time excluded)
            yield RawImage(first_image_id + member.ordinal, f"{tar.uri}{MEMBER_SEP}{member.name}", member.data,
                           member.error, tar.uri, tars.webdataset_key(member.name),
                           None if member.error else read_s, member.end)
            t0 = time.perf_counter()


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
    split = split_member_uri(uri)
    if split is None:
        return FilesInput().read_entry(uri, "", image_column)
    container, rest = split
    kind = next(k for k in INPUT_KINDS.values() if k.suffix and container.lower().endswith(k.suffix))
    return kind.read_entry(container, rest, image_column)


# ------------------------------------------------------------------------------------------
# The input kinds: one class each, registered in INPUT_KINDS


@dataclass(frozen=True)
class ShardEntries:
    """What a worker reads for one shard: listed entries (ids, URIs and, for Parquet rows, their spans),
    or tars to stream, each with the id of its first image member."""

    image_ids: Sequence[int] = ()
    uris: Sequence[str] = ()
    spans: Sequence[tuple[int, int]] = ()
    tars: Sequence[tuple[Container, int]] = ()


class InputKind:
    """One kind of input: how an ``--input`` is recognised (``claims``), listed (``list``), frozen
    (``listing_table``) and read back, a shard at a time (``read_ahead``) or one entry (``read_entry``).

    One subclass per kind, registered in ``INPUT_KINDS``; nothing outside this module asks which kind
    an input is (a listing's ``kind`` and a ``ShardTask``'s name their class). Adding a kind: a subclass
    and its entry there.
    """

    name = ""  # InputListing.kind, ShardTask.kind
    suffix = ""  # the container files' suffix (a kind of files inside files), "" for loose files

    def claims(self, uri: str, image_column: str | None) -> bool:
        """Whether ``uri`` is an input of this kind (asked in ``INPUT_KINDS`` order)."""
        raise NotImplementedError

    def list(self, uri: str, extensions: Sequence[str], image_column: str | None, id_column: str | None,
             reuse: Callable[[str, int], pa.Table | None] | None) -> InputListing:
        """The sorted listing (``list_source``)."""
        raise NotImplementedError

    def listing_table(self, listing: InputListing) -> pa.Table:
        """The frozen listing as a table (``listing.parquet``): ``image_id`` (int64), ``uri`` (string)."""
        return pa.table({"image_id": pa.array(np.arange(len(listing.uris), dtype=np.int64)),
                         "uri": listing.uris.cast(pa.string())})

    def read_groups(self, image_ids: Sequence[int], uris: Sequence[str],
                    spans: Sequence[tuple[int, int]]) -> list[ReadGroup]:
        """A shard's entries cut into what is read together, in the order to read it."""
        raise ValueError(f"read_groups: a {self.name} input is not read in groups")

    def read_group(self, group: ReadGroup, image_column: str | None, id_column: str | None) -> list[RawImage]:
        """The bytes of every entry of a group (errors as ``RawImage.error``, never raised for one entry)."""
        raise ValueError(f"read_group: a {self.name} input is not read in groups")

    def read_ahead(self, shard: ShardEntries, job: JobConfig, pool: Executor, decode: Callable[[RawImage], T],
                   window: int) -> Iterator[T]:
        """A shard's entries read on ``pool`` and ``decode``d, in read order, at most ``window`` ahead."""
        groups = self.read_groups(shard.image_ids, shard.uris, shard.spans)
        raw = prefetch(pool, lambda g: self.read_group(g, job.image_column, job.id_column), groups,
                       max(2, -(-window // job.batch_size)))
        return prefetch(pool, decode, (image for group in raw for image in group), window)

    def read_entry(self, container: str, rest: str, image_column: str | None) -> bytes:
        """One entry's bytes: ``container`` and the part after ``#`` of its URI (a loose file: its URI, "")."""
        raise NotImplementedError


class FilesInput(InputKind):
    """Loose image files: one entry (one image) per file."""

    name = KIND_FILES

    def claims(self, uri: str, image_column: str | None) -> bool:
        return True  # whatever no other kind claims

    def list(self, uri: str, extensions: Sequence[str], image_column: str | None, id_column: str | None,
             reuse: Callable[[str, int], pa.Table | None] | None) -> InputListing:
        try:
            return InputListing(self.name, list_input(uri, extensions))
        except InputError as err:
            raise InputError(f"{err}{_container_hint(uri)}") from err

    def read_groups(self, image_ids: Sequence[int], uris: Sequence[str],
                    spans: Sequence[tuple[int, int]]) -> list[ReadGroup]:
        return [ReadGroup(self.name, None, (i,), (u,)) for i, u in zip(image_ids, uris, strict=True)]

    def read_group(self, group: ReadGroup, image_column: str | None = None,
                   id_column: str | None = None) -> list[RawImage]:
        from bmp_core.io.uris import read_bytes

        t0 = time.perf_counter()
        (image_id,), (uri,) = group.image_ids, group.uris
        try:
            data = read_bytes(uri)
        except OSError as err:
            return [RawImage(image_id, uri, None, read_error(err))]
        return [RawImage(image_id, uri, data, read_s=time.perf_counter() - t0)]

    def read_ahead(self, shard: ShardEntries, job: JobConfig, pool: Executor, decode: Callable[[RawImage], T],
                   window: int) -> Iterator[T]:
        # A loose file is read and decoded by one task.
        groups = self.read_groups(shard.image_ids, shard.uris, shard.spans)
        return prefetch(pool, lambda g: decode(self.read_group(g)[0]), groups, window)

    def read_entry(self, container: str, rest: str, image_column: str | None) -> bytes:
        from bmp_core.io.uris import read_bytes

        return read_bytes(container)


class TarInput(InputKind):
    """WebDataset tar shards: one entry per *tar*, pinned, never opened by the planner; the worker streams
    it (``stream_tar``) and makes one image per image member. One shard per tar."""

    name = KIND_TAR
    suffix = tars.TAR_SUFFIX

    def claims(self, uri: str, image_column: str | None) -> bool:
        base = uri.rstrip("/")
        if image_column is not None:
            return False
        if base.lower().endswith(tars.TAR_SUFFIX):
            return True
        if base.lower().endswith(LIST_FILE_SUFFIXES):  # a list file of tars
            fs, path = filesystem(uri)
            try:
                first = next((line.strip() for line in fs.cat_file(path).decode(errors="replace").splitlines()
                              if line.strip() and not line.strip().startswith("#")), "")
            except (OSError, ValueError):
                return False  # list_input reports the error
            return first.lower().endswith(tars.TAR_SUFFIX)
        return False

    def list(self, uri: str, extensions: Sequence[str], image_column: str | None, id_column: str | None,
             reuse: Callable[[str, int], pa.Table | None] | None) -> InputListing:
        t0 = time.perf_counter()
        containers = list_containers(uri, self.suffix)
        # pinned, never opened: the workers enumerate the members
        logger.info("listed %d tar file(s), %d bytes, in %.1f s", len(containers), sum(c.size for c in containers),
                    time.perf_counter() - t0)
        return InputListing(self.name, pa.array([c.uri for c in containers], pa.string()),
                            containers_sha256=containers_digest(containers), num_containers=len(containers),
                            tars=tuple(containers))

    def listing_table(self, listing: InputListing) -> pa.Table:
        """``shard_id`` (int64), ``uri``, ``size`` (int64 bytes), ``version`` (S3 ETag or local mtime) of
        each tar."""
        return pa.table({"shard_id": pa.array(np.arange(len(listing.tars), dtype=np.int64)),
                         "uri": pa.array([t.uri for t in listing.tars], pa.string()),
                         "size": pa.array([t.size for t in listing.tars], pa.int64()),
                         "version": pa.array([t.version for t in listing.tars], pa.string())})

    def read_ahead(self, shard: ShardEntries, job: JobConfig, pool: Executor, decode: Callable[[RawImage], T],
                   window: int) -> Iterator[T]:
        # Streamed front to back on a thread of its own, its images decoded by a task each.
        raw = itertools.chain.from_iterable(stream_tar(tar, job.image_extensions, first) for tar, first in shard.tars)
        return prefetch(pool, decode, read_ahead(raw, window), window)

    def read_entry(self, container: str, rest: str, image_column: str | None) -> bytes:
        return tars.read_member_by_name(container, rest)


class ParquetInput(InputKind):
    """Parquet image tables (``job.image_column`` set): one entry per row, ``FILE#ROW``; a file's footer
    says how many rows it has, so the planner reads the footers, not the rows. A row's span is
    ``(row, row group)``: a shard is read row group by row group."""

    name = KIND_PARQUET
    suffix = parquet_images.PARQUET_SUFFIX

    def claims(self, uri: str, image_column: str | None) -> bool:
        if image_column is None and uri.rstrip("/").lower().endswith(self.suffix):
            raise InputError(f"{uri} is a Parquet input: pass --image-column (the column of image bytes)")
        return image_column is not None

    def list(self, uri: str, extensions: Sequence[str], image_column: str | None, id_column: str | None,
             reuse: Callable[[str, int], pa.Table | None] | None) -> InputListing:
        t0 = time.perf_counter()
        suffix = self.suffix
        containers = list_containers(uri, suffix)
        if reuse is not None:
            frozen = reuse(containers_digest(containers), len(containers))
            if frozen is not None and "span_start" in frozen.column_names:
                logger.info("%d %s file(s) unchanged since the plan: their %d entries are the frozen listing's",
                            len(containers), suffix, frozen.num_rows)
                return InputListing(self.name, frozen.column("uri").combine_chunks(),
                                    frozen.column("span_start").combine_chunks(),
                                    frozen.column("span_end").combine_chunks(), containers_digest(containers),
                                    len(containers))
        with ThreadPoolExecutor(min(LISTING_THREADS, len(containers))) as pool:
            assert image_column is not None
            parts = list(pool.map(lambda c: _parquet_entries(c.uri, image_column, id_column), containers))
        uris = pa.concat_arrays([p[0] for p in parts]) if parts else pa.array([], pa.string())
        starts = pa.concat_arrays([p[1] for p in parts])
        ends = pa.concat_arrays([p[2] for p in parts])
        if len(uris) == 0:
            raise InputError(f"input {uri}: its {len(containers)} {suffix} file(s) hold no rows")
        order = pc.sort_indices(uris)
        uris, starts, ends = pc.take(uris, order), pc.take(starts, order), pc.take(ends, order)
        if len(sort_unique(uris)) != len(uris):  # only when two inputs name the same container twice
            raise InputError(f"input {uri} names the same entry twice")
        logger.info("listed %d %s entries in %d %s file(s) in %.1f s", len(uris), self.name, len(containers), suffix,
                    time.perf_counter() - t0)
        return InputListing(self.name, uris, starts, ends, containers_digest(containers), len(containers))

    def listing_table(self, listing: InputListing) -> pa.Table:
        """Also ``span_start``, ``span_end`` (int64: the row and its row group)."""
        table = super().listing_table(listing)
        if listing.spans_start is None or listing.spans_end is None:
            return table
        return table.append_column("span_start", listing.spans_start).append_column("span_end", listing.spans_end)

    def read_groups(self, image_ids: Sequence[int], uris: Sequence[str],
                    spans: Sequence[tuple[int, int]]) -> list[ReadGroup]:
        """A Parquet file: the shard's rows of each row group (read in batches of ``READ_BATCH_ROWS``,
        image and id columns only)."""
        by_container: dict[str, list[tuple[int, str, tuple[int, int]]]] = {}
        for image_id, uri, span in zip(image_ids, uris, spans, strict=True):
            split = split_member_uri(uri)
            if split is None:
                raise ValueError(f"{uri} is not a {self.name} entry")
            by_container.setdefault(split[0], []).append((image_id, uri, span))
        groups = []
        for container, entries in by_container.items():
            entries.sort(key=lambda e: e[2][0])
            for _, rows in itertools.groupby(entries, key=lambda e: e[2][1]):  # one read per row group
                rows = list(rows)
                groups.append(ReadGroup(self.name, container, tuple(e[0] for e in rows), tuple(e[1] for e in rows),
                                        tuple(e[2] for e in rows)))
        return groups

    def read_group(self, group: ReadGroup, image_column: str | None = None,
                   id_column: str | None = None) -> list[RawImage]:
        t0 = time.perf_counter()
        assert group.container is not None
        if image_column is None:
            raise ValueError("a Parquet input needs job.image_column")
        return _read_parquet_group(group, image_column, id_column, t0)

    def read_entry(self, container: str, rest: str, image_column: str | None) -> bytes:
        column = image_column or parquet_images.guess_image_column(container)
        (row,) = parquet_images.read_rows(container, [int(rest)], column, None)
        if row.data is None:
            raise OSError(row.error)
        return row.data


# Asked in this order which kind an input is (``kind_of_input``); loose files take what the others do not.
INPUT_KINDS: dict[str, InputKind] = {k.name: k for k in (ParquetInput(), TarInput(), FilesInput())}


def kind_of_input(uri: str, image_column: str | None) -> InputKind:
    """The kind of input ``uri`` is (``job.image_column`` set: a Parquet input)."""
    return next(k for k in INPUT_KINDS.values() if k.claims(uri, image_column))


def input_kind(uri: str, image_column: str | None) -> str:
    """The name of the kind of input ``uri`` is (see the module doc)."""
    return kind_of_input(uri, image_column).name


def list_source(uri: str, extensions: Sequence[str], image_column: str | None = None,
                id_column: str | None = None,
                reuse: Callable[[str, int], pa.Table | None] | None = None) -> InputListing:
    """The sorted listing of any input kind.

    Args:
        uri: the ``--input``.
        extensions: image suffixes: files of a folder or glob, members of a tar.
        image_column, id_column: ``job.image_column`` / ``job.id_column`` (Parquet input).
        reuse: for a Parquet input, called with (containers digest, number of containers) once the
            files are listed; the frozen ``listing.parquet`` table it returns is used instead of reading
            every file's footer again (a resume: ``jobs.planner.list_job_input``).

    Raises:
        InputError: the input cannot be listed, lists nothing, or lacks a named column.
    """
    return kind_of_input(uri, image_column).list(uri, extensions, image_column, id_column, reuse)


def listing_table(listing: InputListing) -> pa.Table:
    """The frozen listing as a table (``listing.parquet``), as its kind writes it."""
    return INPUT_KINDS[listing.kind].listing_table(listing)


def read_groups(kind: str, image_ids: Sequence[int], uris: Sequence[str],
                spans: Sequence[tuple[int, int]]) -> list[ReadGroup]:
    """Cut a shard of loose files or Parquet rows into what is read together, in the order to read it
    (``InputKind.read_groups``). A tar is not cut: it is streamed (``stream_tar``)."""
    return INPUT_KINDS[kind].read_groups(image_ids, uris, spans)


def read_group(group: ReadGroup, image_column: str | None = None, id_column: str | None = None) -> list[RawImage]:
    """The bytes of every entry of a group (errors as ``RawImage.error``, never raised for one entry)."""
    return INPUT_KINDS[group.kind].read_group(group, image_column, id_column)
