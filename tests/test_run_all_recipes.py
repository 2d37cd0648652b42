"""recipes/run_all_recipes.sh: runs, skips, fails, busy, dedup, parallel jobs, signals.

Most tests drive the real script with a small fake `fastzhang` (a bash script that
follows `fastzhang run`'s exit-code contract), so each takes a second or less; the
last one runs the real `fastzhang run` on tiny synthetic recipes and reads the
results back with the report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastzhang.report import build_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "recipes" / "run_all_recipes.sh"

# Behaves like `fastzhang run`: exit 0 and "EXPERIMENT ALREADY COMPLETED" for a completed
# recipe, 2 for a recipe it cannot load, 3 when locked. Recipe files carry the behaviour
# in a comment (`# fake: ...`) so the fake needs no YAML parser.
FAKE = r"""#!/usr/bin/env bash
[[ $1 == run ]] || { echo "fake: expected run, got $1" >&2; exit 1; }
shift
all_args=" $* "
config=""
while (($#)); do
    case $1 in --config) config=$2; shift 2 ;; *) echo "flag $1" >>"$FAKE_STATE/flags"; shift ;; esac
done
name=$(basename "$config" .yaml)
echo "$config" >>"$FAKE_STATE/calls"
if grep -q '^# fake: broken' "$config"; then echo "fastzhang: error: $config: broken YAML" >&2; exit 2; fi
if grep -q '^# fake: locked' "$config"; then echo "fastzhang: error: locked by pid 1" >&2; exit 3; fi
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
done_file="$FAKE_STATE/done.$(printf %s "$config" | tr / _)"
if [[ -e $done_file && $all_args != *" --force "* ]]; then
    printf 'EXPERIMENT ALREADY COMPLETED\n  id: %s\n' "$name"; exit 0
