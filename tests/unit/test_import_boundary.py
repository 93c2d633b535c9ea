"""bmp_core outside bmp_core/models/ must import without torch, mmdet, mmpose, sam2 or ray."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import bmp_core

HEAVY = ("torch", "ray", "mmdet", "mmpose", "mmcv", "mmengine", "sam2", "cv2")


def _light_modules() -> list[str]:
    names = ["bmp_core"]
    for info in pkgutil.walk_packages(bmp_core.__path__, "bmp_core."):
        if info.name.startswith("bmp_core.models.") :
            continue  # the one place allowed to import the ML stack
        names.append(info.name)
    return names


def test_every_light_module_is_found() -> None:
    names = _light_modules()
    for expected in ("bmp_core.loop", "bmp_core.config", "bmp_core.ops.rle", "bmp_core.testing.fakes",
                     "bmp_core.models"):
        assert expected in names


def test_importing_bmp_core_loads_no_heavy_package() -> None:
    names = _light_modules()
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    root = Path(bmp_core.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == "", f"heavy packages loaded by bmp_core: {out.stdout.strip()}"


def test_every_python_file_of_the_repo_compiles() -> None:
    """Also the modules no unit test imports (model adapters, benchmarks, scripts under other envs)."""
    root = Path(bmp_core.__file__).resolve().parents[1]
    files = [p for d in ("bmp_core", "jobs", "benchmarks", "infra", "tests") for p in (root / d).rglob("*.py")]
    assert len(files) > 50
    for path in files:
        compile(path.read_text(), str(path), "exec")


def _imports_of(path: Path) -> set[str]:
    """Top-level package names a file imports (anywhere in it, lazy imports included)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


# The one module of jobs/ that talks to Ray; everything else (CLI, planner, worker, finalize, lock)
# runs and is tested without it.
RAY_MODULES = ("ray_runner.py",)


def test_only_the_ray_runner_imports_ray_and_bmp_core_never_imports_jobs() -> None:
    root = Path(bmp_core.__file__).resolve().parents[1]
    jobs_files = sorted((root / "jobs").rglob("*.py"))
    assert len(jobs_files) > 8
    ray_importers = {p.name for p in jobs_files if "ray" in _imports_of(p)}
    assert ray_importers == set(RAY_MODULES), f"jobs/ modules importing ray: {sorted(ray_importers)}"
    upward = [str(p.relative_to(root)) for p in (root / "bmp_core").rglob("*.py") if "jobs" in _imports_of(p)]
    assert upward == [], f"bmp_core imports jobs/: {upward}"


def test_importing_jobs_without_the_ray_runner_loads_no_ray() -> None:
    root = Path(bmp_core.__file__).resolve().parents[1]
    names = sorted(f"jobs.{p.stem}" for p in (root / "jobs").glob("*.py")
                   if p.name not in RAY_MODULES and p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == "False", f"importing {names} loaded ray"


def test_every_package_folder_has_an_init() -> None:
    """A folder without ``__init__.py`` imports from a checkout (a namespace package) but is left out of
    the wheel that ``pip install .`` and the Docker image build (setuptools ``packages.find``)."""
    root = Path(bmp_core.__file__).resolve().parents[1]
    folders = {p.parent for d in ("bmp_core", "jobs") for p in (root / d).rglob("*.py")}
    missing = sorted(str(f.relative_to(root)) for f in folders if not (f / "__init__.py").is_file())
    assert missing == [], f"package folders without __init__.py: {missing}"
