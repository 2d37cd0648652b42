#!/usr/bin/env bash
# Run a category of recipes: one `fastzhang run --config RECIPE --quiet` per recipe.
#
#   bash recipes/run_all_recipes.sh --category NAME|all [--force] [--use_wandb] [--jobs N] [--verbose]
#        [--recipes-dir DIR] [--results-dir DIR] [--checkpoint-dir DIR] [--data-dir DIR]
#        [-- MORE FLAGS FOR fastzhang run]
#
# NAME is a folder of recipes/ (table1, figure1a, figure1b, baseline, random_labels, demo);
# `all` is every folder, and recipes that define the same experiment (same ID) run once.
# Completed experiments are detected by `fastzhang run` itself (exit 0 plus its
# "EXPERIMENT ALREADY COMPLETED" block): they count as skipped. Exit 3 means another process
# holds the experiment's lock (e.g. a sibling target under make -j): "busy elsewhere", not a
# failure. A failed recipe does not stop the batch. Runs are --quiet unless --verbose is given
# (then each run prints its per-epoch lines).
#
# Exit status: 0 nothing failed; 1 some recipe failed; 2 bad usage; 130/143 stopped by
# SIGINT/SIGTERM (the signal is passed on to the running experiments, which checkpoint first).
# Environment: FASTZHANG (the fastzhang executable; default .venv/bin/fastzhang, else PATH),
# FASTZHANG_PYTHON (interpreter used to compute experiment IDs), RECIPES_DIR.

set -u
shopt -s nullglob

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
marker="EXPERIMENT ALREADY COMPLETED"

usage() { sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "run_all_recipes: error: $*" >&2; exit 2; }

category="" max_jobs=1 recipes_dir=${RECIPES_DIR:-$here} run_flags=() quiet=(--quiet)
while (($#)); do
    case $1 in
        --category | --jobs | -j | --recipes-dir | --results-dir | --checkpoint-dir | --data-dir)
            (($# >= 2)) || die "$1 needs a value"
            case $1 in
                --category) category=$2 ;;
                --jobs | -j) max_jobs=$2 ;;
                --recipes-dir) recipes_dir=$2 ;;
                *) run_flags+=("$1" "$2") ;;
            esac
            shift 2 ;;
        --force | --use_wandb) run_flags+=("$1"); shift ;;
        --verbose) quiet=(); shift ;;
        --) shift; run_flags+=("$@"); break ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ -n $category ]] || die "--category is required: a folder of $recipes_dir, or all"
