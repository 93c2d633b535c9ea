"""The local-path probe's two halves, with a worker whose view of the paths is made to differ here
(the real second node, in its own mount namespace, is tests/integration/test_path_probe.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from bmp_core.io.sources import InputListing
from bmp_core.output import layout
from bmp_core.output.store import OutputStore
from jobs.path_probe import PathProbeError, check_probes, probe_error, write_probes


def _listing(*uris: str) -> InputListing:
    return InputListing("files", pa.array(list(uris), pa.string()))


def test_same_view_passes_and_every_difference_is_named(tmp_path: Path) -> None:
    photo = tmp_path / "in" / "a.jpg"
    photo.parent.mkdir()
    photo.write_bytes(b"\xff\xd8 some jpeg bytes")
    store = OutputStore(str(tmp_path / "out"))
    probes = write_probes(store, _listing(str(photo)))
    assert [(p.role, p.path) for p in probes] == [("output", store.path(layout.PATH_PROBE)),
                                                  ("input", str(photo))]
    assert check_probes(probes) == ()  # the driver's own view
    # A second write is a new token: a stale token from an earlier run never passes.
    assert write_probes(store, _listing(str(photo)))[0].sha256 != probes[0].sha256

    # What a worker on a node with other disks sees: no token, another file under the same name.
    (tmp_path / "out" / layout.PATH_PROBE).unlink()
    photo.write_bytes(b"another image")
    found = check_probes(probes)
    assert [(m.role, m.path, m.reason) for m in found] == [
        ("output", store.path(layout.PATH_PROBE), "missing"), ("input", str(photo), "different content")]
    err = probe_error(list(found))
    assert isinstance(err, PathProbeError)
    text = str(err)
    assert f"output {store.path(layout.PATH_PROBE)}: missing" in text and str(photo) in text
    assert found[0].node in text and "s3://" in text and "Nothing was labeled" in text


def test_a_container_is_probed_for_its_members_and_s3_is_not(tmp_path: Path) -> None:
    tar = tmp_path / "shard-000000.tar"
    tar.write_bytes(b"x" * 100)
    store = OutputStore(str(tmp_path / "out"))
    (probe_out, probe_in) = write_probes(store, _listing(f"{tar}#000001.jpg", f"{tar}#000002.jpg"))
    assert probe_in.path == str(tar) and probe_out.role == "output"
    assert write_probes(store, _listing("s3://bucket/photos/a.jpg"))[1:] == ()  # only the output's
    # A missing input is its image's error row later; the probe takes the next readable one.
    (_, probe) = write_probes(store, _listing(str(tmp_path / "missing.jpg"), f"{tar}#000001.jpg"))
    assert probe.path == str(tar)
