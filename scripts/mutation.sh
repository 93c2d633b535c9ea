#!/usr/bin/env bash
# Mutation testing (mutmut 3) of chosen modules against the fast tests that exercise them.
#
# Usage: scripts/mutation.sh [--venv DIR] [--budget SECONDS] [--jobs N] MODULE...
#        scripts/mutation.sh --list
#   MODULE     a path from the table below (e.g. bmp_core/models/checkpoints.py), or "all".
#   --venv     the virtualenv scripts/setup.sh made (default .venv); mutmut comes from requirements/mutation.txt
#              and is installed there on first use.
#   --budget   wall-clock seconds per module (default 1200); on expiry the mutants tested so far are scored.
#   --jobs     parallel mutant runs (default: the CPU count).
#
# For each module: a scratch copy of the working tree in .mutation/<module>/ (git-ignored; tests and
# sources as they are now, committed or not), mutmut run on that one file with only the module's test
# files (the table), then the score (killed / tested) per function and overall, and every surviving
# mutant as a diff. Mutant names are mutmut's (x_<function>__mutmut_<n>); to see one again:
#   cd .mutation/<module> && <venv>/bin/mutmut show <name>
# Not run in CI (minutes per module on 2 cores). When to run it, and the recorded scores: docs/development.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HERE"

# module -> the fast test files (and pytest selection) that exercise it. Slow tests (real-size models,
# Ray, most moto servers) are left out: mutmut reruns a mutant's tests once per mutant. (The moto tests of
# checkpoints.py and sources.py stay, a second or two each: they alone reach the s3:// download / listing.)
declare -A TESTS=(
    [bmp_core/models/checkpoints.py]="tests/models/test_checkpoint_safety.py tests/models/test_checkpoints.py tests/models/test_checkpoint_hosts.py"
    [bmp_core/output/commits.py]="tests/unit/test_commit.py tests/unit/test_completeness.py tests/unit/test_worker.py tests/unit/test_edges_io.py"
    [jobs/finalize.py]="tests/unit/test_commit.py tests/unit/test_completeness.py tests/unit/test_worker_inputs.py"
    [bmp_core/io/tars.py]="tests/unit/test_io_sources.py tests/unit/test_tar_inputs.py tests/unit/test_worker_inputs.py tests/unit/test_pricing.py"
    [bmp_core/output/export/coco.py]="tests/unit/test_export.py tests/unit/test_export_geometry.py tests/unit/test_completeness.py tests/unit/test_export_visibility.py tests/unit/test_mutation_export_coco.py"
    [bmp_core/output/export/yolo.py]="tests/unit/test_export.py tests/unit/test_export_geometry.py tests/unit/test_mutation_export_yolo.py"
    [bmp_core/output/export/label_studio.py]="tests/unit/test_export.py tests/unit/test_export_geometry.py tests/unit/test_mutation_export_label_studio.py"
    [bmp_core/output/export/policy.py]="tests/unit/test_export.py tests/unit/test_export_geometry.py tests/unit/test_mutation_export_yolo.py tests/unit/test_mutation_export_label_studio.py tests/unit/test_mutation_export_policy.py"
    [bmp_core/output/export/manifest.py]="tests/unit/test_export.py tests/unit/test_export_geometry.py tests/unit/test_export_visibility.py tests/unit/test_mutation_export_yolo.py tests/unit/test_mutation_export_label_studio.py tests/unit/test_viz_policy.py tests/unit/test_mutation_export_manifest.py tests/unit/test_mutation_export_run.py tests/unit/test_mutation_export_source.py"
    [bmp_core/output/export/run.py]="tests/unit/test_export.py tests/unit/test_export_geometry.py tests/unit/test_export_visibility.py tests/unit/test_mutation_export_yolo.py tests/unit/test_mutation_export_label_studio.py tests/unit/test_viz_policy.py tests/unit/test_mutation_export_manifest.py tests/unit/test_mutation_export_run.py tests/unit/test_mutation_export_source.py"
    [bmp_core/output/export/source.py]="tests/unit/test_export.py tests/unit/test_export_geometry.py tests/unit/test_export_visibility.py tests/unit/test_mutation_export_yolo.py tests/unit/test_mutation_export_label_studio.py tests/unit/test_viz_policy.py tests/unit/test_completeness.py tests/unit/test_io_parquet_coco.py tests/unit/test_mutation_export_manifest.py tests/unit/test_mutation_export_run.py tests/unit/test_mutation_export_source.py"
    [bmp_core/output/reader.py]="tests/unit/test_output_reader.py tests/unit/test_completeness.py tests/unit/test_commit.py tests/unit/test_export.py tests/unit/test_evaluation.py tests/unit/test_worker.py tests/unit/test_mutation_reader.py"
    [bmp_core/io/sources.py]="tests/unit/test_io_sources.py tests/unit/test_worker_inputs.py tests/unit/test_path_probe.py tests/unit/test_mutation_sources.py tests/integration/test_s3_sources.py"
    [bmp_core/io/parquet_images.py]="tests/unit/test_io_sources.py tests/unit/test_worker_inputs.py tests/unit/test_mutation_parquet_images.py"
    [jobs/pricing.py]="tests/unit/test_pricing.py tests/unit/test_mutation_pricing.py"
    [jobs/path_probe.py]="tests/unit/test_path_probe.py tests/unit/test_mutation_path_probe.py"
    [jobs/ray_data.py]="tests/unit/test_ray_data.py tests/unit/test_mutation_ray_data.py"
)
# module -> a pytest -k expression deselecting the slow tests of those files.
declare -A DESELECT=(
    [bmp_core/models/checkpoints.py]="not (test_checkpoints_via_path_http_and_s3_reproduce_the_in_memory_models or test_a_renamed_key_fails_loudly_through_the_builder or test_published_layouts_load_strictly_into_bmp_d3_with_the_default_settings or test_vitpose_multi_layout_is_the_maskpose_network or test_one_renamed_key_or_one_changed_shape_is_refused_naming_it or test_a_person_only_rtmdet_layout_gets_the_num_classes_hint)"
)
# The order the modules were prioritised in (what a wrong result there costs), for "all" and --list.
ORDER=(
    bmp_core/models/checkpoints.py bmp_core/output/commits.py jobs/finalize.py bmp_core/io/tars.py
    bmp_core/output/export/coco.py bmp_core/output/export/yolo.py bmp_core/output/export/label_studio.py
    bmp_core/output/export/policy.py bmp_core/output/export/manifest.py bmp_core/output/export/run.py
    bmp_core/output/export/source.py bmp_core/output/reader.py bmp_core/io/sources.py
    bmp_core/io/parquet_images.py jobs/pricing.py jobs/path_probe.py jobs/ray_data.py
)

