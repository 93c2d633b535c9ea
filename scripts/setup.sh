#!/usr/bin/env bash
# Create one virtualenv with bmp-label and everything it runs with: the real-model stack and the lite
# backend (MediaPipe BlazePose) side by side.
#
# Usage: scripts/setup.sh [VENV_DIR] [--no-models] [--cuda 13|12]
#   VENV_DIR      where the virtualenv goes (default: .venv)
#   --no-models   skip the real-model stack (torch, mmdet, mmpose, sam2, ~7 GB): enough for fake models,
#                 the lite backend, planning, export and the unit/integration tests of the job.
#   --cuda 12     the CUDA 12 build of the model stack (NVIDIA drivers older than 580; see
#                 scripts/install_models.sh). Default 13.
#
# Installs the pinned model stack and MediaPipe through scripts/install_models.sh (which holds every install
# workaround, among them why MediaPipe goes in --no-deps), then the project in editable mode with the s3,
# ray, dev and docs extras (docs: mkdocs, to build the site as CI does). With --no-models, MediaPipe comes
# from the project's `lite` extra instead (nothing there clashes with it: no opencv-python).
set -euo pipefail

VENV=.venv
WITH_MODELS=1
CUDA=13
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-models) WITH_MODELS=0; shift ;;
        --cuda) [[ $# -ge 2 ]] || { echo "--cuda needs 13 or 12" >&2; exit 2; }; CUDA="$2"; shift 2 ;;
        --cuda=*) CUDA="${1#--cuda=}"; shift ;;
        # The lite backend used to need its own VENV_DIR-lite; it is now always in VENV_DIR.
        --lite) echo "setup.sh: --lite is no longer needed (the lite backend is in $VENV)" >&2; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) VENV="$1"; shift ;;
    esac
done
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "bmp-label needs Python >= 3.10"'
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --disable-pip-version-check -q -U "pip==26.3" "setuptools==80.10.2" "wheel==0.48.0"
if [[ "$WITH_MODELS" == 1 ]]; then
    # The model stack first, so that its exact pins (torch, numpy) are what the project then sees.
    bash "$HERE/scripts/install_models.sh" "$PY" --cuda "$CUDA"
    "$PY" -m pip install --disable-pip-version-check -q -e "$HERE[s3,ray,dev,docs]"
else
    # One resolve, so that ray settles on mediapipe's protobuf < 5 (on its own ray would take protobuf 7).
    "$PY" -m pip install --disable-pip-version-check -q -e "$HERE[s3,ray,dev,docs,lite]"
fi
echo "setup.sh: ready. Activate with: source $VENV/bin/activate"
