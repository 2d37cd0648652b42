"""`fastzhang batch --dry-run` and the batch's time estimates."""

from __future__ import annotations

import torch

from conftest import files_under, run_cli
from fastzhang import checkpoint
from fastzhang.batch import estimate
from fastzhang.batch.plan import BatchOptions, Task
from fastzhang.config import ExperimentConfig
from fastzhang.data.batches import ResidentData
from fastzhang.data.sources import load_dataset
from fastzhang.experiment import RunOptions, run_experiment
from fastzhang.train import engine, state
from fastzhang.train.fastpath import Speed
from fastzhang.train.loaders import make_loader

RECIPE = "model: mlp1\ndataset: synthetic\ndevice: cpu\nbatch_size: 256\nepochs: {epochs}\nseed: {seed}\n"


def _half_done(cfg: ExperimentConfig, ckpt) -> None:
    """A checkpoint after the first of cfg.epochs epochs, as an interrupted run leaves it."""
    arrays = load_dataset("synthetic", None)
    data = ResidentData.build(arrays, randomization="none", corrupt_prob=0.0, seed=cfg.seed, train_subset=None,
                              device="cpu")
    one = cfg.replace(epochs=1)
    speed = Speed(False, False, False, False)
    run = engine.build_run(one, torch.device("cpu"), speed)
    loader = make_loader("torch", data, one.batch_size, dtype=torch.float32, channels_last=False)
    assert engine.train(one, run, data, loader, speed, engine.Hooks(save=lambda mid: None, quiet=True))
    checkpoint.save(state.to_payload(run, cfg, arrays.fingerprint), checkpoint.latest_path(ckpt, cfg.experiment_id))


def test_dry_run_says_skip_resume_and_run_and_writes_nothing(tmp_path, capsys, one_thread):
    recipes, ckpt, res = tmp_path / "recipes", tmp_path / "checkpoints", tmp_path / "results"
    recipes.mkdir()
    for name, epochs, seed in (("a_done", 2, 0), ("b_half", 3, 1), ("c_new", 2, 2)):
        (recipes / f"{name}.yaml").write_text(RECIPE.format(epochs=epochs, seed=seed))
    done = ExperimentConfig.from_yaml(recipes / "a_done.yaml")
    half = ExperimentConfig.from_yaml(recipes / "b_half.yaml")
    fresh = ExperimentConfig.from_yaml(recipes / "c_new.yaml")
    run_experiment(done, RunOptions(checkpoint_dir=ckpt, results_dir=res, quiet=True))
    _half_done(half, ckpt)
    before = files_under(tmp_path)

    assert run_cli(["batch", recipes, "--dry-run", "--checkpoint-dir", ckpt, "--results-dir", res]) == 0
    out = capsys.readouterr().out.splitlines()
    assert files_under(tmp_path) == before
    # One kind of experiment (mlp1, synthetic, cpu): the median of the completed run's two epochs and
    # the half-done run's one; two epochs left for each of the other two.
    clock = estimate.EpochClock(gpus_visible=False)
    clock.add_results(res)
    clock.add_intents(estimate.intents([Task(recipes / "b_half.yaml", half)], BatchOptions(ckpt, res)))
    per_epoch = clock.epoch_seconds(Task(recipes / "c_new.yaml", fresh))
    assert len(clock.seconds[("mlp1", "synthetic", None, "cpu")]) == 3 and per_epoch > 0
    two = estimate.duration(2 * per_epoch)
    assert out == [
        "batch --dry-run: 3 experiment(s); nothing is run or written",
        f"  {recipes / 'a_done.yaml'} ({done.experiment_id}): skip: already completed",
        f"  {recipes / 'b_half.yaml'} ({half.experiment_id}): resume after epoch 1 of 3, about {two}",
        f"  {recipes / 'c_new.yaml'} ({fresh.experiment_id}): run from scratch: 2 epoch(s), about {two}",
        f"estimate: about {estimate.duration(4 * per_epoch)} left with up to 1 run(s) at once",
    ]


