"""WebDataset tar shards: a tar's image members read front to back in one pass, and one member read back.

The plan pins each tar by its URI, size and version (S3 ETag, or local mtime) and never opens it
(``sources.list_source``): planning 10,000 tars is one listing, whatever they hold. The worker that
labels a tar streams it (``iter_tar_images``: ``tarfile``'s stream mode over a sequential read, a
large read-ahead block per request on S3, nothing extracted to disk, no seek back) and numbers its
image members as it meets them: the member ``k`` (0-based, counting only image members) of the tar
with plan index ``t`` is image ``t * TAR_ID_STRIDE + k``. The tar is pinned, so the numbering is the
same on every rerun.

A tar member image is addressed as ``TAR_URI#MEMBER_NAME`` (``s3://b/shard-000001.tar#0001.jpg``).
WebDataset's ``__key__`` of a member is its path up to the first ``.`` of its file name
(``dir/0001.seg.png`` -> ``dir/0001``); ``webdataset_key`` computes it.
"""

from __future__ import annotations

import logging
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from bmp_core.io.uris import filesystem

logger = logging.getLogger(__name__)

TAR_SUFFIX = ".tar"
# Image ids of a tar input: plan index of the tar x this + ordinal of the image member in the tar.
# Decimal, so that an id reads as (tar, member) by eye: 30000005 is tar 3, image member 5.
TAR_ID_STRIDE = 10_000_000
# Bytes per ranged GET while streaming a tar from S3: few requests per image, bounded memory.
STREAM_BLOCK_BYTES = 16 << 20
# A tar's end: two zero blocks, padded up to a 10240-byte record (what GNU tar and Python write).
_END_SLACK_BYTES = 2 * 512 + 10240


@dataclass(frozen=True)
class TarImage:
    """One image member met while streaming a tar: its bytes, or why there are none.

    Attributes:
        ordinal: index among the tar's image members (0-based, in tar order).
        name: the member's path inside the tar.
        offset, end: the byte offset of its header and just past its data.
        data: its bytes; None when ``error`` says why it cannot be read.
    """

    ordinal: int
    name: str
    offset: int
    end: int
    data: bytes | None
    error: str | None = None


def webdataset_key(member_name: str) -> str:
    """WebDataset's ``__key__``: the member's path with everything from the file name's first dot removed."""
    folder, base = posixpath.split(member_name)
    stem = base.split(".", 1)[0]
    return posixpath.join(folder, stem) if folder else stem


def iter_tar_images(fileobj: IO[bytes], tar_uri: str, tar_size: int,
                    extensions: Sequence[str]) -> Iterator[TarImage]:
    """The regular-file members of a tar whose names end with one of ``extensions``, in tar order,
    read in one forward pass over ``fileobj`` (``tar_size``: the tar's size as the plan pinned it).

    Every image member the tar's headers name is yielded once:

    - a member whose data the end of the tar cuts (a truncated tar) has ``error`` "truncated tar ...",
      and nothing after it is read;
    - a second member of an already-met name has ``error`` "duplicate member ..." (the first copy is
      the labeled one; ``tar -x`` would leave the last, but a stream cannot know a later copy comes);
    - headers that stop making sense before the end (garbage, a cut header) end the stream with a
      warning: there are no members there to name.

    Raises:
        tarfile.ReadError: the first block is not a tar header (not a tar at all, or empty).
        OSError: reading failed (storage), as fsspec raises it.
    """
    exts = tuple(e.lower() for e in extensions)
    seen: dict[str, int] = {}
    ordinal = 0
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        end_of_last = 0
        while True:
            try:
                info = tar.next()
            except (tarfile.ReadError, tarfile.StreamError) as err:  # a cut in a member that is not an image
                logger.warning("tar %s is cut short after byte %d of %d (%s): nothing after it is read",
                               tar_uri, end_of_last, tar_size, err)
                return
            if info is None:
                break
            tar.members.clear()  # tarfile keeps every TarInfo otherwise: a million members, a million objects
            end_of_last = info.offset_data + info.size
            if not (info.isfile() and info.name.lower().endswith(exts)):
                continue
            if end_of_last > tar_size:
                yield TarImage(ordinal, info.name, info.offset, end_of_last, None,
                               f"truncated tar: member {info.name} needs bytes up to {end_of_last}, the tar ends "
                               f"at {tar_size}")
                return
            try:
                data_file = tar.extractfile(info)
                data = b"" if data_file is None else data_file.read()
            except (tarfile.ReadError, tarfile.StreamError) as err:  # shorter than its header says
                yield TarImage(ordinal, info.name, info.offset, end_of_last, None,
                               f"truncated tar: member {info.name} cannot be read whole ({err})")
                return
            if info.name in seen:
                yield TarImage(ordinal, info.name, info.offset, end_of_last, None,
                               f"duplicate member {info.name} in the tar: its first copy (image member "
                               f"{seen[info.name]}) is the one labeled")
            else:
                seen[info.name] = ordinal
                yield TarImage(ordinal, info.name, info.offset, end_of_last, data)
            ordinal += 1
    if end_of_last + _END_SLACK_BYTES < tar_size:
        logger.warning("tar %s: its headers stop making sense at about byte %d of %d; whatever follows is "
                       "not read (a damaged tar?)", tar_uri, end_of_last, tar_size)


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
