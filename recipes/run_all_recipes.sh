#!/usr/bin/env bash
# Thin wrapper: `fastzhang batch` (the local pool) over one category of recipes, or all of them.
#
#   bash recipes/run_all_recipes.sh --category NAME|all [--jobs N] [--seeds 0-4] [--force] [--use_wandb]
#        [--recipes-dir DIR] [other flags of fastzhang batch: --results-dir DIR, --quiet, ...]
#
# NAME is a folder of recipes/ (table1, figure1a, figure1b, baseline, random_labels, cifar100, demo); `all` is
# every folder. --jobs N runs up to N recipes at once (`fastzhang batch --max-parallel N`); --seeds S runs
# every recipe once per seed (0-4, or 0,3,7; `make table1 SEEDS=0-4` passes it). The rest is
# `fastzhang batch`'s (see its --help): same experiment (ID) runs once, completed ones are skipped,
# exit status 0 nothing failed, 1 some run failed, 2 bad input, 130 / 143 stopped by SIGINT / SIGTERM.
# Environment: FASTZHANG (the fastzhang executable; default .venv/bin/fastzhang, else PATH), RECIPES_DIR.

set -euo pipefail
shopt -s nullglob

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
usage() { sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "run_all_recipes: error: $*" >&2; exit 2; }

category="" recipes_dir=${RECIPES_DIR:-$here} batch_flags=()
while (($#)); do
    case $1 in
        --category | --jobs | -j | --recipes-dir)
            (($# >= 2)) || die "$1 needs a value"
            case $1 in
                --category) category=$2 ;;
                --recipes-dir) recipes_dir=$2 ;;
                *) [[ $2 =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer; got '$2'"
                   batch_flags+=(--max-parallel "$2") ;;
            esac
            shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) batch_flags+=("$1"); shift ;;
    esac
done
[[ -n $category ]] || die "--category is required: a folder of $recipes_dir, or all"
[[ -d $recipes_dir ]] || die "recipes folder '$recipes_dir' does not exist"
if [[ $category == all ]]; then
    folders=("$recipes_dir"/*/)
else
    folders=("$recipes_dir/$category/")
    [[ -d ${folders[0]} ]] ||
        die "no category '$category' in $recipes_dir (folders: $(cd "$recipes_dir" && ls -d */ | tr -d / | tr '\n' ' '))"
fi
((${#folders[@]})) || die "no category folders in $recipes_dir"

fz=${FASTZHANG:-}
if [[ -z $fz ]]; then
    if [[ -x $repo/.venv/bin/fastzhang ]]; then fz=$repo/.venv/bin/fastzhang; else fz=fastzhang; fi
fi
command -v "$fz" >/dev/null || die "cannot find the fastzhang command '$fz' (run make setup, or set FASTZHANG)"
exec "$fz" batch "${folders[@]%/}" --title "category $category" "${batch_flags[@]}"
