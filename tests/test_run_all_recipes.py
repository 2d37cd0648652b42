"""recipes/run_all_recipes.sh: runs, skips, fails, busy, dedup, parallel jobs, signals.

The script is a wrapper over `fastzhang batch`. Most tests drive the real script
and the real batch, whose runs are a small fake `fastzhang run` (a bash script
that follows run's contract: exit codes, and a results file naming its writer),
so each takes a second or two; the last one runs the real `fastzhang run` on tiny
synthetic recipes and reads the results back with the report.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastzhang import results
from fastzhang.report import build_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "recipes" / "run_all_recipes.sh"

# `fastzhang batch` is the real one, with its pool's runs started as the fake (FAKE_BATCH).
# The fake behaves like `fastzhang run`: exit 0 after writing a results file that names its
# pid, exit 0 and "EXPERIMENT ALREADY COMPLETED" without writing when a completed one exists,
# 3 when locked. Recipe files carry the behaviour in a comment (`# fake: ...`) so the fake
# needs no YAML parser; the batch tells it the experiment ID (--fake-id).
FAKE = r"""#!/usr/bin/env bash
[[ $1 == batch ]] && exec "$FASTZHANG_PYTHON" -c "$FAKE_BATCH" "$@"
[[ $1 == run ]] || { echo "fake: expected run, got $1" >&2; exit 1; }
shift
all_args=" $* "
config="" id="" results_dir="" prev=""
while (($#)); do
    case $1 in
        --config) config=$2; shift 2; continue ;;
        --fake-id) id=$2; shift 2; continue ;;
    esac
    [[ $prev == --results-dir ]] && results_dir=$1
    echo "flag $1" >>"$FAKE_STATE/flags"; prev=$1; shift
done
name=$(basename "$config" .yaml)
echo "$config" >>"$FAKE_STATE/calls"
write_results() {  # pid
    mkdir -p "$results_dir"
    sed -e "s/@ID@/$id/" -e "s/\"@PID@\"/$1/" "$FAKE_STATE/template.json" \
        >"$results_dir/${id}_$(date +%Y%m%d_%H%M%S)_$$.json"
}
if grep -q '^# fake: locked' "$config"; then echo "fastzhang: error: locked by pid 1" >&2; exit 3; fi
if grep -q '^# fake: completed-elsewhere' "$config"; then  # another process finished it meanwhile
    write_results 1; printf 'EXPERIMENT ALREADY COMPLETED\n  id: %s\n' "$name"; exit 0
fi
if grep -q '^# fake: says-completed' "$config"; then  # trains, but its output looks like a skip
    write_results $$; printf 'EXPERIMENT ALREADY COMPLETED\n  id: %s\n' "$name"; exit 0
fi
if grep -q '^# fake: wait-for ' "$config"; then  # prove parallelism: wait until the other one started
    other=$(sed -n 's/^# fake: wait-for //p' "$config")
    touch "$FAKE_STATE/started.$name"
    for _ in $(seq 100); do [[ -e $FAKE_STATE/started.$other ]] && break; sleep 0.05; done
    [[ -e $FAKE_STATE/started.$other ]] || { echo "fake: $other never started alongside" >&2; exit 1; }
fi
if grep -q '^# fake: sleep-until-signal' "$config"; then
    trap 'echo "fake: got INT, checkpointed"; exit 130' INT
    trap 'echo "fake: got TERM, checkpointed"; exit 143' TERM
    touch "$FAKE_STATE/ready.$name"
    while :; do sleep 0.05; done
fi
if [[ -n $(compgen -G "$results_dir/${id}_*.json") && $all_args != *" --force "* ]]; then
    printf 'EXPERIMENT ALREADY COMPLETED\n  id: %s\n' "$name"; exit 0
fi
echo "fake: trained $name"
write_results $$
"""

# `fastzhang batch` as the program itself, its pool starting each run as the fake.
FAKE_BATCH = """
import os, sys
from fastzhang.batch import local
from fastzhang.cli import main
real = local.run_command
local.run_command = lambda task, opts, *, pinned: [
    os.environ["FASTZHANG"], *real(task, opts, pinned=pinned)[3:], "--fake-id", task.experiment_id]
