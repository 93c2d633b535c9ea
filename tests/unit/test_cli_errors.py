"""One line and a hint per user mistake, through the CLI; weights checked before any worker starts.

Each class of mistake (config, paths, network, checkpoint, GPU unavailable, output refused) prints
``bmp-label <command>: <cause>`` and a hint on stderr, no traceback (``-v`` adds it), and exits 2; a
bug keeps its traceback. No Ray here: ``jobs.ray_runner._init_ray`` is replaced by a recorder that
fails the test if a checkpoint mistake got as far as starting Ray (the real-model layout check, which
needs torch, is in tests/models/test_weights.py).
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any

import pytest

from bmp_core.config import load_config
from bmp_core.output.plan import freeze_plan
from bmp_core.output.store import OutputStore
from bmp_core.testing.images import write_synthetic_images
from jobs.cli import main
from jobs.planner import list_job_input, listing_table, make_plan

REPO = Path(__file__).resolve().parents[2]
FAKE = str(REPO / "configs" / "fake.yaml")
TINY = str(REPO / "configs" / "tiny_random.yaml")  # models.kind bmp, checkpoints null: we name one


class RayStarts:
    """Stands in for ``_init_ray``: records the call, then answers as a cluster of ``resources``."""

    def __init__(self, resources: dict[str, float] | None = None) -> None:
        self.calls = 0
        self.resources = resources

    def __call__(self, opts: Any) -> tuple[Any, bool]:
        self.calls += 1
        if self.resources is None:
            raise AssertionError("Ray was started: the mistake was not caught before the workers")
        return _Cluster(self.resources), False


class _Cluster:
    def __init__(self, resources: dict[str, float]) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.resources)


@pytest.fixture()
def ray_starts(monkeypatch: pytest.MonkeyPatch) -> RayStarts:
    recorder = RayStarts()
    monkeypatch.setattr("jobs.ray_runner._init_ray", recorder)
    return recorder


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    write_synthetic_images(folder)
    return folder


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def _one_line_and_hint(err: str, command: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "RayTaskError" not in err and "ActorDiedError" not in err, err
    assert lines[0].startswith(f"bmp-label {command}: "), err
    assert lines[-1].startswith("  hint: "), err
    return lines


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connection refused at once; no network needed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_checkpoint_stops_run_before_ray(capsys: Any, tmp_path: Path, images: Path,
                                                        ray_starts: RayStarts) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/weights/rtmdet-tiny.pth"
    rc, err = _run(capsys, "run", "--config", TINY, "--input", str(images), "--output", str(tmp_path / "out"),
                   f"models.detector.checkpoint={url}", f"models.cache_dir={tmp_path / 'cache'}")
    assert rc == 2 and ray_starts.calls == 0
    lines = _one_line_and_hint(err, "run")
    assert url in lines[0] and "could not download" in lines[0]
    assert not (tmp_path / "out" / "plan.json").exists()  # nothing frozen: a fixed URL is not "another config"
    assert not (tmp_path / "out" / "_lock.json").exists()


def test_a_wrong_sha256_stops_run_before_ray_and_names_the_file(capsys: Any, tmp_path: Path, images: Path,
                                                                ray_starts: RayStarts) -> None:
    weights = tmp_path / "rtmdet-tiny.pth"
    weights.write_bytes(b"not the published file")
    wrong = hashlib.sha256(b"the published file").hexdigest()
    rc, err = _run(capsys, "run", "--config", TINY, "--input", str(images), "--output", str(tmp_path / "out"),
                   f"models.detector.checkpoint={weights}", f"models.detector.sha256={wrong}")
    assert rc == 2 and ray_starts.calls == 0
    lines = _one_line_and_hint(err, "run")
    assert str(weights) in lines[0] and "sha256 mismatch" in lines[0]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() in lines[0]


def test_plan_sample_checks_the_weights_before_the_sample_worker(capsys: Any, tmp_path: Path, images: Path,
                                                                 ray_starts: RayStarts) -> None:
    missing = tmp_path / "no-such-weights.pth"
    rc, err = _run(capsys, "plan", "--config", TINY, "--input", str(images), "--output", str(tmp_path / "out"),
                   "--sample", "2", f"models.pose.checkpoint={missing}")
    assert rc == 2 and ray_starts.calls == 0
    assert str(missing) in _one_line_and_hint(err, "plan")[0]


def test_config_and_path_mistakes_are_one_line(capsys: Any, tmp_path: Path, images: Path,
                                               ray_starts: RayStarts) -> None:
    out = str(tmp_path / "out")
    rc, err = _run(capsys, "run", "--config", FAKE, "--input", str(images), "--output", out, "job.no_such_key=1")
    assert rc == 2 and "job.no_such_key" in _one_line_and_hint(err, "run")[0]
    rc, err = _run(capsys, "run", "--config", str(tmp_path / "missing.yaml"), "--input", str(images),
                   "--output", out)
    assert rc == 2 and "missing.yaml" in _one_line_and_hint(err, "run")[0]
    rc, err = _run(capsys, "run", "--config", FAKE, "--input", str(tmp_path / "no-such-folder"), "--output", out)
    assert rc == 2 and "no-such-folder" in _one_line_and_hint(err, "run")[0]
    assert ray_starts.calls == 0


def test_an_output_of_another_plan_is_refused_in_one_line(capsys: Any, tmp_path: Path, images: Path,
                                                          ray_starts: RayStarts) -> None:
    out = tmp_path / "out"
    cfg = load_config(FAKE)
    store = OutputStore(str(out))
    listing = list_job_input(cfg, str(images), store)
    freeze_plan(store, make_plan(cfg, listing), listing_table(listing), cfg)
    rc, err = _run(capsys, "run", "--config", FAKE, "--input", str(images), "--output", str(out),
                   "loop.iterations=1")
    assert rc == 2 and ray_starts.calls == 0
    lines = _one_line_and_hint(err, "run")
    assert str(out) in lines[0] and "--force" in err


def test_a_gpu_the_cluster_lacks_is_one_line(capsys: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             images: Path) -> None:
    cluster = RayStarts({"CPU": 2.0})  # no GPU
    monkeypatch.setattr("jobs.ray_runner._init_ray", cluster)
    rc, err = _run(capsys, "run", "--config", TINY, "--input", str(images), "--output", str(tmp_path / "out"),
                   "models.device=cuda")
    assert rc == 2 and cluster.calls == 1
    lines = _one_line_and_hint(err, "run")
    assert "models.device='cuda'" in lines[0] and "no GPU" in lines[0]


def test_verbose_adds_the_traceback_and_a_bug_keeps_it(capsys: Any, tmp_path: Path, images: Path,
                                                       monkeypatch: pytest.MonkeyPatch, ray_starts: RayStarts) -> None:
    missing = tmp_path / "no-such-weights.pth"
    rc, err = _run(capsys, "-v", "run", "--config", TINY, "--input", str(images), "--output", str(tmp_path / "o"),
                   f"models.segmenter.checkpoint={missing}")
    assert rc == 2 and "Traceback" in err and f"bmp-label run: checkpoint file not found: {missing}" in err

    def bug(*args: object) -> None:
        raise ZeroDivisionError("a bug in bmp-label")

    monkeypatch.setattr("jobs.ray_runner.run_job", bug)
    with pytest.raises(ZeroDivisionError):  # not a user's mistake: the console script prints its traceback
        main(["run", "--config", FAKE, "--input", str(images), "--output", str(tmp_path / "o2")])


def test_weights_on_a_driver_without_the_model_stack_checks_size_and_sha256_only(
        capsys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thin submitting machine cannot build the models: the layout is left to the workers, said so."""
    def no_stack(*args: object) -> None:
        raise ModuleNotFoundError("No module named 'mmdet'")

    monkeypatch.setattr("bmp_core.models.weights.expected_layouts", no_stack)
    weights = tmp_path / "rtmdet-tiny.pth"
    weights.write_bytes(b"weights")
    assert main(["weights", TINY, f"models.detector.checkpoint={weights}", "--check"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    digest = hashlib.sha256(b"weights").hexdigest()
    assert line.startswith(f"ok     detector {weights} -> {weights}: 0.0 MiB, sha256 {digest}, layout not checked: ")
    assert "No module named 'mmdet'" in line