VENV=.venv
BUDGET_S=1200
JOBS="$(nproc 2>/dev/null || echo 2)"
MODULES=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --venv) VENV="$2"; shift 2 ;;
        --budget) BUDGET_S="$2"; shift 2 ;;
        --jobs) JOBS="$2"; shift 2 ;;
        --list) for m in "${ORDER[@]}"; do echo "$m: ${TESTS[$m]}${DESELECT[$m]:+ -k \"${DESELECT[$m]}\"}"; done; exit 0 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        all) MODULES+=("${ORDER[@]}"); shift ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) MODULES+=("$1"); shift ;;
    esac
done
[[ ${#MODULES[@]} -gt 0 ]] || { sed -n '2,18p' "$0"; exit 2; }
VENV="$(cd "$VENV" 2>/dev/null && pwd)" || { echo "no virtualenv at $VENV: run scripts/setup.sh first" >&2; exit 2; }
PY="$VENV/bin/python"
# The scratch copies live in .mutation/<module>/, where the shared photos beside the checkout (found by
# tests/conftest.py) are not: without this, the tests that need them skip quietly and the modules they
# reach (e.g. jobs/ray_data.py's decode stage) score low for no reason.
SHARED_PHOTOS="$(dirname "$HERE")/shared/testdata"
if [[ -z "${BMP_TESTDATA:-}" && -d "$SHARED_PHOTOS" ]]; then
    export BMP_TESTDATA="$SHARED_PHOTOS"
fi
if ! "$VENV/bin/mutmut" --help >/dev/null 2>&1; then
    "$PY" -m pip install --disable-pip-version-check -q -r requirements/mutation.txt
fi

for module in "${MODULES[@]}"; do
    [[ -n "${TESTS[$module]:-}" ]] || { echo "no test selection for $module (scripts/mutation.sh --list)" >&2; exit 2; }
done

for module in "${MODULES[@]}"; do
    slug="${module//\//_}"
    work="$HERE/.mutation/${slug%.py}"
    rm -rf "$work"
    mkdir -p "$work"
    # The working tree as it is (tracked and new files, not ignored ones) into the scratch folder.
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [[ -e "$f" ]] && printf '%s\0' "$f"
    done | tar --null -T - -cf - | tar -xf - -C "$work"
    # The selection: the module's test files that exist (a table entry may name one added later), -k.
    selection=()
    for f in ${TESTS[$module]}; do
        if [[ -f "$f" ]]; then selection+=("$f"); else echo "   (no $f here: left out)"; fi
    done
    [[ -z "${DESELECT[$module]:-}" ]] || selection+=(-k "${DESELECT[$module]}")
    others=()
    for entry in "$work"/*; do
        name="$(basename "$entry")"
        [[ "$name" == bmp_core || "$name" == jobs ]] || others+=("$name")
    done
    "$PY" - "$work/pyproject.toml" "$module" "${others[@]}" -- "${selection[@]}" <<'EOF'
import json
import sys

pyproject, module, *rest = sys.argv[1:]
split = rest.index("--")
also_copy, selection = rest[:split], rest[split + 1 :]
with open(pyproject, "a") as f:
    f.write("\n[tool.mutmut]\n")
    f.write('source_paths = ["bmp_core", "jobs"]\n')
    f.write(f"only_mutate = {json.dumps([module])}\n")
    f.write(f"also_copy = {json.dumps(also_copy)}\n")
    f.write(f"pytest_add_cli_args_test_selection = {json.dumps(selection)}\n")
    # No test ran for a mutant = "no tests" (reported), not a pass.
    f.write("mutate_only_covered_lines = false\n")
EOF
    echo "== $module  (tests: ${selection[*]}; budget ${BUDGET_S} s, $JOBS jobs)"
    start=$(date +%s)
    set +e
    # PYTHONPATH cleared: the tests must import the mutated copy, never the checkout. timeout runs in its
    # own process group: stopping this script (Ctrl-C, kill) stops that group, mutmut's workers included.
    (cd "$work" && PYTHONPATH= exec timeout "$BUDGET_S" nice -n 10 "$VENV/bin/mutmut" run --max-children "$JOBS" \
        >"$work/mutmut-run.log" 2>&1) &
    runner=$!
    trap 'kill -- -"$runner" 2>/dev/null; exit 130' INT TERM
    wait "$runner"
    rc=$?
    trap - INT TERM
    set -e
    elapsed=$(( $(date +%s) - start ))
    if [[ $rc == 124 ]]; then
        echo "   budget of ${BUDGET_S} s spent: scoring the mutants tested so far"
    elif [[ $rc != 0 ]]; then
        echo "   mutmut failed (exit $rc); its log: $work/mutmut-run.log" >&2
        tail -20 "$work/mutmut-run.log" >&2
        continue
    fi
    # Score and survivors from mutmut's own records (its "results" data), in one process.
    (cd "$work" && PYTHONPATH= "$PY" - "$elapsed" "$work/survivors.txt" <<'EOF'
import collections
import sys

from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files

elapsed, survivors_file = sys.argv[1], sys.argv[2]
by_function: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
survivors = []
for path in walk_mutatable_files():
    data = SourceFileMutationData(path=path)
    data.load()
    for name, exit_code in data.exit_code_by_key.items():
        status = status_by_exit_code[exit_code]
        # mutmut's names: <module>.x_<function>__mutmut_<n>, <module>.x\u01c1<Class>\u01c1<method>__mutmut_<n>
        function = name.split("__mutmut_")[0].rsplit(".", 1)[-1][2:].replace("\u01c1", ".")
        by_function[function][status] += 1
        if status in ("survived", "no tests", "suspicious"):
            survivors.append((name, status, path))
untested = ("not checked", "skipped")
total: collections.Counter = collections.Counter()
print(f"   {'function':48s} killed/tested")
for function, counts in sorted(by_function.items()):
    total.update(counts)
    tested = sum(n for s, n in counts.items() if s not in untested)
    killed = counts["killed"] + counts["timeout"]
    print(f"   {function:48s} {killed:3d}/{tested:<3d}" + ("" if killed == tested else "  <- survivors"))
tested = sum(n for s, n in total.items() if s not in untested)
killed = total["killed"] + total["timeout"]
score = 100.0 * killed / tested if tested else 0.0
print(f"   SCORE {killed}/{tested} killed = {score:.1f} %  ({dict(total)}; {elapsed} s)")
with open(survivors_file, "w") as f:
    for name, status, path in survivors:
        f.write(f"# {name}: {status}\n{get_diff_for_mutant(name, path=path)}\n")
print(f"   {len(survivors)} survivors (diffs): {survivors_file}")
EOF
    ) || echo "   could not score (see $work/mutmut-run.log)" >&2
done