sys.exit(main())
"""

GOOD = "model: mlp1\ndataset: synthetic\nepochs: {epochs}\n"
ID_A = "mlp1_synthetic_baseline_ep1"  # GOOD with epochs 1


def results_template() -> str:
    """A valid completed results payload, with @ID@ and "@PID@" for the fake to fill in."""
    payload = {
        "schema_version": results.SCHEMA_VERSION, "experiment_id": "@ID@", "config": {},
        "metrics": {**{k: [1.0] for k in results.METRIC_SERIES}, **{k: 1.0 for k in results.METRIC_SCALARS}},
        "timestamp": "20250101_000000", "completed": True, "total_epochs": 1, "target_epochs": 1,
        "stopped_early": False, "data_fingerprint": None, "data_fingerprint_name": None,
        "environment": {**{k: "fake" for k in results.ENVIRONMENT_KEYS}, "hostname": platform.node(),
                        "pid": "@PID@"},
        "throughput": {k: 1.0 for k in results.THROUGHPUT_KEYS},
    }
    assert results.validate(payload) is None
    return json.dumps(payload)


@pytest.fixture
def env(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    fake_dir = tmp_path / "bin"
    fake_dir.mkdir()
    fake = fake_dir / "fastzhang"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    (state / "template.json").write_text(results_template())
    return {
        **os.environ,
        "PATH": f"{fake_dir}{os.pathsep}{os.environ['PATH']}",
        "FASTZHANG": str(fake),
        "FASTZHANG_PYTHON": sys.executable,
        "FAKE_STATE": str(state),
        "FAKE_BATCH": FAKE_BATCH,
    }


def recipe(root: Path, rel: str, body: str, fake: str | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((f"# fake: {fake}\n" if fake else "") + body)
    return path


def run_script(env, *args, recipes_dir: Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """The script from `cwd`, where the batch's default checkpoints/ and results/ go."""
    return subprocess.run(
        ["bash", str(SCRIPT), "--recipes-dir", str(recipes_dir), *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


def calls(env) -> list[str]:
    path = Path(env["FAKE_STATE"]) / "calls"
    return path.read_text().split() if path.exists() else []


@pytest.mark.e2e
def test_runs_then_skips_completed(tmp_path, env):
    rdir = tmp_path / "recipes"
    a = recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1))
    b = recipe(rdir, "tiny/b.yaml", GOOD.format(epochs=2))

    first = run_script(env, "--category", "tiny", recipes_dir=rdir, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert calls(env) == [str(a), str(b)]
    assert ("== summary for category tiny: 2 ran, 0 skipped (already completed), 0 busy elsewhere, 0 failed"
            in first.stdout)  # the old script's summary line, word for word
    assert "fake: trained a" in first.stdout  # the run's own output reaches the user
    assert f"({ID_A})" in first.stdout  # IDs come from fastzhang.config
    flags = (Path(env["FAKE_STATE"]) / "flags").read_text().split("\n")
    assert flags.count("flag --quiet") == 2

    second = run_script(env, "--category", "tiny", recipes_dir=rdir, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 ran, 2 skipped (already completed), 0 busy elsewhere, 0 failed" in second.stdout


@pytest.mark.e2e
def test_outcome_comes_from_the_results_files_not_the_output(tmp_path, env):
    rdir = tmp_path / "recipes"
    recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1), fake="completed-elsewhere")
    recipe(rdir, "tiny/b.yaml", GOOD.format(epochs=2), fake="says-completed")
    out = run_script(env, "--category", "tiny", recipes_dir=rdir, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    # a: exit 0, the results file is another process's; b: exit 0, its own, whatever it printed
    assert "1 ran, 1 skipped (already completed), 0 busy elsewhere, 0 failed" in out.stdout
    assert out.stdout.count("EXPERIMENT ALREADY COMPLETED") == 2


@pytest.mark.e2e
def test_force_and_passthrough_flags_reach_run(tmp_path, env):
    rdir = tmp_path / "recipes"
    recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1))
    run_script(env, "--category", "tiny", recipes_dir=rdir, cwd=tmp_path)
    out = run_script(env, "--category", "tiny", "--force", "--use_wandb", "--results-dir", "results",
                     "--data-dir", "D", recipes_dir=rdir, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "1 ran, 0 skipped" in out.stdout  # --force retrains
    flags = (Path(env["FAKE_STATE"]) / "flags").read_text().split("\n")
    for flag in ("--force", "--use_wandb", "--results-dir", "results", "--data-dir", "D"):
        assert f"flag {flag}" in flags
    assert len(results.files_for(tmp_path / "results", ID_A)) == 2


@pytest.mark.e2e
def test_broken_recipe_refuses_the_category_before_anything_runs(tmp_path, env):
    rdir = tmp_path / "recipes"
    broken = recipe(rdir, "tiny/a_broken.yaml", "model: [not, a, model\n")
    recipe(rdir, "tiny/b_good.yaml", GOOD.format(epochs=1))
    out = run_script(env, "--category", "tiny", recipes_dir=rdir, cwd=tmp_path)
    assert out.returncode == 2
    assert f"{broken}: broken YAML" in out.stderr
    assert calls(env) == []
    assert not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.e2e
def test_locked_counts_as_busy_not_failed(tmp_path, env):
    rdir = tmp_path / "recipes"
    locked = recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1), fake="locked")
    recipe(rdir, "tiny/b.yaml", GOOD.format(epochs=2))
    out = run_script(env, "--category", "tiny", recipes_dir=rdir, cwd=tmp_path)
    assert out.returncode == 0, out.stdout
    assert "1 ran, 0 skipped (already completed), 1 busy elsewhere, 0 failed" in out.stdout
    assert f"  {locked} ({ID_A})" in out.stdout


