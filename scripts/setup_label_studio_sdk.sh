#!/usr/bin/env bash
# A separate test-only environment with the Label Studio SDK, for
# tests/integration/test_export_label_studio.py (bmp-label never imports the SDK).
#
# Usage: scripts/setup_label_studio_sdk.sh [MAIN_VENV]   (default .venv; makes .venv-labelstudio)
# The new venv sees MAIN_VENV's packages through a .pth file; pip puts the SDK and whatever of its
# dependencies it needs in the new venv only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MAIN="${1:-.venv}"
SITE="$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
BASE="$("$MAIN/bin/python" -c 'import sys; print(sys._base_executable)')"
"$BASE" -m venv .venv-labelstudio
NEW_SITE="$(.venv-labelstudio/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$SITE" > "$NEW_SITE/bmp_main_venv.pth"
.venv-labelstudio/bin/pip install -q "label-studio-sdk==2.1.2"
.venv-labelstudio/bin/python -c "from label_studio_sdk.label_interface import LabelInterface; print('ok')"
