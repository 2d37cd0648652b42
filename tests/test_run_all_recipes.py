"""recipes/run_all_recipes.sh: a thin wrapper that hands one category (or all) to `fastzhang batch`.

What the batch does with the recipes (runs, skips, busy, dedup, parallel runs, signals) is
tested on `fastzhang batch` itself (test_batch_local.py). Here: the script's own flags and
errors against a recording `fastzhang`, the project's recipes through the real batch's
--dry-run, and one end-to-end run of the real script, batch and runs, read back by the report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastzhang.report import build_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "recipes" / "run_all_recipes.sh"
# A `fastzhang` that records its arguments, one per line, and exits with $FAKE_EXIT.
RECORDER = '#!/usr/bin/env bash\nprintf "%s\\n" "$@" >"$FAKE_ARGS"\nexit "${FAKE_EXIT:-0}"\n'


def recipe(root: Path, rel: str, body: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


def run_script(env, *args, recipes_dir: Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """The script from `cwd`, where the batch's default checkpoints/ and results/ go."""
    return subprocess.run(
        ["bash", str(SCRIPT), "--recipes-dir", str(recipes_dir), *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def recorder(tmp_path):
    fake = tmp_path / "bin" / "fastzhang"
    fake.parent.mkdir()
    fake.write_text(RECORDER)
    fake.chmod(0o755)
    rdir = tmp_path / "recipes"
    for rel in ("tiny/a.yaml", "other/b.yaml"):
        recipe(rdir, rel, "model: mlp1\ndataset: synthetic\nepochs: 1\n")
    return {**os.environ, "FASTZHANG": str(fake), "FAKE_ARGS": str(tmp_path / "args")}, rdir


def test_a_category_or_all_and_every_flag_reach_batch_and_its_exit_status_comes_back(tmp_path, recorder):
    env, rdir = recorder
    out = run_script({**env, "FAKE_EXIT": "143"}, "--category", "tiny", "--jobs", "3", "--seeds", "0-2", "--force",
                     "--use_wandb", "--results-dir", "R", recipes_dir=rdir, cwd=tmp_path)
    assert out.returncode == 143, out.stderr  # the batch's status is the script's (exec)
    assert (tmp_path / "args").read_text().splitlines() == [
        "batch", str(rdir / "tiny"), "--title", "category tiny", "--max-parallel", "3", "--seeds", "0-2", "--force",
        "--use_wandb", "--results-dir", "R"]
    assert run_script(env, "--category", "all", recipes_dir=rdir, cwd=tmp_path).returncode == 0
    assert (tmp_path / "args").read_text().splitlines() == [
        "batch", str(rdir / "other"), str(rdir / "tiny"), "--title", "category all"]


@pytest.mark.parametrize("args, message", [
    (["--category", "nope"], "no category 'nope' in"),
    ([], "--category is required"),
    (["--category", "tiny", "--jobs", "0"], "--jobs must be a positive integer; got '0'"),
    (["--category", "tiny", "--jobs"], "--jobs needs a value"),
])
def test_usage_errors_exit_2_before_batch_starts(tmp_path, recorder, args, message):
    env, rdir = recorder
    out = run_script(env, *args, recipes_dir=rdir, cwd=tmp_path)
    assert (out.returncode, out.stderr.startswith("run_all_recipes: error: ")) == (2, True)
    assert message in out.stderr and not (tmp_path / "args").exists()


@pytest.mark.e2e
def test_all_over_the_project_recipes_is_each_experiment_once(tmp_path):
    env = {**os.environ, "FASTZHANG": str(Path(sys.executable).parent / "fastzhang")}
    if not Path(env["FASTZHANG"]).exists():
        env.pop("FASTZHANG")
    out = run_script(env, "--category", "all", "--dry-run", recipes_dir=REPO / "recipes", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "batch --dry-run: 48 experiment(s); nothing is run or written" in out.stdout  # from 52 recipes
    assert out.stderr.count("same experiment as") == 4
    for dup in ("figure1a/inception_true_labels.yaml", "table1/inception_baseline.yaml",
                "random_labels/inception_random_labels.yaml", "table1/inception_random_labels.yaml"):
        assert f": {REPO / 'recipes' / dup} (inception_cifar10_" in out.stderr  # the first spelling runs
    assert list(tmp_path.iterdir()) == []


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

    first = run_script(env, *args, "--jobs", "2", recipes_dir=rdir, cwd=tmp_path, timeout=300)  # side by side
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
    assert "| MLP 1x512 | random labels | 256 |" in text
    assert "| `mlp1_synthetic_random_labels_ep2_sub256`, n = 1 (seed 0) |" in text
