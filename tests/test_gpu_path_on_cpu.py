"""What a GPU would expose, checked on the CPU (issue "GPU first contact", items 1-4 and 7).

- the epoch clock waits for the device once per epoch (and per mid-epoch checkpoint);
- a resume that toggles channels_last lays every optimizer buffer out like its parameter;
- `cuda:N` becomes CUDA's current device before anything is queued;
- a failed graph capture or compile ends in a finished run with one warning, results equal
  to a run without that switch, and the switches actually used in the results file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import REPO, Fz, assert_same_results, stderr_lines
from fastzhang.config import ExperimentConfig
from fastzhang.data.batches import ResidentData
from fastzhang.data.synthetic import make_synthetic
from fastzhang.train import engine, fastpath, state
from fastzhang.train.fastpath import FAIL_ENV, Speed, TrainStep
from fastzhang.train.loaders import make_loader

PLAIN = Speed(amp=False, compile=False, cuda_graphs=False, channels_last=False)


def _cfg(**extra) -> ExperimentConfig:
    return ExperimentConfig.from_mapping({"model": "mlp1", "dataset": "synthetic", "device": "cpu", "epochs": 2,
                                          "batch_size": 100, "random_crop": True, **extra})


@pytest.fixture(scope="module")
def resident():
    return ResidentData.build(make_synthetic(), randomization="random_labels", corrupt_prob=1.0, seed=0,
                              train_subset=None, device="cpu")


def _train(cfg, resident, speed: Speed, *, build: Speed | None = None, hooks: engine.Hooks | None = None):
    run = engine.build_run(cfg, torch.device("cpu"), build or speed)
    loader = make_loader("torch", resident, cfg.batch_size, dtype=torch.float32, channels_last=False)
    assert engine.train(cfg, run, resident, loader, speed, hooks or engine.Hooks(save=lambda mid: None, quiet=True))
    return run


# ------------------------------------------------------------------------------------------
# 1. The clock waits for the device


def test_clock_synchronizes_the_cuda_device_it_times(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    elapsed = engine.clock(torch.device("cuda", 1))
    assert elapsed(0.0) > 0
    assert waited == [torch.device("cuda", 1)]
    engine.clock(torch.device("cpu"))(0.0)
    assert waited == [torch.device("cuda", 1)]  # nothing to wait for on the CPU


def test_the_clock_is_read_once_per_epoch_and_per_mid_epoch_checkpoint(monkeypatch, resident):
    reads = []
    real_clock = engine.clock

    def counting_clock(device):
        real = real_clock(device)
        return lambda start: reads.append(device) or real(start)

    monkeypatch.setattr(engine, "clock", counting_clock)
    _train(_cfg(), resident, PLAIN)  # 2 epochs of 11 steps
    assert len(reads) == 2
    reads.clear()
    saves = []
    _train(_cfg(checkpoint_every_steps=4), resident, PLAIN,
           hooks=engine.Hooks(save=saves.append, quiet=True))
    # steps 4 and 8 of epoch 1, then 12/16/20 (global) in epoch 2; plus two epoch ends
    assert saves.count(True) == 5 and len(reads) == 5 + 2


# ------------------------------------------------------------------------------------------
# 2. Optimizer buffers follow their parameters' memory format on resume


@pytest.mark.parametrize("saved_cl,resumed_cl", [(False, True), (True, False)])
def test_resume_with_toggled_channels_last_lays_buffers_out_like_parameters(saved_cl, resumed_cl, one_thread):
    cfg = ExperimentConfig.from_mapping({"model": "alexnet", "dataset": "synthetic", "device": "cpu"})
    saved = engine.build_run(cfg, torch.device("cpu"), dataclasses.replace(PLAIN, channels_last=saved_cl))
    x = torch.randn(4, 3, 28, 28)
    if saved_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    TrainStep(saved.model, saved.optimizer, saved_speed := dataclasses.replace(PLAIN, channels_last=saved_cl))(
        x, torch.tensor([0, 1, 2, 3]), torch.zeros(()), torch.zeros((), dtype=torch.int64))
    assert saved_speed.channels_last == saved_cl
    payload = state.to_payload(saved, cfg, "fp")

    resumed = engine.build_run(cfg, torch.device("cpu"), dataclasses.replace(PLAIN, channels_last=resumed_cl))
    state.restore(resumed, payload)
    toggled, convs = 0, 0
    for index, p in enumerate(resumed.optimizer.param_groups[0]["params"]):
        buf = resumed.optimizer.state[p]["momentum_buffer"]
        stored = payload["optimizer_state_dict"]["state"][index]["momentum_buffer"]
        assert buf.stride() == p.stride(), index
        assert torch.equal(buf, stored)  # same values, new layout
        toggled += stored.stride() != p.stride()
        convs += p.dim() == 4
    assert toggled == convs == 2  # AlexNet's conv weights really changed layout (the test can fail)


# ------------------------------------------------------------------------------------------
# 3. cuda:N is made the current device


def test_activate_device_sets_the_current_cuda_device(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    fastpath.activate_device(torch.device("cuda", 2))
    fastpath.activate_device(torch.device("cpu"))
    assert chosen == [torch.device("cuda", 2)]


def test_every_run_activates_its_device_before_building_data(monkeypatch):
    from fastzhang import experiment
    from fastzhang.data.sources import load_dataset

    order = []
    monkeypatch.setattr(fastpath, "activate_device", lambda device: order.append(("activate", device)))
    real_build = ResidentData.build
    monkeypatch.setattr(ResidentData, "build", lambda *a, **k: order.append(("data",)) or real_build(*a, **k))
    experiment._prepare(_cfg(), load_dataset("synthetic", None))
    assert order == [("activate", torch.device("cpu")), ("data",)]


# ------------------------------------------------------------------------------------------
# 4. Fallbacks: a failed capture or compile does not end the run


class FailingGraphs:
    """A CPU stand-in for CudaGraphs whose capture fails as a real one can (e.g. a sync during capture)."""

    def warmup(self):
        from contextlib import nullcontext

        return nullcontext()

    def capture(self, fn):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")


def test_failed_capture_falls_back_to_eager_steps_with_the_same_results(monkeypatch, resident):
    class Standin(TrainStep):
        def __init__(self, model, optimizer, speed, **kw):
            super().__init__(model, optimizer, speed, graphs=FailingGraphs() if speed.cuda_graphs else None, **kw)

    monkeypatch.setattr(engine, "TrainStep", Standin)
    graphs = dataclasses.replace(PLAIN, cuda_graphs=True)
    told = []
    fell_back = _train(_cfg(), resident, graphs, hooks=engine.Hooks(
        save=lambda mid: None, quiet=True, on_fallback=lambda *a: told.append(a)))
    plain = _train(_cfg(), resident, PLAIN, build=graphs)  # the same tensor lr
    assert told == [("cuda_graphs", "RuntimeError: CUDA error: operation not permitted when stream is capturing")]
    for (name, a), b in zip(plain.model.state_dict().items(), fell_back.model.state_dict().values()):
        assert torch.equal(a, b), name
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "steps"):
        assert plain.metrics[key] == fell_back.metrics[key], key


def test_failure_on_the_second_batch_shape_keeps_the_trajectory(resident):
    """The full batch captures; the last batch's capture fails: warm-up and capture are both undone."""

    class FailSecond(FailingGraphs):
        optimizer = None

        def __init__(self):
            self.calls = 0

        def capture(self, fn):
            self.calls += 1
            if self.calls == 2:
                return super().capture(fn)
            outputs = fn()

            def replay():  # a replay writes fresh gradients, as at capture
                self.optimizer.zero_grad(set_to_none=True)
                fn()

            return replay, outputs

    x = torch.randn(40, 3, 28, 28)
    y = torch.randint(0, 10, (40,))
    results = []
    for graphs in (None, FailSecond()):
        cfg = _cfg()
        run = engine.build_run(cfg, torch.device("cpu"), dataclasses.replace(PLAIN, cuda_graphs=True))
        told = []
        if graphs is not None:
            graphs.optimizer = run.optimizer
        step = TrainStep(run.model, run.optimizer, dataclasses.replace(PLAIN, cuda_graphs=graphs is not None),
                         graphs=graphs, on_fallback=lambda *a: told.append(a))
        for start in (0, 16, 32, 0, 16, 32):  # shapes 16, 16, 8 twice
            step(x[start:start + 16], y[start:start + 16], torch.zeros(()), torch.zeros((), dtype=torch.int64))
        results.append((run.model.state_dict(), told, step.speed))
    (plain, _, _), (fell, told, speed) = results
    assert [t[0] for t in told] == ["cuda_graphs"] and speed.cuda_graphs is False
    for name, value in plain.items():
        assert torch.equal(value, fell[name]), name