[[ $max_jobs =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer; got '$max_jobs'"
[[ -d $recipes_dir ]] || die "recipes folder '$recipes_dir' does not exist"

if [[ -n ${FASTZHANG:-} ]]; then fz=$FASTZHANG
elif [[ -x $repo/.venv/bin/fastzhang ]]; then fz=$repo/.venv/bin/fastzhang
else fz=fastzhang; fi
command -v "$fz" >/dev/null || die "cannot find the fastzhang command '$fz' (run make setup, or set FASTZHANG)"
if [[ -n ${FASTZHANG_PYTHON:-} ]]; then py=$FASTZHANG_PYTHON
elif [[ -x $(dirname "$(command -v "$fz")")/python ]]; then py=$(dirname "$(command -v "$fz")")/python
elif [[ -x $repo/.venv/bin/python ]]; then py=$repo/.venv/bin/python
else py=python3; fi

# ---- which recipes --------------------------------------------------------------------
if [[ $category == all ]]; then dirs=("$recipes_dir"/*/)
else
    [[ -d $recipes_dir/$category ]] || die "no category '$category' in $recipes_dir (folders: $(cd "$recipes_dir" && ls -d */ | tr -d / | tr '\n' ' '))"
    dirs=("$recipes_dir/$category/")
fi
found=()
for d in "${dirs[@]}"; do found+=("${d%/}"/*.yaml "${d%/}"/*.yml); done
((${#found[@]})) || die "no recipes (*.yaml) for category '$category' in $recipes_dir"

# One experiment ID per recipe (empty when the recipe does not load: `fastzhang run` then
# reports why). Recipes sharing an ID run once.
mapfile -t ids < <("$py" - "${found[@]}" <<'PY'
import sys
from fastzhang.config import ExperimentConfig
for path in sys.argv[1:]:
    try:
        print(ExperimentConfig.from_yaml(path).experiment_id)
    except Exception:
        print("")
PY
)
if ((${#ids[@]} != ${#found[@]})); then
    echo "run_all_recipes: warning: could not compute experiment IDs with $py; duplicates are not merged" >&2
    ids=()
fi
recipes=() recipe_ids=()
declare -A first_with_id=()
for i in "${!found[@]}"; do
    id=${ids[i]:-}
    if [[ -n $id && -n ${first_with_id[$id]:-} ]]; then
        echo "same experiment as ${first_with_id[$id]}: ${found[i]} ($id), runs once"
        continue
    fi
    [[ -n $id ]] && first_with_id[$id]=${found[i]}
    recipes+=("${found[i]}") recipe_ids+=("$id")
done
total=${#recipes[@]}
echo "category $category: $total experiment(s) from ${#found[@]} recipe(s), up to $max_jobs at once, using $fz"

# ---- running ----------------------------------------------------------------------------
state=$(mktemp -d "${TMPDIR:-/tmp}/run_all_recipes.XXXXXX") || die "cannot create a temporary folder"
trap 'rm -rf "$state"' EXIT

# Job control gives each job its own process group, so a signal can be passed on to a whole job,
# and background jobs keep SIGINT (without it, bash starts them with SIGINT ignored).
set -m
stop_signal="" pgids=()
on_signal() {
    stop_signal=$1
    echo "run_all_recipes: got SIG$1; passing it on to the running experiments, starting no more" >&2
    for pg in "${pgids[@]}"; do kill -s "$1" -- "-$pg" 2>/dev/null; done
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

run_one() {  # index recipe: the run's output goes to the terminal (prefixed when parallel) and a log
    local idx=$1 recipe=$2 prefix=""
    trap ':' INT TERM  # outlive the signal passed to this job's group, to record the run's exit status
    ((max_jobs > 1)) && prefix="[$(basename "$(dirname "$recipe")")/$(basename "$recipe" .yaml)] "
    # The display side ignores signals so it never dies before the run's last words.
    "$fz" run --config "$recipe" "${quiet[@]}" "${run_flags[@]}" </dev/null 2>&1 |
        (trap '' INT TERM; tee "$state/$idx.log" | awk -v p="$prefix" '{ print p $0; fflush() }')
    echo "${PIPESTATUS[0]}" >"$state/$idx.rc"
}

started=0
for i in "${!recipes[@]}"; do
    while [[ -z $stop_signal ]] && (($(jobs -rp | wc -l) >= max_jobs)); do wait -n; done
    [[ -n $stop_signal ]] && break
    echo "== [$((i + 1))/$total] ${recipes[i]}${recipe_ids[i]:+ (${recipe_ids[i]})}"
    run_one "$i" "${recipes[i]}" &
    pgids+=($!)
    started=$((started + 1))
done
while [[ -n $(jobs -rp) ]]; do wait; done

# ---- summary ------------------------------------------------------------------------------
ran=() skipped=() busy=() failed=() stopped=()
for ((i = 0; i < started; i++)); do
    what="${recipes[i]}${recipe_ids[i]:+ (${recipe_ids[i]})}"
    rc=$(cat "$state/$i.rc" 2>/dev/null || echo none)
    case $rc in
        0) if grep -q "$marker" "$state/$i.log"; then skipped+=("$what"); else ran+=("$what"); fi ;;
        3) busy+=("$what") ;;
        130 | 143) [[ -n $stop_signal ]] && stopped+=("$what") || failed+=("$what: exit $rc") ;;
        *) failed+=("$what: exit $rc") ;;
    esac
done
echo
echo "== summary for category $category: ${#ran[@]} ran, ${#skipped[@]} skipped (already completed)," \
    "${#busy[@]} busy elsewhere, ${#failed[@]} failed${stop_signal:+, ${#stopped[@]} stopped, $((total - started)) not started}"
list() { local title=$1; shift; (($#)) && { echo "$title:"; printf '  %s\n' "$@"; }; return 0; }
list "busy elsewhere (another process holds the lock; rerun later to pick them up)" "${busy[@]}"
list "stopped by SIG$stop_signal (resume by rerunning)" "${stopped[@]}"
list "FAILED" "${failed[@]}"

if [[ $stop_signal == INT ]]; then exit 130; elif [[ $stop_signal == TERM ]]; then exit 143; fi
((${#failed[@]} == 0))
