#!/usr/bin/env bash
# Run every test suite in the environment scripts/setup.sh made (what CI runs).
#
# Usage: scripts/test.sh [VENV_DIR] [-- extra pytest args]
#   tests/unit, tests/integration (local Ray, moto S3), tests/models (real architectures, random weights),
#   tests/lite (MediaPipe BlazePose, real weights, AP checked by pycocotools): one environment for all.
#   Suites whose stack is not installed (e.g. after setup.sh --no-models) skip, saying why (-rs).
#   ruff runs first: the style rules CI keeps (pyproject.toml [tool.ruff]).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv
if [[ $# -gt 0 && "$1" != "--" ]]; then VENV="$1"; shift; fi
[[ "${1:-}" == "--" ]] && shift
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "no virtualenv at $VENV: run scripts/setup.sh first" >&2
    exit 2
fi
# Style first (seconds): ruff with the rule set in pyproject.toml ([tool.ruff]).
"$VENV/bin/python" -m ruff check .
"$VENV/bin/python" -m pytest -q -rs tests "$@"