def test_injected_capture_failure_via_the_environment(monkeypatch):
    monkeypatch.setenv(FAIL_ENV, "capture")
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    told = []
    graphs = FailingGraphs()
    graphs.capture = lambda fn: pytest.fail("the injected failure comes before a real capture")
    step = TrainStep(model, opt, dataclasses.replace(PLAIN, cuda_graphs=True), graphs=graphs,
                     on_fallback=lambda *a: told.append(a))
    step(torch.randn(2, 4), torch.tensor([0, 2]), torch.zeros(()), torch.zeros((), dtype=torch.int64))
    assert told == [("cuda_graphs", f"_InjectedFailure: injected capture failure ({FAIL_ENV})")]


def test_capture_failure_under_compile_names_the_capture_error():
    """With a compiled forward, the capture's own error is reported, not mistaken for compile's."""
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    told = []
    step = TrainStep(model, opt, dataclasses.replace(PLAIN, cuda_graphs=True), graphs=FailingGraphs(),
                     on_fallback=lambda *a: told.append(a))
    step.forward = lambda x: model(x)  # stands in for torch.compile(model): not the model itself
    step(torch.randn(2, 4), torch.tensor([0, 2]), torch.zeros(()), torch.zeros((), dtype=torch.int64))
    assert told == [("cuda_graphs", "RuntimeError: CUDA error: operation not permitted when stream is capturing")]
    assert step.graphs is None and step.forward is not model  # compile stays on


