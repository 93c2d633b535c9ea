#!/usr/bin/env bash
# Run every test suite in the environment scripts/setup.sh made (what CI runs).
#
# Usage: scripts/test.sh [VENV_DIR] [-- extra pytest args]
#   .venv:       tests/unit, tests/integration (local Ray, moto S3), tests/models (real architectures,
#                random weights), tests/lite's geometry tests
#   .venv-lite:  tests/lite with MediaPipe (real BlazePose weights, AP checked by pycocotools), when
#                scripts/setup.sh --lite made it
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv
if [[ $# -gt 0 && "$1" != "--" ]]; then VENV="$1"; shift; fi
[[ "${1:-}" == "--" ]] && shift
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "no virtualenv at $VENV: run scripts/setup.sh first" >&2
    exit 2
fi
"$VENV/bin/python" -m pytest -q -rs tests "$@"
if [[ -x "$VENV-lite/bin/python" ]]; then
    "$VENV-lite/bin/python" -m pytest -q -rs tests/lite "$@"
else
    echo "test.sh: no $VENV-lite, skipped the MediaPipe accuracy tests (scripts/setup.sh --lite)"
fi
