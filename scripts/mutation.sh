#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut (3.x, the [test] extra).
#
#   scripts/mutation.sh                 # every module below (about 15-25 min on 2 cores)
#   scripts/mutation.sh fusion config   # some of them
#   scripts/mutation.sh --smoke         # CI: fusion's transition state machine only (< 1 min)
#
# Each module is mutated in a scratch copy of the tracked files (mutmut writes mutants/ next to
# pyproject.toml, and the copy keeps the work tree clean), against the test file that owns it.
# Prints one line per module: killed, survived, no tests, score = killed / all mutants; the
# survivors' diffs go to $OUT/<module>.survivors.txt ($OUT defaults to runs/mutation).
# mutmut picks the covering tests per mutant itself and forks from a warmed-up process, which
# is what makes it ~40x faster here than cosmic-ray (one pytest start per mutant): 430 mutants
# of fusion.py in 111 s against an estimated 69 min (docs/testing.md).
# Exit status: 0, or 1 when --smoke finds a surviving mutant, or 2 on bad usage.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
OUT="${OUT:-$REPO/runs/mutation}"
JOBS="${JOBS:-$(nproc)}"
export REDSG_DATA="${REDSG_DATA:-$(dirname "$REPO")/shared/data}"

# module -> file to mutate, tests that own it, mutant name globs ("" = all of the file)
declare -A FILE=([fusion]=redsg_edge/fusion.py [reply]="redsg_edge/reply/*"
                 [config]=redsg_edge/config.py [vision]=redsg_edge/vision.py)
declare -A TESTS=([fusion]='"tests/test_fusion.py"' [config]='"tests/test_config.py"'
                  [vision]='"tests/test_vision.py"'
                  [reply]='"tests/test_reply.py", "tests/test_reply_rules.py", "-k", "split_sentences or sentence_boundaries or long_remainders or clean_for_speech or templates_never or templates_table or template_table or prompt or read_api_key or is_local_url"')
# reply/: its pure rules (sentence splitting, speech cleaning, templates, prompt, endpoint
# check in text.py, prompt.py, chat.py) against their unit tests; the worker's threads and Piper (seconds per test) are covered
# by the reply and daemon tests, too slow to run once per mutant.
declare -A NAMES=(
  [reply]="redsg_edge.reply.text.x__word_before* redsg_edge.reply.text.x__is_boundary* redsg_edge.reply.text.x__split_line* redsg_edge.reply.text.x_split_sentences* redsg_edge.reply.text.x_clean_for_speech* redsg_edge.reply.prompt.xǁTemplatePicker* redsg_edge.reply.prompt.x_build_messages* redsg_edge.reply.prompt.x__describe* redsg_edge.reply.chat.x_is_local_url* redsg_edge.reply.chat.x_read_api_key*"
  [vision]="redsg_edge.vision.x_crop_face* redsg_edge.vision.x_select_face* redsg_edge.vision.x_iou* redsg_edge.vision.xǁVisionWorker*"
)

smoke=0
modules=()
for arg in "$@"; do
    case $arg in
        --smoke) smoke=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        fusion|reply|config|vision) modules+=("$arg") ;;
        *) echo "mutation.sh: unknown module $arg (fusion, reply, config, vision)" >&2; exit 2 ;;
    esac
done
if ((smoke)); then
    modules=(fusion)
    NAMES[fusion]="redsg_edge.fusion.xǁFusionǁ_step*"
elif ((${#modules[@]} == 0)); then
    modules=(fusion reply config vision)
fi

"$PY" -c "import mutmut" 2>/dev/null || {
    echo "mutation.sh: mutmut is not installed in $PY (pip install -e '.[test]')" >&2; exit 2; }
work="$(mktemp -d "${TMPDIR:-/tmp}/redsg-mutation.XXXXXX")"
trap 'rm -rf "$work"' EXIT
(cd "$REPO" && git ls-files -z | tar --null -T - -cf -) \
    | tar -xf - -C "$work"
cp "$work/pyproject.toml" "$work/pyproject.base.toml"
mkdir -p "$OUT"
status=0
for m in "${modules[@]}"; do
    cp "$work/pyproject.base.toml" "$work/pyproject.toml"
    cat >> "$work/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["redsg_edge/"]
only_mutate = ["${FILE[$m]}"]
pytest_add_cli_args_test_selection = [${TESTS[$m]}]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
also_copy = [$(cd "$work" && ls -A | grep -v -x -e redsg_edge -e tests -e mutants -e .git \
               | sed 's/.*/"&"/' | paste -sd, -)]
EOF
    rm -rf "$work/mutants"
    t0=$(date +%s)
    # shellcheck disable=SC2086  # the name globs are words on purpose
    (cd "$work" && "$PY" -m mutmut run --max-children "$JOBS" ${NAMES[$m]:-} >"$OUT/$m.log" 2>&1) || {
        echo "$m: mutmut failed, see $OUT/$m.log" >&2; status=1; continue; }
    (cd "$work" && "$PY" -m mutmut export-cicd-stats >/dev/null)
    secs=$(( $(date +%s) - t0 ))
    survivors="$OUT/$m.survivors.txt"
    : >"$survivors"
    names=$(cd "$work" && "$PY" -m mutmut results 2>/dev/null | awk -F': ' '$2 == "survived" || $2 == "no tests" {print $1}' | tr -d ' ')
    for name in $names; do
        { echo "### $name"; (cd "$work" && "$PY" -m mutmut show "$name" 2>/dev/null | grep -E '^[-+] ' || true); } >>"$survivors"
    done
    "$PY" - "$work/mutants/mutmut-cicd-stats.json" "$m" "$secs" "$survivors" "${NAMES[$m]:-all}" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
done = s["killed"] + s["survived"] + s["no_tests"] + s["timeout"] + s["suspicious"]
score = s["killed"] / done if done else 0.0
print(f"{sys.argv[2]}: {s['killed']} killed, {s['survived']} survived, {s['no_tests']} no tests, "
      f"{s['timeout']} timeout of {done} mutants ({sys.argv[5][:60]}): score {score:.1%} "
      f"in {sys.argv[3]} s; survivors: {sys.argv[4]}")
EOF
    if ((smoke)) && grep -q '^###' "$survivors"; then
        echo "smoke: surviving mutants of Fusion._step (see $survivors):" >&2
        cat "$survivors" >&2
        status=1
    fi
done
exit $status
