#!/usr/bin/env bash
# The GPU suite: `make bench-gpu` (or `bash bench/gpu.sh`) from a clean checkout on a machine with
# one CUDA GPU. Under 6 minutes: the tests that need a GPU, then the benchmarks, each stage under its
# own time cap inside BENCH_GPU_BUDGET seconds (default 345), then one table.
#
# The machine needs PyTorch (CUDA), Triton, numpy, PyYAML and pytest, and no network: the other
# small dependencies are installed from wheel files in .whl/ at the repository root (git-ignored),
# filled beforehand on a machine with network access:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl orjson tqdm pytest-benchmark py-cpuinfo2 "pytest-benchmark==4.0.0" "py-cpuinfo==9.0.0"
#
# (pytest-benchmark 5 needs pytest >= 8.1 and py-cpuinfo2; 4.0.0 with py-cpuinfo serves an older
# pytest.) They go into bench/out/pydeps with pip --no-index --no-deps (or are unzipped when pip is
# missing); fastzhang itself runs from the checkout through PYTHONPATH. DALI is optional: its cases
# skip when nvidia-dali is absent. Tools that copy only tracked files must carry .whl along.
#
# Stages (bench/out/gpu-<stage>.json each; a stage cut by its cap still writes what it measured):
#   tests  tests/test_kernels.py on CUDA, CUDA graphs vs eager and the full fast path
#          (tests/test_fastpath.py -k cuda), DALI's GPU pipeline (tests/test_dali.py -k cuda)
#   data   bench/test_bench_data.py: naive vs resident vs Triton vs DALI loaders
#   train  bench/test_bench_train.py: images/s per model per mode, time-to-first-step (compile)
#   epoch  bench/test_bench_epoch.py: epoch time per model, checkpoint save/load
#   models bench/test_bench_models.py: AlexNet's LRN
# Output: bench/out/gpu.md (the table), bench/out/gpu-<stage>.log.
#
# No CUDA: exits 2 with a message. FASTZHANG_GPU_DRY_RUN=1 runs the install and a small CPU subset
# of every stage instead, to check this script on a machine without a GPU.
set -uo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT=bench/out
DEPS="$OUT/pydeps"
BUDGET="${BENCH_GPU_BUDGET:-345}"
DRY="${FASTZHANG_GPU_DRY_RUN:-0}"
say() { echo "bench/gpu.sh: $*"; }

