"""WebDataset tar shards: the member listing of a tar (one pass over its headers) and reading members.

A tar member image is addressed as ``TAR_URI#MEMBER_NAME`` (``s3://b/shard-000001.tar#0001.jpg``);
its span is ``(header offset, end of its data)`` in bytes. The planner walks each tar's headers
once (``list_tar_members``: seeks past the data, so on S3 it reads the headers and whatever the
read-ahead block around them holds, never the whole tar unless the members are tiny); the worker
then reads each run of a shard's members with ONE ranged read (``read_tar_span``) and parses the
members out of that buffer, so a shard makes one pass over the part of the tar it needs and
nothing is extracted to disk.

WebDataset's ``__key__`` of a member is its path up to the first ``.`` of its file name
(``dir/0001.seg.png`` -> ``dir/0001``); ``webdataset_key`` computes it.
"""

from __future__ import annotations

import io
import logging
import posixpath
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass

from bmp_core.io.uris import InputError, describe_storage, filesystem, protocol_of

logger = logging.getLogger(__name__)

TAR_SUFFIX = ".tar"
# Read-ahead while walking headers on S3: one ranged GET serves every header inside it, so small
# members cost one request per block rather than one per member, large ones one per member.
HEADER_WALK_BLOCK_BYTES = 256 << 10


@dataclass(frozen=True)
class TarMember:
    """A regular file inside a tar: its name and where its header chain starts and its data ends."""

    name: str
    offset: int  # byte offset of the member's first header block (pax/GNU long-name headers included)
    end: int  # byte offset just past its data


def webdataset_key(member_name: str) -> str:
    """WebDataset's ``__key__``: the member's path with everything from the file name's first dot removed."""
    folder, base = posixpath.split(member_name)
    stem = base.split(".", 1)[0]
    return posixpath.join(folder, stem) if folder else stem


def list_tar_members(tar_uri: str, extensions: Sequence[str]) -> list[TarMember]:
    """The regular-file members of a tar whose names end with one of ``extensions``, in tar order.

    A member that appears twice keeps its last copy (what ``tar -x`` leaves). A tar cut short after
    some members keeps those (the one whose data is cut is listed: reading it becomes an error row).

    Raises:
        InputError: the tar cannot be opened or is not a tar at all (named in the message).
    """
    exts = tuple(e.lower() for e in extensions)
    fs, path = filesystem(tar_uri)
    found: dict[str, TarMember] = {}
    try:
        opener = (fs.open(path, "rb", block_size=HEADER_WALK_BLOCK_BYTES, cache_type="readahead")
                  if protocol_of(tar_uri) == "s3" else fs.open(path, "rb"))
        with opener as f, tarfile.open(fileobj=f, mode="r:") as tar:
            while True:
                try:
                    info = tar.next()
                except tarfile.ReadError as err:
                    logger.warning("tar %s is truncated after %d listed member(s) (%s): the rest cannot be "
                                   "listed", tar_uri, len(found), err)
                    break
                if info is None:
                    break
                if info.isfile() and info.name.lower().endswith(exts):
                    found[info.name] = TarMember(info.name, info.offset, info.offset_data + info.size)
                tar.members.clear()  # tarfile keeps every TarInfo otherwise; we keep our own small records
    except FileNotFoundError as err:
        raise InputError(f"tar not found: {tar_uri}") from err
    except tarfile.TarError as err:
        raise InputError(f"cannot read the tar {tar_uri}: {err} (not a tar archive, or empty); remove it from "
                         "the input") from err
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the tar {describe_storage(tar_uri)}: {type(err).__name__}: {err}") from err
    return sorted(found.values(), key=lambda m: m.offset)


class TarMemberError(ValueError):
    """A listed member cannot be read from the tar; ``str(err)`` is the reason for the ``images`` table."""


def read_tar_span(tar_uri: str, start: int, end: int) -> tuple[bytes, int]:
    """Bytes ``[start, end)`` of a tar in one ranged read; returns (bytes, start). Fewer bytes come back
    when the tar is shorter than ``end`` (a truncated tar): ``member_bytes`` then reports the cut member.

    Raises:
        FileNotFoundError, PermissionError, OSError: as fsspec reports them.
    """
    fs, path = filesystem(tar_uri)
    return fs.cat_file(path, start=start, end=end), start


def member_bytes(buffer: bytes, buffer_start: int, name: str, offset: int, end: int) -> bytes:
    """The data of the member ``name`` whose header starts at ``offset``, from a buffer read by
    ``read_tar_span`` (``buffer_start``: the tar offset of ``buffer[0]``).

    Raises:
        TarMemberError: the data is cut short (truncated tar), or the header there is not the
            member's (the tar was rewritten since the plan).
    """
    lo, hi = offset - buffer_start, end - buffer_start
    if hi > len(buffer):
        raise TarMemberError(f"truncated tar: member {name} needs bytes up to {end}, the tar ends at "
                             f"{buffer_start + len(buffer)}")
    try:
        with tarfile.open(fileobj=io.BytesIO(buffer[lo:hi]), mode="r:") as tar:
            info = tar.next()
            if info is None or info.name != name:
                found = None if info is None else info.name
                raise TarMemberError(f"the tar changed since the plan: expected member {name} at byte {offset}, "
                                     f"found {found!r}")
            data = tar.extractfile(info)
            return b"" if data is None else data.read()
    except tarfile.TarError as err:
        raise TarMemberError(f"corrupt tar member {name} at byte {offset}: {err}") from err


def read_member_by_name(tar_uri: str, name: str) -> bytes:
    """The data of one member, found by walking the tar's headers (for reading one image back: viz).

    Raises:
        FileNotFoundError: the tar, or the member in it, does not exist.
    """
    fs, path = filesystem(tar_uri)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for info in tar:
            if info.name == name and info.isfile():
                data = tar.extractfile(info)
                return b"" if data is None else data.read()
    raise FileNotFoundError(f"no member {name} in {tar_uri}")
