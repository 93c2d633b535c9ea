"""The local-path probe's edges that mutation testing (scripts/mutation.sh) found unchecked: every probe
is a file prefix that hashlib hashes to its ``sha256``, inputs bigger than the probed head, ``file://``
URIs, the number of inputs tried, one mismatch among agreeing probes, an unreadable path, and the
message's lines."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

from bmp_core.io.sources import InputListing
from bmp_core.output.store import OutputStore
from jobs.path_probe import PROBE_BYTES, PROBE_CANDIDATES, PathMismatch, check_probes, probe_error, write_probes


def _listing(*uris: str) -> InputListing:
    return InputListing("files", pa.array(list(uris), pa.string()))


def test_each_probe_is_a_file_head_hashlib_agrees_with(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(bytes(range(256)) * (PROBE_BYTES // 256 + 100))  # longer than the probed head
    probes = write_probes(OutputStore(str(tmp_path / "out")), _listing(f"file://{big}"))
    assert [p.role for p in probes] == ["output", "input"] and probes[1].path == str(big)
    for probe in probes:
        assert isinstance(probe.num_bytes, int) and 0 < probe.num_bytes <= Path(probe.path).stat().st_size
        assert hashlib.sha256(Path(probe.path).read_bytes()[:probe.num_bytes]).hexdigest() == probe.sha256
    assert check_probes(probes) == ()
    # A difference past the head is not the probe's business; one inside it is.
    big.write_bytes(big.read_bytes() + b"appended")
    assert check_probes(probes) == ()
    big.write_bytes(b"X" + big.read_bytes()[1:])
    assert [(m.role, m.reason) for m in check_probes(probes)] == [("input", "different content")]


def test_only_the_first_candidates_are_tried(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"jpeg")
    missing = [str(tmp_path / f"missing-{i}.jpg") for i in range(PROBE_CANDIDATES)]
    store = OutputStore(str(tmp_path / "out"))
    assert [p.role for p in write_probes(store, _listing(*missing, str(photo)))] == ["output"]
    assert [p.path for p in write_probes(store, _listing(*missing[1:], str(photo)))][1:] == [str(photo)]


def test_one_mismatch_among_agreeing_probes_and_an_unreadable_path(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"jpeg")
    store = OutputStore(str(tmp_path / "out"))
    probes = write_probes(store, _listing(str(photo)))
    photo.write_bytes(b"other")
    assert [(m.role, m.reason) for m in check_probes(probes)] == [("input", "different content")]
    photo.unlink()
    photo.mkdir()  # a directory where the driver saw a file: unreadable, not missing
    (found,) = check_probes(probes)
    assert found.reason.startswith("unreadable: ") and "Is a directory" in found.reason


def test_the_message_has_one_line_per_mismatch_between_the_explanation_and_the_advice() -> None:
    mismatches = [PathMismatch("10.0.0.2 (node abc, host b)", "output", "/data/out/_probe", "missing"),
                  PathMismatch("10.0.0.3 (node def, host c)", "input", "/data/in/a.jpg", "different content")]
    lines = str(probe_error(mismatches)).splitlines()
    assert lines[0] == ("a worker does not see the same local files as the driver, so its results would land on "
                        "its own disk (or it would read other images):")
    assert lines[1:3] == ["  node 10.0.0.2 (node abc, host b): output /data/out/_probe: missing there",
                          "  node 10.0.0.3 (node def, host c): input /data/in/a.jpg: different content there"]
    assert lines[3:] == ["Local --input / --output paths must be on storage every node mounts at the same path "
                         "(NFS, a shared volume), or use s3:// URIs. Nothing was labeled."]
