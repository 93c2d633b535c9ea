#!/usr/bin/env bash
# Submit `bmp-label run` to a running Ray cluster with infra/runtime_env.yaml.
#
# Usage: infra/submit.sh [--no-wait] INPUT OUTPUT [CONFIG] [-- MORE_RUN_ARGS...]
#   INPUT, OUTPUT   URIs as the cluster sees them: s3://bucket/prefix, or an absolute path on a shared
#                   file system. Relative paths are refused: the job runs in a temporary copy of this
#                   checkout on the head node, and outputs written there are lost.
#   CONFIG          a config file inside this repository (uploaded with it; default configs/bmp_d3.yaml;
#                   a relative path is tried from the current folder, then from the repository root),
#                   or an absolute path that exists on the cluster (e.g. /etc/bmp/config.yaml in the image).
#   MORE_RUN_ARGS   passed on to `bmp-label run`: --num-workers 8, --force, models.precision=bf16, ...
#   --no-wait       return once submitted instead of following the logs (then: ray job logs -f JOB_ID).
#
# Env: RAY_ADDRESS  the cluster's dashboard (default http://127.0.0.1:8265: `ray dashboard
#                   infra/ray-cluster.yaml` or `kubectl port-forward svc/...-head-svc 8265` forwards it there).
#      RAY         the ray executable (default: ray on PATH).
#
# Resuming: run the same command again; committed shards in OUTPUT are skipped.
set -euo pipefail

usage() { sed -n '2,18p' "$0" >&2; exit 2; }

WAIT_FLAG=()
if [[ "${1:-}" == "--no-wait" ]]; then WAIT_FLAG=(--no-wait); shift; fi
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && usage
[[ $# -ge 2 ]] || usage
INPUT=$1 OUTPUT=$2; shift 2
CONFIG=configs/bmp_d3.yaml
if [[ $# -gt 0 && "$1" != "--" ]]; then CONFIG=$1; shift; fi
[[ "${1:-}" == "--" ]] && shift

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

is_remote_or_absolute() { [[ "$1" == *://* || "$1" == /* ]]; }
for pair in "INPUT=$INPUT" "OUTPUT=$OUTPUT"; do
    if ! is_remote_or_absolute "${pair#*=}"; then
        echo "submit.sh: ${pair%%=*} '${pair#*=}' is relative; give an s3:// URI or an absolute path" >&2
        exit 2
    fi
done

# The config travels inside the uploaded working_dir, so the job must see it by its repo-relative path.
if [[ ! -f "$CONFIG" && "$CONFIG" != /* && -f "$REPO/$CONFIG" ]]; then CONFIG="$REPO/$CONFIG"; fi
if [[ -f "$CONFIG" ]]; then
    abs="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"
    case "$abs" in
        "$REPO"/*) CONFIG="${abs#"$REPO"/}" ;;
        *) echo "submit.sh: config $CONFIG is outside $REPO and would not be uploaded; copy it into configs/" >&2
           exit 2 ;;
    esac
elif [[ "$CONFIG" != /* ]]; then
    echo "submit.sh: config $CONFIG not found" >&2
    exit 2
fi  # else: an absolute path that only exists on the cluster (a ConfigMap, the image); bmp-label checks it

cd "$REPO"  # runtime_env.yaml's working_dir "." is this folder
exec "${RAY:-ray}" job submit \
    --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
    --runtime-env infra/runtime_env.yaml \
    "${WAIT_FLAG[@]}" \
    -- bmp-label run --config "$CONFIG" --input "$INPUT" --output "$OUTPUT" "$@"
