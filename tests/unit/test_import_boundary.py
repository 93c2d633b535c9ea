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