def test_a_real_error_without_compile_or_graphs_still_raises():
    model = torch.nn.Linear(4, 3)
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), PLAIN)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        step(torch.randn(2, 5), torch.tensor([0, 2]), torch.zeros(()), torch.zeros((), dtype=torch.int64))


TINY = ("run", "--model", "mlp1", "--dataset", "synthetic", "--epochs", "2", "--batch-size", "100",
        "--device", "cpu", "--quiet")


def _results(folder: Path) -> dict:
    [path] = (folder / "results").glob("*.json")
    return json.loads(path.read_text())


def test_injected_compile_failure_finishes_the_run_like_compile_off(tmp_path):
    from conftest import fz_env

    (tmp_path / "off").mkdir()
    (tmp_path / "failed").mkdir()
    off = Fz([*TINY, "--compile", "off"], tmp_path / "off")
    failed = Fz([*TINY, "--compile", "on"], tmp_path / "failed", env=fz_env(**{FAIL_ENV: "compile"}))
    assert off.wait() == 0, off.stderr
    assert failed.wait() == 0, failed.stderr
    lines = stderr_lines(failed.stderr)
    warnings = [line for line in lines if "warning" in line]
    assert len(warnings) == 1, lines
    assert re.search(r"compile failed \(_InjectedFailure: injected compile failure.*\); continuing without torch.compile$",
                     warnings[0])
    assert "Traceback" not in failed.stderr
    got, want = _results(tmp_path / "failed"), _results(tmp_path / "off")
    assert_same_results(got, want)
    assert got["execution"]["switches"] == want["execution"]["switches"] == {
        "amp": got["execution"]["switches"]["amp"], "compile": False, "cuda_graphs": False, "channels_last": False}
    assert got["execution"]["fallbacks"] == [
        {"switch": "compile", "reason": f"_InjectedFailure: injected compile failure ({FAIL_ENV})"}]
    assert want["execution"]["fallbacks"] == []
    assert got["execution"]["loader"] == want["execution"]["loader"] == "torch"
    assert got["execution"]["device"] == "cpu"


# ------------------------------------------------------------------------------------------
# 7. The torch floor


def test_torch_floor_is_2_5():
    [torch_dep] = re.findall(r'^\s*"(torch[<>=].*?)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert torch_dep.startswith("torch>=2.5,"), torch_dep


def test_a_loader_fallback_is_warned_once_and_recorded(monkeypatch, tmp_path, capsys):
    from conftest import run_cli
    from fastzhang.kernels import preprocess_triton
    from fastzhang.train import loaders

    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly failed")

    monkeypatch.setattr(loaders, "resolve_loader", lambda name, device: "triton")  # as auto on a CUDA machine
    monkeypatch.setattr(preprocess_triton, "fused_preprocess", broken)
    monkeypatch.chdir(tmp_path)
    assert run_cli([*TINY, "--epochs", "1"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["fastzhang: warning: mlp1_synthetic_baseline_bs100_ep1: loader failed "
                        "(triton: RuntimeError: PTX assembly failed); continuing with the torch loader"]
    execution = _results(tmp_path)["execution"]
    assert execution["loader"] == "torch"
    assert execution["fallbacks"] == [{"switch": "loader", "reason": "triton: RuntimeError: PTX assembly failed"}]
