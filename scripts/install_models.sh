#!/usr/bin/env bash
# Install the real-model stack (torch, mmdet, mmpose, mmpretrain, sam2) into an existing venv.
#
# Usage: scripts/install_models.sh VENV_PYTHON        e.g. scripts/install_models.sh .venv/bin/python
#
# Runs the ordered pip steps of ../shared/docs/install.md (variant A). Idempotent: pip skips what is
# already installed at the pinned version, and the source builds (xtcocotools, sam2) are skipped when
# the right version already imports. Every step that deviates from a plain `pip install` says why.
# Set PIP_NO_CACHE_DIR=1 yourself for a cache-less (reproducible-timing) install.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 VENV_PYTHON" >&2
    exit 2
fi
PY="$1"
if ! "$PY" -c 'import sys; assert sys.prefix != sys.base_prefix' 2>/dev/null; then
    echo "error: $PY is not the python of a virtual environment (create one: python3 -m venv DIR)" >&2
    exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PIP=("$PY" -m pip install --disable-pip-version-check)
start=$(date +%s)

# 1. Build tooling. setuptools must stay < 81: mmengine (runtime) and the mmcv sdist import pkg_resources.
"${PIP[@]}" -U "pip==26.3" "setuptools==80.10.2" "wheel==0.48.0"

# 2. Everything with ordinary wheels, exact pins (torch, mmcv-lite, mmdet, mmpretrain, numpy 2, ...).
"${PIP[@]}" -r "$HERE/requirements/models.txt"

# 3. mmpose without its dependencies: it requires chumpy, whose sdist does not build on Python >= 3.10
#    (and mmpose's code never imports it). Its other runtime deps are pinned in models.txt.
"${PIP[@]}" --no-deps "mmpose==1.3.2"

# 4. xtcocotools from source: the 1.14.3 binary wheel is compiled against numpy 1 and fails to import on
#    numpy 2 ("numpy.dtype size changed"). Its build does not declare numpy, so no build isolation
#    (numpy + Cython come from step 2).
if ! "$PY" -c 'import importlib.metadata as m, xtcocotools._mask; assert m.version("xtcocotools") == "1.14.3"' 2>/dev/null; then
    "${PIP[@]}" --force-reinstall --no-deps --no-build-isolation --no-binary xtcocotools "xtcocotools==1.14.3"
fi

# 5. sam2 from its sdist without the CUDA extension (only used for optional mask post-processing) and
#    without build isolation: an isolated build would download a second multi-GB torch.
if ! "$PY" -c 'import importlib.metadata as m; assert m.version("sam2") == "1.1.0"' 2>/dev/null; then
    SAM2_BUILD_CUDA=0 "${PIP[@]}" --no-deps --no-build-isolation "sam2==1.1.0"
fi

# 6. Smoke check: the adapters' imports work (the mmcv._ext shim is installed by _compat). PYTHONPATH: the
#    project itself may not be installed into this venv yet (scripts/setup.sh installs it afterwards).
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'EOF'
from bmp_core.models import _compat

_compat.apply()
import mmdet.apis, mmpose.apis, mmpretrain.models, sam2.build_sam  # noqa: F401,E401
import torch

print(f"models stack OK: torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
EOF
echo "install_models.sh: done in $(( $(date +%s) - start )) s"