def test_estimates_use_the_same_kind_of_experiment_only(tmp_path):
    clock = estimate.EpochClock(gpus_visible=True)
    mlp = {"model": "mlp1", "dataset": "cifar10", "train_subset": None}
    clock.add(mlp, "cuda", [10.0, 12.0, 11.0])
    clock.add(mlp, "cpu", [300.0])
    clock.add({**mlp, "model": "inception"}, "cuda", [40.0])
    task = Task(tmp_path / "r.yaml", ExperimentConfig.from_mapping({"model": "mlp1", "epochs": 10}))
    assert clock.epoch_seconds(task) == 11.0  # device auto with GPUs visible: the cuda times, median
    on_cpu = Task(tmp_path / "r.yaml", ExperimentConfig.from_mapping({"model": "mlp1", "epochs": 10, "device": "cpu"}))
    assert clock.epoch_seconds(on_cpu) == 300.0
    todo = [estimate.Intent(task, estimate.RESUME, epoch=4), estimate.Intent(on_cpu, estimate.RUN),
            estimate.Intent(task, estimate.SKIP)]
    assert clock.seconds_left(todo, at_once=2) == ((6 * 11.0 + 10 * 300.0) / 2, 0)
    unknown = Task(tmp_path / "r.yaml", ExperimentConfig.from_mapping({"model": "alexnet", "epochs": 3}))
    assert clock.seconds_left([estimate.Intent(unknown, estimate.RUN)], 1) == (0.0, 1)
    assert estimate.time_left_text(3725, 1) == "about 1h 02m left (+1 run(s) with no epoch time yet)"


def test_the_batch_prefers_the_wall_time_of_its_own_runs(tmp_path, one_thread):
    """Wall time counts evaluation, checkpoints and start-up, which epoch_seconds leaves out."""
    ckpt, res = tmp_path / "checkpoints", tmp_path / "results"
    opts = BatchOptions(checkpoint_dir=ckpt, results_dir=res)
    ran = Task(tmp_path / "a.yaml", ExperimentConfig.from_mapping(
        {"model": "mlp1", "dataset": "synthetic", "device": "cpu", "batch_size": 256, "epochs": 2}))
    queued = Task(tmp_path / "b.yaml", ran.config.replace(seed=1, epochs=3))
    clock = estimate.EpochClock(False, opts)
    assert clock.time_left([ran, queued], []) == "no time estimate yet (2 run(s) of kinds with no epoch measured)"
    run_experiment(ran.config, RunOptions(checkpoint_dir=ckpt, results_dir=res, quiet=True))
    clock.finished(ran, seconds=30.0)  # as the pool measured it: 2 epochs from scratch
    assert clock.wall == {("mlp1", "synthetic", None, "cpu"): [15.0]}
    assert clock.time_left([queued], []) == "about 45s left"  # 3 epochs at 15 s, not the training time alone


def test_estimates_count_test_evaluation(tmp_path, one_thread):
    """An epoch's time is its training and its test evaluation (issue 22: estimates left evaluation out)."""
    cfg = ExperimentConfig.from_mapping(
        {"model": "mlp1", "dataset": "synthetic", "device": "cpu", "batch_size": 256, "epochs": 2})
    metrics = run_experiment(cfg, RunOptions(checkpoint_dir=tmp_path / "c", results_dir=tmp_path / "r",
                                             quiet=True)).results["metrics"]
    assert len(metrics["eval_seconds"]) == 2 and all(s > 0 for s in metrics["eval_seconds"])
    clock = estimate.EpochClock(gpus_visible=False)
    clock.add_results(tmp_path / "r")
    whole = sorted(t + e for t, e in zip(metrics["epoch_seconds"], metrics["eval_seconds"]))
    assert clock.epoch_seconds(Task(tmp_path / "a.yaml", cfg)) == sum(whole) / 2
    # files written before eval_seconds count their training alone
    assert estimate.epoch_times({"epoch_seconds": [7.0, 6.0], "eval_seconds": [9.0, None]}) == [16.0, 6.0]
    assert estimate.epoch_times({"epoch_seconds": [7.0]}) == [7.0]


def test_the_batch_reads_each_checkpoint_once(tmp_path, monkeypatch):
    """After every finished run the estimate used to re-read (and checksum) every queued checkpoint."""
    opened = []
    monkeypatch.setattr(checkpoint, "inspect_latest", lambda path: opened.append(path) or (None, None, []))
    tasks = [Task(tmp_path / f"{seed}.yaml", ExperimentConfig.from_mapping(
        {"model": "mlp1", "dataset": "synthetic", "device": "cpu", "epochs": 2, "seed": seed})) for seed in (0, 1)]
    clock = estimate.EpochClock(False, BatchOptions(tmp_path / "c", tmp_path / "r"))
    clock.add(tasks[0].config.to_dict(), "cpu", [10.0])
    assert clock.time_left(tasks, []) == "about 40s left"
    assert clock.time_left(tasks[1:], tasks[:1]) == "about 40s left"  # just started: nothing run yet
    assert len(opened) == 2


