#!/usr/bin/env bash
# The GPU benchmark suite: `make bench-gpu` (or `bash bench/gpu.sh`) on a machine with one CUDA GPU,
# after `make gpu-check` (the first contact: correctness and the headline speeds in ~6 minutes). This
# is the longer pytest-benchmark suite: every stage under its own time cap inside BENCH_GPU_BUDGET
# seconds (default 540), then one table.
#
# The machine needs PyTorch (CUDA), Triton, numpy, PyYAML and pytest >= 8.1, and no network:
# fastzhang and what that Python lacks (orjson, tqdm, pytest-benchmark, py-cpuinfo) are installed by
# the GPU check's installer (bench/gpu_check/install.py, pip --no-index --target) from the wheel
# folder that `make gpu-wheels` fills (bench/wheels/, or GPU_CHECK_WHEELS), into bench/out/gpu-bench/.
# The checkout itself is not on sys.path (pytest runs from bench/out/): the installed fastzhang is
# the product, with kernels/ as fastzhang.kernels.
#
# Stages (bench/out/gpu-<stage>.json each; a stage cut by its cap still writes what it measured):
#   data   bench/test_bench_data.py: naive vs resident vs Triton vs DALI loaders
#   train  bench/test_bench_train.py: images/s per model per mode, time-to-first-step (compile)
#   epoch  bench/test_bench_epoch.py: epoch time per model, checkpoint save/load
#   models bench/test_bench_models.py: AlexNet's LRN
# Output: bench/out/gpu.md (the table), bench/out/gpu-<stage>.log; each stage's run is also kept in
# bench/history/ (pytest-benchmark's storage, one file per stage; `make bench-compare`, bench/history.py).
#
# No CUDA: exits 2 with a message. FASTZHANG_GPU_DRY_RUN=1 runs the install and a small CPU subset
# of every stage instead, to check this script on a machine without a GPU.
set -uo pipefail

cd "$(dirname "$0")/.."
REPO="$PWD"
PY="${PYTHON:-python3}"
if [[ "$PY" == */* ]]; then PY=$(realpath -s "$PY"); fi  # the stages run from bench/out (a venv's link kept)
OUT="$REPO/bench/out"
BUDGET="${BENCH_GPU_BUDGET:-540}"
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

# --- fastzhang and the missing packages, offline, with the GPU check's installer ------------------
deps=$(PYTHONPATH="$REPO/bench" "$PY" -m gpu_check.install --bench "$OUT/gpu-bench") || exit 2
export PYTHONPATH="$deps:$REPO/bench"
# One compiler cache for this run, empty at its start: the train stage's compile times are cold;
# the epoch stage reuses its full-batch graphs and compiles only the last batch's shape.
export TORCHINDUCTOR_CACHE_DIR="$OUT/compile-cache/inductor" TRITON_CACHE_DIR="$OUT/compile-cache/triton"
rm -rf "$OUT/compile-cache"

# --- stages -------------------------------------------------------------------------------------
start=$SECONDS
status=0
stage() {  # stage NAME CAP_SECONDS PYTEST_ARGS...
    local name=$1 cap=$2; shift 2
    local left=$((BUDGET - (SECONDS - start)))
    local t=$((cap < left ? cap : left))
    if ((t < 15)); then say "skipping $name: the time budget is spent"; return; fi
    say "$name (at most ${t}s)"
    (cd "$OUT" && timeout --signal=INT --kill-after=20 "$t" "$PY" -m pytest -q -p no:cacheprovider \
        -c "$REPO/pyproject.toml" --rootdir "$REPO" "$@") >"$OUT/gpu-$name.log" 2>&1
    local rc=$?
    tail -3 "$OUT/gpu-$name.log"
    if ((rc == 124)); then say "$name: stopped at its ${t}s cap"; fi
    if ((rc != 0 && rc != 5)); then status=1; fi
}
json() { echo "--benchmark-json=$OUT/gpu-$1.json"; }
B="$REPO/bench"

if [[ "$DRY" == 1 ]]; then
    say "dry run on $("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
    export FASTZHANG_BENCH_THREADS="${FASTZHANG_BENCH_THREADS:-1}"
    stage data 60 "$B/test_bench_data.py" "$(json data)" -k "dataloader[0] or resident or triton"
    stage train 60 "$B/test_bench_train.py" "$(json train)" -k "mlp1-eager or mlp1-amp"
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    keep=(--benchmark-storage="file://$REPO/bench/history" --benchmark-autosave)  # not the dry run's: CPU plumbing
    # Caps (seconds): bench/NOTES.md "GPU check: predictions" and §7, with room. The train stage
    # compiles mlp1, mlp3, alexnet and inception cold (predicted 10-20 + 5 + 15-30 + 40-90 s); the
    # epoch stage compiles each model's last-batch shape (80 images) and runs two naive epochs each.
    stage data 40 "$B/test_bench_data.py" "$(json data)" "${keep[@]}"
    stage train 250 "$B/test_bench_train.py" "$(json train)" "${keep[@]}"
    stage epoch 200 "$B/test_bench_epoch.py" "$(json epoch)" "${keep[@]}"
    stage models 30 "$B/test_bench_models.py" "$(json models)" "${keep[@]}"
fi

shopt -s nullglob
files=()
for name in data train epoch models; do [[ -f "$OUT/gpu-$name.json" ]] && files+=("$OUT/gpu-$name.json"); done
if ((${#files[@]})); then
    "$PY" "$B/table.py" "${files[@]}" | tee "$OUT/gpu.md"
else
    say "no benchmark results were written"
    status=1
fi
say "done in $((SECONDS - start))s of ${BUDGET}s; logs and JSON in $OUT/"
exit $status
