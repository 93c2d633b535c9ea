"""WebDataset-style tars written for tests: named members with the given bytes, in the given order."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar (tarfile's default PAX format) at ``path`` holding ``members`` as (name, bytes), in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
