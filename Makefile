# fastzhang: every job is a make target. `make help` lists them.
# The virtual environment lives in .venv; targets create it on first use.

PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
FZ       := $(VENV)/bin/fastzhang
# A machine without nvidia-smi gets torch==2.13.0: the CPU build only where pip's index serves one
# (TORCH_INDEX_URL, or a local wheel folder pip is configured with); PyPI's Linux wheel is the CUDA
# build. A machine with an NVIDIA GPU gets pip's latest CUDA build.
TORCH    ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
# pip's index for torch alone, e.g. https://download.pytorch.org/whl/cpu for the small CPU-only wheel;
# empty: pip's own configuration.
TORCH_INDEX_URL ?=
EXTRAS   ?= dev
JOBS     ?= 1
# Every recipe once per seed (fastzhang batch --seeds): SEEDS=0-4 or SEEDS=0,3,7; empty: the recipes' own seed.
SEEDS    ?=

.PHONY: help setup setup-full test test-fast demo report bench bench-compare bench-gpu gpu-check gpu-wheels \
        table1 figure1a figure1b baseline random_labels cifar100 all status clean-venv

help:
	@echo "make demo        set up, run the CPU demo (true vs random labels), write the report"
	@echo "make test        set up with all extras and run the test suite (what CI runs)"
	@echo "make test-fast   the dev extra only; the unit tests, without those marked slow or e2e (< 1 min)"
	@echo "make bench       CPU benchmark suite (pytest-benchmark), JSON + table in bench/out/, run kept in"
	@echo "                 bench/history/ (BENCH_THREADS=1 on a shared machine; BENCH_SELECT=expr: pytest -k)"
	@echo "make bench-compare  the latest run against bench/history/: regressions, trend.png"
	@echo "make gpu-check   first contact with a CUDA GPU, offline: the tests and benchmarks marked cuda"
	@echo "                 in ~6 min, one summary (FASTZHANG_GPU_DRY_RUN=1: all of it on the CPU)"
	@echo "make gpu-wheels  fill bench/wheels/ (needs package access) for gpu-check on an offline machine"
	@echo "make bench-gpu   the whole benchmark suite on a CUDA machine, offline, kept in bench/history/"
	@echo "make table1 | figure1a | figure1b | baseline | random_labels | cifar100 | all"
	@echo "                 run a category of recipes (completed ones are skipped), then the report;"
	@echo "                 SEEDS=0-4 (or 0,3,7) runs every recipe once per seed (also for make demo)"
	@echo "make report      rebuild results/report from the results files"
	@echo "make status      one row per experiment"

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip "setuptools>=77"  # make gpu-check's offline build uses it
	$(VENV)/bin/pip install -q $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)") "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed-$(EXTRAS)

# Everything the tests exercise: DALI's CPU pipelines, Triton's interpreter, W&B offline, Ray.
setup-full:
	$(MAKE) setup EXTRAS=dev,dali,wandb,ray,triton

test: setup-full
	$(VENV)/bin/python -m pytest -q -x --timeout=900

test-fast: setup
	$(VENV)/bin/python -m pytest -q -x -m "not slow and not e2e"

# The batch targets rebuild the report even when a recipe failed (it shows whatever exists),
# then fail with the batch's exit status; not after bad input (exit 2: nothing ran).
demo: setup
	bash recipes/run_all_recipes.sh --category demo $(if $(SEEDS),--seeds $(SEEDS)); status=$$?; \
	[ $$status = 2 ] || $(FZ) report --results results --out results/report; exit $$status

report: setup
	$(FZ) report --results results --out results/report

status: setup
	$(FZ) status

table1 figure1a figure1b baseline random_labels cifar100 all: setup
	bash recipes/run_all_recipes.sh --category $@ --jobs $(JOBS) $(if $(SEEDS),--seeds $(SEEDS)); status=$$?; \
	[ $$status = 2 ] || $(FZ) report --results results --out results/report; exit $$status

# torch threads for every CPU benchmark of the run; on a machine other jobs share, BENCH_THREADS=1
# (OpenMP threads that wait for a busy core lose several times, bench/NOTES.md §1).
BENCH_THREADS ?= $(shell nproc 2>/dev/null || echo 1)
# A subset of the suite (pytest -k), e.g. BENCH_SELECT="data or mlp1"; empty: every benchmark.
BENCH_SELECT ?=
# Every run is kept, with its commit and machine, in pytest-benchmark's storage (bench/history.py).
BENCH_HISTORY := bench/history
# The benchmarks marked cuda are also the GPU check's (make gpu-check); bench/conftest.py prints images/s
# and the ratios after pytest-benchmark's table of times, and writes them to bench/out/cpu.md.

bench: setup-full
	mkdir -p bench/out
	FASTZHANG_BENCH_THREADS=$(BENCH_THREADS) $(VENV)/bin/python -m pytest bench -q \
		--benchmark-json=bench/out/cpu.json -p no:cacheprovider \
		--benchmark-storage=file://$(BENCH_HISTORY) --benchmark-autosave $(if $(BENCH_SELECT),-k "$(BENCH_SELECT)")

# The latest run against the earlier ones: exit 1 on a drop beyond the noise (bench/history.py).
bench-compare: setup-full
	$(VENV)/bin/python bench/history.py --history $(BENCH_HISTORY) --figure $(BENCH_HISTORY)/trend.png

# The GPU targets run on the machine's own Python (torch with CUDA, Triton, numpy, PyYAML, pytest):
# no venv of ours. fastzhang and what that Python lacks come from bench/wheels/ (bench/gpu_check.py).
bench-gpu:
	$(PYTHON) bench/gpu_check.py bench

gpu-check:
	$(PYTHON) bench/gpu_check.py check

gpu-wheels:
	$(PYTHON) bench/gpu_check.py wheels bench/wheels

clean-venv:
	rm -rf $(VENV)
