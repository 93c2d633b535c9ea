#!/usr/bin/env bash
# Create a virtualenv with bmp-label and everything it runs with.
#
# Usage: scripts/setup.sh [VENV_DIR] [--no-models] [--lite]
#   VENV_DIR      where the virtualenv goes (default: .venv)
#   --no-models   skip the real-model stack (torch, mmdet, mmpose, sam2, ~7 GB): enough for fake
#                 models, planning, export and the unit/integration tests of the job.
#   --lite        also create VENV_DIR-lite with the MediaPipe BlazePose backend (models.kind: lite).
#                 MediaPipe pins protobuf < 5 and opencv-contrib, which clash with the model stack,
#                 so it gets its own virtualenv (README "Lite").
#
# Installs: the project in editable mode with the s3, ray and dev extras, then (unless --no-models)
# the pinned model stack through scripts/install_models.sh, which holds every install workaround.
set -euo pipefail

VENV=.venv
WITH_MODELS=1
WITH_LITE=0
for arg in "$@"; do
    case "$arg" in
        --no-models) WITH_MODELS=0 ;;
        --lite) WITH_LITE=1 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        -*) echo "unknown option $arg" >&2; exit 2 ;;
        *) VENV="$arg" ;;
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
    bash "$HERE/scripts/install_models.sh" "$PY"
fi
"$PY" -m pip install --disable-pip-version-check -q -e "$HERE[s3,ray,dev]"
if [[ "$WITH_LITE" == 1 ]]; then
    LITE="$VENV-lite"
    [[ -x "$LITE/bin/python" ]] || "$PYTHON" -m venv "$LITE"
    "$LITE/bin/python" -m pip install --disable-pip-version-check -q -U "pip==26.3" "setuptools==80.10.2" "wheel==0.48.0"
    "$LITE/bin/python" -m pip install --disable-pip-version-check -q -e "$HERE[s3,lite,ray,dev]"  # one resolve: ray with mediapipe's protobuf<5
    echo "setup.sh: lite backend in $LITE"
fi
echo "setup.sh: ready. Activate with: source $VENV/bin/activate"