fi
echo "fake: trained $name"
touch "$done_file"
"""

GOOD = "model: mlp1\ndataset: synthetic\nepochs: {epochs}\n"


@pytest.fixture
def env(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    fake_dir = tmp_path / "bin"
    fake_dir.mkdir()
    fake = fake_dir / "fastzhang"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{fake_dir}{os.pathsep}{os.environ['PATH']}",
        "FASTZHANG": str(fake),
        "FASTZHANG_PYTHON": sys.executable,
        "FAKE_STATE": str(state),
    }


def recipe(root: Path, rel: str, body: str, fake: str | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((f"# fake: {fake}\n" if fake else "") + body)
    return path


def run_script(env, *args, recipes_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), "--recipes-dir", str(recipes_dir), *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def calls(env) -> list[str]:
    path = Path(env["FAKE_STATE"]) / "calls"
    return path.read_text().split() if path.exists() else []


def test_runs_then_skips_completed(tmp_path, env):
    rdir = tmp_path / "recipes"
    a = recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1))
    b = recipe(rdir, "tiny/b.yaml", GOOD.format(epochs=2))

    first = run_script(env, "--category", "tiny", recipes_dir=rdir)
    assert first.returncode == 0, first.stdout + first.stderr
    assert calls(env) == [str(a), str(b)]
    assert "2 ran, 0 skipped (already completed), 0 busy elsewhere, 0 failed" in first.stdout
    assert "fake: trained a" in first.stdout  # the run's own output reaches the user
    assert "(mlp1_synthetic_baseline_ep1)" in first.stdout  # IDs come from fastzhang.config
    flags = (Path(env["FAKE_STATE"]) / "flags").read_text().split("\n")
    assert flags.count("flag --quiet") == 2

    second = run_script(env, "--category", "tiny", recipes_dir=rdir)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 ran, 2 skipped (already completed), 0 busy elsewhere, 0 failed" in second.stdout


def test_force_and_passthrough_flags_reach_run(tmp_path, env):
    rdir = tmp_path / "recipes"
    recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1))
    run_script(env, "--category", "tiny", recipes_dir=rdir)
    out = run_script(env, "--category", "tiny", "--force", "--use_wandb", "--verbose", "--results-dir", "R",
                     "--", "--device", "cpu", recipes_dir=rdir)
    assert out.returncode == 0, out.stderr
    assert "1 ran, 0 skipped" in out.stdout  # --force retrains
    flags = (Path(env["FAKE_STATE"]) / "flags").read_text().split("\n")
    assert flags.count("flag --quiet") == 1  # the first call's; --verbose drops it
    for flag in ("--force", "--use_wandb", "--results-dir", "R", "--device", "cpu"):
        assert f"flag {flag}" in flags


def test_broken_recipe_fails_but_the_others_run(tmp_path, env):
    rdir = tmp_path / "recipes"
    broken = recipe(rdir, "tiny/a_broken.yaml", "model: [not, a, model\n", fake="broken")
    good = recipe(rdir, "tiny/b_good.yaml", GOOD.format(epochs=1))
    out = run_script(env, "--category", "tiny", recipes_dir=rdir)
    assert out.returncode == 1
    assert calls(env) == [str(broken), str(good)]  # the failure did not stop the batch
    assert "1 ran, 0 skipped (already completed), 0 busy elsewhere, 1 failed" in out.stdout
    assert f"FAILED:\n  {broken}: exit 2" in out.stdout
    assert "fake: trained b_good" in out.stdout


def test_locked_counts_as_busy_not_failed(tmp_path, env):
    rdir = tmp_path / "recipes"
    locked = recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1), fake="locked")
    recipe(rdir, "tiny/b.yaml", GOOD.format(epochs=2))
    out = run_script(env, "--category", "tiny", recipes_dir=rdir)
    assert out.returncode == 0, out.stdout
    assert "1 ran, 0 skipped (already completed), 1 busy elsewhere, 0 failed" in out.stdout
    assert f"  {locked} (mlp1_synthetic_baseline_ep1)" in out.stdout


def test_all_runs_shared_experiments_once(tmp_path, env):
    rdir = tmp_path / "recipes"
    first = recipe(rdir, "cat_a/x.yaml", GOOD.format(epochs=1))
    # Same settings spelled differently (p = 0 is the true data set): same ID.
    recipe(rdir, "cat_b/y.yaml", "model: mlp1\ndataset: synthetic\nepochs: 1\nrandomization: partial\ncorrupt_prob: 0.0\n")
    other = recipe(rdir, "cat_b/z.yaml", GOOD.format(epochs=3))
    out = run_script(env, "--category", "all", recipes_dir=rdir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert calls(env) == [str(first), str(other)]
    assert "2 experiment(s) from 3 recipe(s)" in out.stdout


def test_all_over_the_project_recipes_runs_each_experiment_once(env):
    out = run_script(env, "--category", "all", recipes_dir=REPO / "recipes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "42 experiment(s) from 46 recipe(s)" in out.stdout
    ran = calls(env)
    assert len(ran) == 42
    assert str(REPO / "recipes/baseline/inception_baseline.yaml") in ran  # the first spelling runs
    for dup in ("figure1a/inception_true_labels.yaml", "table1/inception_baseline.yaml",
                "random_labels/inception_random_labels.yaml", "table1/inception_random_labels.yaml"):
        assert str(REPO / "recipes" / dup) not in ran
        assert f": {REPO / 'recipes' / dup} (inception_cifar10_" in out.stdout  # said so
    assert "42 ran, 0 skipped" in out.stdout


def test_jobs_runs_recipes_at_the_same_time(tmp_path, env):
    rdir = tmp_path / "recipes"
    recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1), fake="wait-for b")
    recipe(rdir, "tiny/b.yaml", GOOD.format(epochs=2), fake="wait-for a")
    out = run_script(env, "--category", "tiny", "--jobs", "2", recipes_dir=rdir)
    assert out.returncode == 0, out.stdout + out.stderr  # sequential runs would time out in the fake
    assert "2 ran" in out.stdout
    assert "[tiny/a] fake: trained a" in out.stdout  # parallel output is prefixed per recipe


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_is_passed_on_and_batch_stops(tmp_path, env, sig, code):
    rdir = tmp_path / "recipes"
    recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1), fake="sleep-until-signal")
    recipe(rdir, "tiny/b.yaml", GOOD.format(epochs=2))
    proc = subprocess.Popen(["bash", str(SCRIPT), "--recipes-dir", str(rdir), "--category", "tiny"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    (["--category", "tiny", "--bogus"], "unknown option '--bogus'"),
])
def test_usage_errors_exit_2(tmp_path, env, args, message):
    rdir = tmp_path / "recipes"
    recipe(rdir, "tiny/a.yaml", GOOD.format(epochs=1))
    out = run_script(env, *args, recipes_dir=rdir)
    assert out.returncode == 2
    assert message in out.stderr
    assert calls(env) == []


# ------------------------------------------------------------------------------------------
# End to end: the real `fastzhang run` on tiny synthetic recipes, then the report.

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
    args = ["--category", "tiny", *out_dirs, "--", "--device", "cpu"]

    first = run_script(env, *args, recipes_dir=rdir, timeout=300)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "2 ran, 0 skipped (already completed), 0 busy elsewhere, 1 failed" in first.stdout
    assert f"FAILED:\n  {broken}: exit 2" in first.stdout
    assert "epochs must be an integer" in first.stdout  # the run's own message reaches the user
    written = sorted(p.name for p in (tmp_path / "results").glob("*.json"))
    assert [n.rsplit("_", 2)[0] for n in written] == ["mlp1_synthetic_baseline_ep1_sub256",
                                                         "mlp1_synthetic_random_labels_ep2_sub256"]

    second = run_script(env, *args, recipes_dir=rdir, timeout=300)
    assert second.returncode == 1
    assert "0 ran, 2 skipped (already completed), 0 busy elsewhere, 1 failed" in second.stdout
    assert sorted(p.name for p in (tmp_path / "results").glob("*.json")) == written  # nothing retrained

    text = build_report(tmp_path / "results", tmp_path / "report").read_text()
    assert "2 results files, 2 completed runs, 0 damaged or unreadable" in text  # the writer's files read back
    assert "| `mlp1_synthetic_random_labels_ep2_sub256` | MLP 1x512 | random labels | 256 | 2 |" in text
