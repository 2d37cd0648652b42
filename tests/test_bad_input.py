"""Bad input is refused before anything is touched: exit 2, one line naming the problem, no files.

Each case runs `fastzhang run` in a fresh working folder that holds only the
case's inputs. Most run in this process through `fastzhang.cli.main` (process
start-up would dominate); a handful run as real processes, side by side.
The network is off limits: a case that tried to download would fail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import Fz, cifar_arrays, files_under, fz_env, make_cifar_dir, run_cli, stderr_lines, write_binary_dir

from fastzhang import checkpoint
from fastzhang.config import ExperimentConfig
from fastzhang.data import cifar, download

TINY = ["--model", "mlp1", "--dataset", "synthetic", "--epochs", "1", "--device", "cpu", "--quiet"]


@dataclass(frozen=True)
class Case:
    id: str
    argv: list  # after `fastzhang`; "{cwd}" is replaced by the case's folder
    says: str  # a piece of the one stderr line that names the problem
    setup: Callable[[Path], None] = lambda cwd: None
    tiny_cifar: bool = False  # in-process only: CIFAR-10 files of 20 images count as full size


def recipe(text: str) -> Callable[[Path], None]:
    return lambda cwd: (cwd / "recipe.yaml").write_text(text)


def truncated_batch(cwd: Path) -> None:
    fx = make_cifar_dir(cwd, "binary", name="data")
    batch = fx.path / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-1000])


def small_batches(cwd: Path) -> None:
    make_cifar_dir(cwd, "python", name="data")  # 20 images per file, not 10,000


def checkpoint_of_another_config(cwd: Path) -> None:
    other = ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "epochs": 1, "seed": 7})
    checkpoint.save({"config": other.to_dict(), "epoch": 1}, cwd / "other.pth")


def checkpoint_without_weights(cwd: Path) -> None:
    """Intact and of this very experiment, but not something a run wrote."""
    cfg = ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "epochs": 1, "device": "cpu"})
    checkpoint.save({"config": cfg.to_dict(), "epoch": 1}, cwd / "bare.pth")


def cifar100_files(layout: str) -> Callable[[Path], None]:
    return lambda cwd: make_cifar_dir(cwd, layout, name="data", dataset="cifar100")


def cifar10_files_with_100_labels(cwd: Path) -> None:
    """CIFAR-10's binary layout holding CIFAR-100's labels: the labels exceed 9."""
    write_binary_dir(cwd / "data" / "cifar-10-batches-bin", cifar_arrays(20, num_classes=100), 20)


def zero_length_file(cwd: Path) -> None:
    (cwd / "empty.pth").write_bytes(b"")


def a_file(cwd: Path) -> None:
    (cwd / "notes.txt").write_text("not a data folder\n")


CASES = [
    # recipes
    Case("unknown-key", ["run", "--config", "recipe.yaml"], "unknown setting 'learning_rate'",
         recipe("model: mlp1\ndataset: synthetic\nlearning_rate: 0.1\n")),
    Case("wrong-type-int", ["run", "--config", "recipe.yaml"], "epochs must be an integer, got 'ten'",
         recipe("model: mlp1\nepochs: ten\n")),
    Case("float-for-int", ["run", "--config", "recipe.yaml"], "batch_size must be an integer, got 12.5",
         recipe("model: mlp1\nbatch_size: 12.5\n")),
    Case("wrong-type-bool", ["run", "--config", "recipe.yaml"], "random_crop must be true or false",
         recipe("model: mlp1\nrandom_crop: 'yes'\n")),
    Case("infinite-lr", ["run", "--config", "recipe.yaml"], "lr must be a finite number",
         recipe("model: mlp1\nlr: .inf\n")),
    Case("empty-yaml", ["run", "--config", "recipe.yaml"], "recipe is empty", recipe("")),
    Case("broken-yaml", ["run", "--config", "recipe.yaml"], "recipe.yaml: broken YAML at line 3",
         recipe("model: mlp1\nepochs: [1, 2\nseed: 3\n")),
    Case("recipe-is-a-list", ["run", "--config", "recipe.yaml"], "expected a mapping of settings, got a list",
         recipe("- model: mlp1\n- epochs: 3\n")),
    Case("recipe-is-a-number", ["run", "--config", "recipe.yaml"], "expected a mapping of settings, got a number",
         recipe("42\n")),
    Case("missing-recipe", ["run", "--config", "nope.yaml"], "nope.yaml: cannot read recipe (No such file"),
    Case("recipe-is-a-folder", ["run", "--config", "."], "cannot read recipe (Is a directory)"),
    # values
    Case("p-1.5", ["run", *TINY, "--randomization", "partial", "--corrupt-prob", "1.5"],
         "corrupt_prob must be in [0, 1]; got 1.5"),
    Case("negative-lr", ["run", *TINY, "--lr", "-0.1"], "lr must be > 0; got -0.1"),
    Case("unknown-model", ["run", *TINY, "--model", "resnet18"], "model must be one of"),
    Case("unknown-randomization", ["run", *TINY, "--randomization", "flipped"], "randomization must be one of"),
    Case("unknown-dataset", ["run", *TINY, "--dataset", "imagenet"], "dataset must be one of"),
    Case("corrupt-prob-without-partial", ["run", *TINY, "--corrupt-prob", "0.3"],
         "corrupt_prob applies only to randomization 'partial'"),
    Case("random-labels-with-p", ["run", *TINY, "--randomization", "random_labels", "--corrupt-prob", "0.5"],
         "random_labels means corrupt_prob 1.0"),
    Case("train-subset-too-large", ["run", *TINY, "--train-subset", "5000"],
         "train_subset must be in 1..1024 (the training images); got 5000"),
    Case("batch-size-0", ["run", *TINY, "--batch-size", "0"], "batch_size must be >= 1; got 0"),
    Case("momentum-1", ["run", *TINY, "--momentum", "1"], "momentum must be in [0, 1)"),
    Case("lr-decay-0", ["run", *TINY, "--lr-decay", "0"], "lr_decay must be in (0, 1]"),
    Case("negative-weight-decay", ["run", *TINY, "--weight-decay", "-0.0005"], "weight_decay must be >= 0"),
    Case("negative-seed", ["run", *TINY, "--seed", "-1"], "seed must be >= 0; got -1"),
    Case("stop-at-150", ["run", *TINY, "--stop-at-train-acc", "150"], "stop_at_train_acc must be in (0, 100]"),
    Case("checkpoint-every-0", ["run", *TINY, "--checkpoint-every-steps", "0"], "checkpoint_every_steps must be >= 1"),
    Case("device-tpu", ["run", *TINY, "--device", "tpu"], "device must be auto, cpu, cuda or cuda:N"),
    Case("amp-yes", ["run", *TINY, "--amp", "yes"], "amp must be one of auto, on, off"),
    Case("cuda-graphs-on-cpu", ["run", *TINY, "--cuda-graphs", "on"], "cuda_graphs 'on' needs a CUDA device"),
    Case("unknown-loader", ["run", *TINY, "--loader", "ray"], "loader must be one of auto, torch, triton, dali"),
    Case("early-stop-patience-0", ["run", *TINY, "--early-stop-patience", "0"],
         "early_stop_patience must be >= 1; got 0"),
    Case("negative-early-stop-min-epochs",
         ["run", *TINY, "--early-stop-patience", "3", "--early-stop-min-epochs", "-1"],
         "early_stop_min_epochs must be >= 0; got -1"),
    Case("early-stop-min-epochs-alone", ["run", *TINY, "--early-stop-min-epochs", "5"],
         "early_stop_min_epochs applies only with early_stop_patience"),
    # flags
    Case("not-a-number", ["run", *TINY, "--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    Case("unknown-flag", ["run", *TINY, "--learning-rate", "0.1"], "unrecognized arguments: --learning-rate 0.1"),
    Case("flag-without-value", ["run", *TINY, "--seed"], "argument --seed: expected one argument"),
    Case("unknown-subcommand", ["train", *TINY], "argument COMMAND: invalid choice: 'train'"),
    # data
    Case("missing-data-folder", ["run", *TINY, "--dataset", "cifar10", "--data-dir", "{cwd}/no-such-folder"],
         "no-such-folder: no such folder (named by --data-dir / data_dir)"),
    Case("data-dir-is-a-file", ["run", *TINY, "--dataset", "cifar10", "--data-dir", "notes.txt"],
         "notes.txt: no CIFAR-10 here and cannot download into it", a_file),
    Case("truncated-batch-file", ["run", *TINY, "--dataset", "cifar10", "--data-dir", "data"],
         "data_batch_3.bin: truncated: 60460 bytes, expected 20 records", truncated_batch, tiny_cifar=True),
    Case("wrong-size-batches", ["run", *TINY, "--dataset", "cifar10", "--data-dir", "data"],
         "data_batch_1: 'data' must be a uint8 array of shape (10000, 3072)", small_batches),
    Case("cifar100-folder-as-cifar10", ["run", *TINY, "--dataset", "cifar10", "--data-dir", "data/cifar-100-python"],
         "cifar-100-python: this is CIFAR-100, not CIFAR-10; use dataset cifar100", cifar100_files("python"),
         tiny_cifar=True),
    Case("cifar100-tarball-as-cifar10",
         ["run", *TINY, "--dataset", "cifar10", "--data-dir", "data/cifar-100-python.tar.gz"],
         "cifar-100-python.tar.gz: this is CIFAR-100, not CIFAR-10", cifar100_files("tarball"), tiny_cifar=True),
    Case("cifar100-labels-as-cifar10", ["run", *TINY, "--dataset", "cifar10", "--data-dir", "data"],
         "data_batch_1.bin: labels must be in 0..9; found", cifar10_files_with_100_labels, tiny_cifar=True),
    Case("cifar10-folder-as-cifar100",
         ["run", *TINY, "--dataset", "cifar100", "--data-dir", "data/cifar-10-batches-bin"],
         "cifar-10-batches-bin: this is CIFAR-10, not CIFAR-100; use dataset cifar10",
         lambda cwd: make_cifar_dir(cwd, "binary", name="data"), tiny_cifar=True),
    # checkpoints given with --resume-from
    Case("resume-from-missing", ["run", *TINY, "--resume-from", "nope.pth"],
         "--resume-from nope.pth: no such checkpoint file"),
    Case("resume-from-empty", ["run", *TINY, "--resume-from", "empty.pth"],
         "--resume-from empty.pth: the file is empty (0 bytes)", zero_length_file),
    Case("resume-from-other-config", ["run", *TINY, "--seed", "0", "--resume-from", "other.pth"],
         "belongs to a different configuration (seed: checkpoint 7 vs requested 0)", checkpoint_of_another_config),
    Case("checkpoint-dir-is-a-file", ["run", *TINY, "--checkpoint-dir", "notes.txt"],
         "--checkpoint-dir notes.txt: not a folder", a_file),
    Case("resume-from-incomplete", ["run", *TINY, "--resume-from", "bare.pth"],
         "bare.pth lacks step_in_epoch, global_step, model_state_dict", checkpoint_without_weights),
]
if not torch.cuda.is_available():
    CASES.append(Case("device-cuda-without-cuda", ["run", *TINY, "--device", "cuda"],
                      "device 'cuda' requested but CUDA is not available on this machine"))
if os.environ.get("TRITON_INTERPRET") != "1":  # the interpreter runs the kernel on the CPU
    CASES.append(Case("triton-loader-on-cpu", ["run", *TINY, "--loader", "triton"], "loader 'triton' needs "))
# These also run as real processes (the exit code of the process, not of main()).
IN_A_PROCESS = ("broken-yaml", "not-a-number", "missing-data-folder", "train-subset-too-large", "resume-from-empty",
                "negative-lr")


def prepare(case: Case, cwd: Path) -> tuple[list[str], dict[str, bytes]]:
    cwd.mkdir(parents=True)
    case.setup(cwd)
    return [a.replace("{cwd}", str(cwd)) for a in case.argv], files_under(cwd)


def assert_refused(case: Case, cwd: Path, before: dict, code: int, out: str, err: str) -> None:
    lines = stderr_lines(err)
    assert code == 2, (case.id, code, err)
    assert len(lines) == 1, (case.id, lines)
    assert lines[0].startswith(("fastzhang: error: ", "fastzhang run: error: ")), lines
    assert case.says in lines[0], (case.id, lines[0])
    assert out == ""
    for folder in ("checkpoints", "results"):
        assert not (cwd / folder).exists() or not any((cwd / folder).iterdir()), (case.id, folder)
    assert files_under(cwd, skip_locks=False) == before, case.id  # nothing created, nothing changed


def test_the_table_is_big_enough():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setattr(download, "urlopen", lambda *a, **k: pytest.fail("tried to download"))
    monkeypatch.delenv("FASTZHANG_DATA", raising=False)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_process(case, tmp_path, monkeypatch, capsys, no_network):
    cwd = tmp_path / "work"
    argv, before = prepare(case, cwd)
    monkeypatch.chdir(cwd)
    if case.tiny_cifar:
        monkeypatch.setattr(cifar, "PER_BATCH", 20)
    code = run_cli(argv)
    captured = capsys.readouterr()
    assert_refused(case, cwd, before, code, captured.out, captured.err)


def test_dali_loader_without_nvidia_dali_is_refused(tmp_path, monkeypatch, capsys, no_network):
    from fastzhang.data import dali

    monkeypatch.setattr(dali, "available", lambda: False)
    case = Case("dali-loader-without-dali", ["run", *TINY, "--loader", "dali"],
                "loader 'dali' needs nvidia-dali: pip install 'fastzhang[dali]'")
    cwd = tmp_path / "work"
    argv, before = prepare(case, cwd)
    monkeypatch.chdir(cwd)
    code = run_cli(argv)
    captured = capsys.readouterr()
    assert_refused(case, cwd, before, code, captured.out, captured.err)


@pytest.mark.e2e
def test_bad_input_is_refused_by_real_processes(tmp_path):
    chosen = [c for c in CASES if c.id in IN_A_PROCESS]
    assert len(chosen) == len(IN_A_PROCESS)
    env = fz_env()
    env.pop("FASTZHANG_DATA", None)
    started = []
    for case in chosen:  # all at once: start-up is most of their time
        cwd = tmp_path / case.id
        argv, before = prepare(case, cwd)
        started.append((case, cwd, before, Fz(argv, cwd, name=case.id, env=env, logs=tmp_path)))
    for case, cwd, before, fz in started:
        code = fz.wait(timeout=120)
        assert_refused(case, cwd, before, code, fz.stdout, fz.stderr)


def test_a_completed_experiment_with_bad_settings_is_refused_like_any_other(tmp_path, monkeypatch, capsys,
                                                                           no_network, one_thread):
    make_cifar_dir(tmp_path, "python", name="data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cifar, "PER_BATCH", 20)
    args = ["run", *TINY, "--dataset", "cifar10", "--data-dir", "data", "--epochs", "1", "--quiet"]
    assert run_cli(args) == 0
    assert run_cli(args) == 0 and "EXPERIMENT ALREADY COMPLETED" in capsys.readouterr().out
    bad = {"--data-dir": ("nope", "nope: no such folder (named by --data-dir / data_dir); fix the path, or create "
                                  "the folder to download CIFAR-10 into it")}
    if not torch.cuda.is_available():
        bad["--device"] = ("cuda", "device 'cuda' requested but CUDA is not available on this machine")
    for flag, (value, says) in bad.items():
        assert run_cli([*args, flag, value]) == 2, flag
        captured = capsys.readouterr()
        assert captured.out == "" and stderr_lines(captured.err) == [f"fastzhang: error: {says}"]