has_cuda() { "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
if [[ "$DRY" != 1 ]] && ! has_cuda; then
    detail=$("$PY" -c "import torch; print(f'torch {torch.__version__}, built for CUDA {torch.version.cuda}')" \
        2>&1 | tail -1)
    say "no CUDA device is visible to PyTorch ($detail)."
    say "this suite needs a GPU machine; for the CPU suite run 'make bench'"
    say "(FASTZHANG_GPU_DRY_RUN=1 dry-runs this script's install and stages on the CPU)."
    exit 2
fi

mkdir -p "$OUT"
rm -f "$OUT"/gpu-*.json "$OUT"/gpu-*.log "$OUT/gpu.md"

# --- dependencies from .whl ----------------------------------------------------------------
export PYTHONPATH="$PWD:$PWD/$DEPS${PYTHONPATH:+:$PYTHONPATH}"  # a second run finds what the first installed
missing() { ! "$PY" -c "import $1" 2>/dev/null; }
want=()
missing orjson && want+=(orjson)
missing tqdm && want+=(tqdm)
if missing pytest_benchmark; then
    if "$PY" -c "import pytest, sys; sys.exit(tuple(map(int, pytest.__version__.split('.')[:2])) < (8, 1))"; then
        want+=("pytest-benchmark>=5" py-cpuinfo2)
    else
        want+=("pytest-benchmark<5" "py-cpuinfo<10")
    fi
fi
if ((${#want[@]})); then
    [[ -d .whl ]] || { say "missing ${want[*]} and no .whl/ folder: see this script's header"; exit 2; }
    say "installing ${want[*]} from .whl into $DEPS"
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --find-links .whl --no-deps --target "$DEPS" "${want[@]}" || exit 2
    else  # no pip: a wheel is a zip archive; unpack the newest one that fits this Python
        "$PY" - "$DEPS" "${want[@]}" <<'EOF' || exit 2
import re, sys, zipfile
from pathlib import Path
target, specs = Path(sys.argv[1]), sys.argv[2:]
tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
for spec in specs:
    name = re.split(r"[<>=]", spec)[0].replace("-", "_")
    major = re.search(r"([<>]=?)(\d+)", spec)
    fits = []
    for wheel in Path(".whl").glob(f"{name}-*.whl"):
        version = wheel.name.split("-")[1]
        if not ("-py3-none-any" in wheel.name or f"-{tag}-" in wheel.name):
            continue
        if major and not eval(f"{int(version.split('.')[0])} {major.group(1)} {major.group(2)}"):
            continue
        fits.append((tuple(int(p) for p in re.findall(r"\d+", version)), wheel))
    if not fits:
        sys.exit(f"no wheel in .whl fits {spec} on {tag}")
    zipfile.ZipFile(max(fits)[1]).extractall(target)
EOF
    fi
fi
# One compiler cache for this run, empty at its start: the train stage's compile times are cold;
# the epoch stage reuses its full-batch graphs and compiles only the last batch's shape.
export TORCHINDUCTOR_CACHE_DIR="$PWD/$OUT/compile-cache/inductor" TRITON_CACHE_DIR="$PWD/$OUT/compile-cache/triton"
rm -rf "$OUT/compile-cache"
"$PY" -c "import orjson, tqdm, pytest_benchmark, yaml, numpy" || { say "dependencies still missing"; exit 2; }

# --- stages -------------------------------------------------------------------------------------
start=$SECONDS
status=0
stage() {  # stage NAME CAP_SECONDS PYTEST_ARGS...
    local name=$1 cap=$2; shift 2
    local left=$((BUDGET - (SECONDS - start)))
    local t=$((cap < left ? cap : left))
    if ((t < 15)); then say "skipping $name: the time budget is spent"; return; fi
    say "$name (at most ${t}s)"
    timeout --signal=INT --kill-after=20 "$t" "$PY" -m pytest -q -p no:cacheprovider "$@" \
        >"$OUT/gpu-$name.log" 2>&1
    local rc=$?
    tail -3 "$OUT/gpu-$name.log"
    if ((rc == 124)); then say "$name: stopped at its ${t}s cap"; fi
    if ((rc != 0 && rc != 5)); then status=1; fi
}
json() { echo "--benchmark-json=$OUT/gpu-$1.json"; }

if [[ "$DRY" == 1 ]]; then
    say "dry run on $("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
    export FASTZHANG_BENCH_THREADS="${FASTZHANG_BENCH_THREADS:-1}"
    stage tests 120 tests/test_fastpath.py tests/test_kernels.py tests/test_dali.py \
        -k "cuda or auto_defaults or float32"
    stage data 60 bench/test_bench_data.py "$(json data)" -k "dataloader[0] or resident or triton"
    stage train 60 bench/test_bench_train.py "$(json train)" -k "mlp1-eager or mlp1-amp"
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    # Caps (seconds) sum to the budget; each is a prediction (bench/NOTES.md §7) with room to spare.
    # The tests compile into their own cache, so the benchmarks' first compile stays cold.
    TORCHINDUCTOR_CACHE_DIR="$PWD/$OUT/compile-cache/tests" \
        stage tests 80 tests/test_kernels.py tests/test_fastpath.py tests/test_dali.py -k "cuda or kernels"
    stage data 25 bench/test_bench_data.py "$(json data)"
    stage train 130 bench/test_bench_train.py "$(json train)"
    stage epoch 90 bench/test_bench_epoch.py "$(json epoch)"
    stage models 20 bench/test_bench_models.py "$(json models)"
fi

shopt -s nullglob
files=()
for name in data train epoch models; do [[ -f "$OUT/gpu-$name.json" ]] && files+=("$OUT/gpu-$name.json"); done
if ((${#files[@]})); then
    "$PY" bench/table.py "${files[@]}" | tee "$OUT/gpu.md"
else
    say "no benchmark results were written"
    status=1
fi
say "done in $((SECONDS - start))s of ${BUDGET}s; logs and JSON in $OUT/"
exit $status