@pytest.mark.e2e
def test_all_runs_shared_experiments_once(tmp_path, env):
    rdir = tmp_path / "recipes"
    first = recipe(rdir, "cat_a/x.yaml", GOOD.format(epochs=1))
    # Same settings spelled differently (p = 0 is the true data set): same ID.
    same = recipe(rdir, "cat_b/y.yaml",
                  "model: mlp1\ndataset: synthetic\nepochs: 1\nrandomization: partial\ncorrupt_prob: 0.0\n")
    other = recipe(rdir, "cat_b/z.yaml", GOOD.format(epochs=3))
    out = run_script(env, "--category", "all", recipes_dir=rdir, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert calls(env) == [str(first), str(other)]
    assert "batch: 2 experiment(s), 0 already completed, 2 to run" in out.stdout  # from 3 recipes:
    assert f"same experiment as {first}: {same} ({ID_A}), runs once" in out.stderr


@pytest.mark.e2e
def test_all_over_the_project_recipes_runs_each_experiment_once(tmp_path, env):
    out = run_script(env, "--category", "all", recipes_dir=REPO / "recipes", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "batch: 48 experiment(s), 0 already completed, 48 to run" in out.stdout  # from 52 recipes:
    assert out.stderr.count("same experiment as") == 4
    ran = calls(env)
    assert len(ran) == 48  # with recipes/cifar100's six
    assert str(REPO / "recipes/baseline/inception_baseline.yaml") in ran  # the first spelling runs
    for dup in ("figure1a/inception_true_labels.yaml", "table1/inception_baseline.yaml",
                "random_labels/inception_random_labels.yaml", "table1/inception_random_labels.yaml"):
        assert str(REPO / "recipes" / dup) not in ran
        assert f": {REPO / 'recipes' / dup} (inception_cifar10_" in out.stderr  # said so
    assert "48 ran, 0 skipped" in out.stdout


@pytest.mark.e2e
def test_jobs_runs_recipes_at_the_same_time(tmp_path, env):
    rdir = tmp_path / "recipes"
    recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1), fake="wait-for b")
    recipe(rdir, "tiny/b.yaml", GOOD.format(epochs=2), fake="wait-for a")
    out = run_script(env, "--category", "tiny", "--jobs", "2", recipes_dir=rdir, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr  # sequential runs would time out in the fake
    assert "2 ran" in out.stdout
    assert f"[{ID_A}] fake: trained a" in out.stdout  # a run's output is prefixed with its experiment


@pytest.mark.e2e
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_is_passed_on_and_batch_stops(tmp_path, env, sig, code):
    rdir = tmp_path / "recipes"
    recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1), fake="sleep-until-signal")
    recipe(rdir, "tiny/b.yaml", GOOD.format(epochs=2))
    proc = subprocess.Popen(["bash", str(SCRIPT), "--recipes-dir", str(rdir), "--category", "tiny"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = Path(env["FAKE_STATE"]) / "ready.a"
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready.exists()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, out + err
    assert f"fake: got {sig.name[3:]}, checkpointed" in out
    assert "0 ran, 0 skipped (already completed), 0 busy elsewhere, 0 failed, 1 stopped, 1 not started" in out
    assert calls(env) == [str(rdir / "tiny/a.yaml")]  # b was not started


@pytest.mark.parametrize("args, message", [
    (["--category", "nope"], "no category 'nope'"),
    ([], "--category is required"),
    (["--category", "tiny", "--jobs", "0"], "--jobs must be a positive integer"),
    (["--category", "tiny", "--bogus"], "unrecognized arguments: --bogus"),
])
@pytest.mark.e2e
def test_usage_errors_exit_2(tmp_path, env, args, message):
    rdir = tmp_path / "recipes"
    recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1))
    out = run_script(env, *args, recipes_dir=rdir, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert calls(env) == []


# ------------------------------------------------------------------------------------------
# End to end: the real `fastzhang batch` and `fastzhang run` on tiny synthetic recipes, then the report.

@pytest.mark.e2e
def test_end_to_end_with_real_runs_and_report(tmp_path):
    rdir = tmp_path / "recipes"
    recipe(rdir, "tiny/a_one.yaml", "model: mlp1\ndataset: synthetic\nepochs: 1\ntrain_subset: 256\n")
    recipe(rdir, "tiny/b_two.yaml", "model: mlp1\ndataset: synthetic\nrandomization: random_labels\nepochs: 2\n"
                                    "train_subset: 256\n")
    broken = recipe(rdir, "tiny/c_broken.yaml", "model: mlp1\ndataset: synthetic\nepochs: two\n")
    env = {k: v for k, v in os.environ.items() if k not in ("FASTZHANG", "FASTZHANG_PYTHON")}
    beside = Path(sys.executable).parent / "fastzhang"  # this interpreter's install, else the script's own search
    if beside.exists():
        env["FASTZHANG"] = str(beside)
    out_dirs = ["--results-dir", str(tmp_path / "results"), "--checkpoint-dir", str(tmp_path / "ckpt")]
    args = ["--category", "tiny", *out_dirs]

    refused = run_script(env, *args, recipes_dir=rdir, cwd=tmp_path, timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"{broken}: epochs must be an integer" in refused.stderr  # the recipe's problem reaches the user
    assert not (tmp_path / "results").exists()
    broken.unlink()

    first = run_script(env, *args, recipes_dir=rdir, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 ran, 0 skipped (already completed), 0 busy elsewhere, 0 failed" in first.stdout
    written = sorted(p.name for p in (tmp_path / "results").glob("*.json"))
    assert [n.rsplit("_", 2)[0] for n in written] == ["mlp1_synthetic_baseline_ep1_sub256",
                                                         "mlp1_synthetic_random_labels_ep2_sub256"]

    second = run_script(env, *args, recipes_dir=rdir, cwd=tmp_path, timeout=300)
    assert second.returncode == 0
    assert "0 ran, 2 skipped (already completed), 0 busy elsewhere, 0 failed" in second.stdout
    assert sorted(p.name for p in (tmp_path / "results").glob("*.json")) == written  # nothing retrained

    text = build_report(tmp_path / "results", tmp_path / "report").read_text()
    assert "2 results files, 2 completed runs, 0 damaged or unreadable" in text  # the writer's files read back
    assert "| `mlp1_synthetic_random_labels_ep2_sub256` | MLP 1x512 | random labels | 256 | 2 |" in text