def test_the_epoch_line_says_which_seconds_are_training_and_which_the_whole_epoch():
    from fastzhang import runlog

    row = {"epochs": 1, "train_loss": 2.2, "train_acc": 18.0, "test_loss": 2.0, "test_acc": 23.9,
           "epoch_seconds": 7.0, "images_per_second": 714.3, "eval_seconds": 9.0}
    assert runlog.epoch_line("x", row, 3, 16.5).endswith(
        "| train 7.0s (714 img/s) + test 9.0s = 16.0s, ~33s left")


def test_dry_run_lists_the_runs_that_would_fail_and_why(tmp_path, capsys):
    """A device or data folder this machine lacks: listed as failing (exit 1); a missing data set said once."""
    recipes, empty = tmp_path / "recipes", tmp_path / "empty"
    recipes.mkdir()
    empty.mkdir()
    gone = tmp_path / "gone"
    for seed in (1, 2):
        (recipes / f"c100_{seed}.yaml").write_text(f"model: mlp1\ndataset: cifar100\nseed: {seed}\ndata_dir: {empty}\n")
        (recipes / f"gone_{seed}.yaml").write_text(f"model: mlp1\nseed: {seed}\ndata_dir: {gone}\n")
    (recipes / "gpu.yaml").write_text(f"model: mlp1\ndevice: cuda\ndata_dir: {empty}\n")
    before = files_under(tmp_path)
    code = run_cli(["batch", recipes, "--dry-run", "--checkpoint-dir", tmp_path / "c", "--results-dir", tmp_path / "r"])
    out = capsys.readouterr().out.splitlines()
    assert files_under(tmp_path) == before
    assert code == 1 and out[-1] == ("3 run(s) would fail" if not torch.cuda.is_available() else "2 run(s) would fail")
    assert [line for line in out if "CIFAR-100" in line] == [
        f"note: no CIFAR-100 in {empty}: each run of it would download it first "
        "(https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz)"]
    gone_lines = [line for line in out if "gone_" in line]
    assert gone_lines[0].endswith(f"would fail: {gone}: no such folder (named by --data-dir / data_dir); fix the path, "
                                  "or create the folder to download CIFAR-10 into it")
    assert gone_lines[1].endswith("would fail: as above")
    if not torch.cuda.is_available():
        assert [line for line in out if "gpu.yaml" in line][0].endswith(
            "would fail: device 'cuda' requested but CUDA is not available on this machine")


def test_a_failures_reason_is_said_once_by_the_batch(tmp_path):
    """The run's own lines say it, the summary says it; the progress line no longer repeats it."""
    from fastzhang.batch.plan import FAILED, Progress, RunResult, format_summary

    said = []
    task = Task(tmp_path / "a.yaml", ExperimentConfig.from_mapping({"model": "mlp1"}))
    progress = Progress(1, quiet=False, out=said.append)
    progress.finish(RunResult(task, FAILED, 2, detail="no CIFAR-100 in data", seconds=0.8), 0)
    summary = format_summary(progress.results, 1, None)
    assert sum("no CIFAR-100" in line for line in said + summary.splitlines()) == 1


def test_a_checkpoint_from_before_eval_seconds_resumes_into_a_valid_results_file(tmp_path, one_thread):
    from fastzhang import results

    cfg = ExperimentConfig.from_mapping(
        {"model": "mlp1", "dataset": "synthetic", "device": "cpu", "batch_size": 256, "epochs": 2})
    ckpt = tmp_path / "c"
    _half_done(cfg, ckpt)
    latest = checkpoint.latest_path(ckpt, cfg.experiment_id)
    old = checkpoint.load(latest)
    del old["all_metrics"]["eval_seconds"]
    checkpoint.save(old, latest)
    payload = run_experiment(cfg, RunOptions(checkpoint_dir=ckpt, results_dir=tmp_path / "r", quiet=True)).results
    assert payload["metrics"]["eval_seconds"][0] is None and payload["metrics"]["eval_seconds"][1] > 0
    assert results.validate(results.read(results.files_for(tmp_path / "r", cfg.experiment_id)[0]).payload) is None
