#!/usr/bin/env bash
# A SEPARATE test-only environment with Ultralytics, for tests/integration/test_export_ultralytics.py.
# Ultralytics is AGPL-3.0: bmp-label never imports it; only that test runs it, in a subprocess.
#
# Usage: scripts/setup_ultralytics.sh [MAIN_VENV]   (default .venv; makes .venv-ultralytics beside it)
# The new venv reuses MAIN_VENV's packages (torch, torchvision, opencv, numpy, ...) through a .pth file,
# so only Ultralytics itself (no deps) and its three small extras are downloaded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MAIN="${1:-.venv}"
SITE="$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
BASE="$("$MAIN/bin/python" -c 'import sys; print(sys._base_executable)')"
"$BASE" -m venv .venv-ultralytics
NEW_SITE="$(.venv-ultralytics/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$SITE" > "$NEW_SITE/bmp_main_venv.pth"
.venv-ultralytics/bin/pip install -q --no-deps "ultralytics==8.4.190"
.venv-ultralytics/bin/pip install -q psutil polars ultralytics-thop
.venv-ultralytics/bin/python -c "import ultralytics; print('ultralytics', ultralytics.__version__)"
