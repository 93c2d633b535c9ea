#!/usr/bin/env bash
# Separate test-only environments for the clients that read our exports, so the tests prove the
# formats with the readers' own code (tests/integration/test_export_{ultralytics,label_studio}.py;
# without these venvs those tests skip and the strict format checks of tests/unit still run):
#   .venv-ultralytics   Ultralytics 8.4.190 (AGPL-3.0: bmp-label never imports it; only that test runs it,
#                       in a subprocess), without its dependencies plus its three small extras
#   .venv-labelstudio   the Label Studio SDK 2.1.2 (bmp-label never imports it either)
# Each new venv sees MAIN_VENV's packages (torch, opencv, numpy, ...) through a .pth file, so only the
# client itself (and what it needs beyond them) is downloaded.
#
# Usage: scripts/setup_test_clients.sh [MAIN_VENV]   (default .venv)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MAIN="${1:-.venv}"
SITE="$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
BASE="$("$MAIN/bin/python" -c 'import sys; print(sys._base_executable)')"

client_venv() {  # client_venv DIR: a venv that also sees MAIN's site-packages
    "$BASE" -m venv "$1"
    local new_site
    new_site="$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$SITE" > "$new_site/bmp_main_venv.pth"
}

client_venv .venv-ultralytics
.venv-ultralytics/bin/pip install -q --disable-pip-version-check --no-deps "ultralytics==8.4.190"
.venv-ultralytics/bin/pip install -q --disable-pip-version-check psutil polars ultralytics-thop
.venv-ultralytics/bin/python -c "import ultralytics; print('ultralytics', ultralytics.__version__)"

client_venv .venv-labelstudio
.venv-labelstudio/bin/pip install -q --disable-pip-version-check "label-studio-sdk==2.1.2"
.venv-labelstudio/bin/python -c "from label_studio_sdk.label_interface import LabelInterface; print('label-studio-sdk ok')"
