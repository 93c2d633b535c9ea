"""The README's and the docs' examples that run on a CPU do run: each ``run`` or ``fake`` block
(tests/doc_examples.py) is executed as a user would paste it, page by page in the pages' order, from one
folder that holds the repository's ``examples/`` and ``configs/`` and the quick start's output ``out/demo``
(made here with the fake models, so no weights are needed). ``bmp-label`` is this checkout's CLI, and the jobs
run on the session's local Ray cluster (``RAY_ADDRESS``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_examples import ROOT, Example, all_examples

pytestmark = pytest.mark.integration

RUNNABLE = [e for e in all_examples() if e.kind in ("run", "fake")]
# `bmp-label ...` / `.venv/bin/bmp-label ...` at a command's start -> this interpreter's CLI of this checkout.
_CLI = re.compile(r"(^|[;&|(]\s*|\\\n\s*)(?:\.venv/bin/)?bmp-label(?= )", re.M)
_PYTHON = re.compile(r"(^|[;&|(]\s*)\.venv/bin/python(?= )", re.M)
DEMO_IMAGE = "examples/images/000000000785.jpg"
_IMAGE_BGR = (
    "import numpy as _np\nfrom PIL import Image as _Image\n"
    f"image_bgr = _np.ascontiguousarray(_np.asarray(_Image.open({DEMO_IMAGE!r}).convert('RGB'))[:, :, ::-1])\n")


@pytest.fixture(scope="module")
def docs_env(ray_cluster: object) -> dict[str, str]:
    env = dict(ray_cluster.env)  # RAY_ADDRESS: the shared local cluster
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, docs_env: dict[str, str]) -> Path:
    """A user's folder: the repository's examples and configs, and the quick start's output in out/demo."""
    work = tmp_path_factory.mktemp("docs-examples")
    for name in ("examples", "configs"):
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--config", "configs/fake.yaml", "--input",
                    "examples/images", "--output", "out/demo", "--no-progress"],
                   cwd=work, env=docs_env, check=True, capture_output=True, timeout=300)
    return work


def shell_command(code: str) -> str:
    code = _CLI.sub(lambda m: f"{m.group(1)}{sys.executable} -m jobs.cli", code)
    return _PYTHON.sub(lambda m: f"{m.group(1)}{sys.executable}", code)


def test_the_rewrites_keep_the_commands() -> None:
    cli = f"{sys.executable} -m jobs.cli"
    assert shell_command("bmp-label viz out/demo  # overlays\n.venv/bin/bmp-label eval out/demo --gt x.json") == (
        f"{cli} viz out/demo  # overlays\n{cli} eval out/demo --gt x.json")
    assert shell_command("bmp-label plan --a \\\n    --b && bmp-label run") == (
        f"{sys.executable} -m jobs.cli plan --a \\\n    --b && {sys.executable} -m jobs.cli run")
    assert shell_command("pip install 'bmp-label[lite]'") == "pip install 'bmp-label[lite]'"


@pytest.mark.parametrize("example", RUNNABLE, ids=lambda e: e.id)
def test_example_runs(example: Example, workdir: Path, docs_env: dict[str, str]) -> None:
    code = example.runnable_code()
    if example.language == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", shell_command(code)]
    else:
        argv = [sys.executable, "-c", (_IMAGE_BGR if "image_bgr" in code else "") + code]
    done = subprocess.run(argv, cwd=workdir, env=docs_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"{example.id} ({example.kind}) failed with exit status {done.returncode}:\n{code}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
