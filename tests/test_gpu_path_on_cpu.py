"""What a GPU would expose, checked on the CPU (issue "GPU first contact", items 1-4 and 7).

- the epoch clock waits for the device once per epoch (and per mid-epoch checkpoint);
- a resume that toggles channels_last lays every optimizer buffer out like its parameter;
- `cuda:N` becomes CUDA's current device before anything is queued;
- a failed graph capture or compile ends in a finished run with one warning, results equal
  to a run without that switch, and the switches actually used in the results file.

The tests marked `cuda` are the GPU check's (`make gpu-check`): they take their device from
the `device` fixture, so they run here on the CPU and on CUDA on a GPU machine. The ones that
start real `fastzhang` processes run on a plain CPU only in the GPU check's dry run
(FASTZHANG_GPU_DRY_RUN=1): there what they assert is asserted by the cheaper tests each names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from conftest import (DRY_ENV, REPO, TIMING, Fz, assert_same_results, assert_same_training, fz_env, run_cli,
                      stderr_lines)
from fastzhang.config import ExperimentConfig
from fastzhang.data.batches import ResidentData
from fastzhang.data.synthetic import make_synthetic
from fastzhang.train import engine, fastpath, state
from fastzhang.train.fastpath import FAIL_ENV, Speed, TrainStep
from fastzhang.train.loaders import make_loader

PLAIN = Speed(amp=False, compile=False, cuda_graphs=False, channels_last=False)


def gpu_check_only(covered_by: str):
    """Skip a real-process check of the GPU check on a plain CPU run, where `covered_by` asserts it."""
    return pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get(DRY_ENV) != "1",
                              reason=f"make gpu-check's (CUDA, or FASTZHANG_GPU_DRY_RUN=1); on the CPU: {covered_by}")


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


def _assert_same_or_close(got: dict, want: dict, device) -> None:
    """Two results files: equal on the CPU; on CUDA within fp32 tolerance (a capture's warm-up, a
    fused kernel may round differently), as the metric series say."""
    if device.type == "cpu":
        return assert_same_results(got, want)
    for key, series in want["metrics"].items():
        if isinstance(series, list) and key not in TIMING:
            assert got["metrics"][key] == pytest.approx(series, rel=1e-5, abs=1e-6), key


@pytest.mark.slow  # torch.compile's imports and two runs: ~2 s
def test_an_injected_compile_failure_warns_once_and_trains_as_compile_off(monkeypatch, tmp_path, capsys, one_thread):
    """The CPU's share of the fallback check below: the compile fallback through `fastzhang run` in this process."""
    monkeypatch.chdir(tmp_path)
    runs = {"off": [], "failed": [FAIL_ENV, "compile"]}
    for name, env in runs.items():
        if env:
            monkeypatch.setenv(*env)
        capsys.readouterr()
        assert run_cli([*TINY, "--compile", "on" if env else "off", "--results-dir", f"{name}/results",
                        "--checkpoint-dir", f"{name}/checkpoints"]) == 0
    warnings = [line for line in stderr_lines(capsys.readouterr().err) if "warning" in line]
    assert len(warnings) == 1 and re.search(r"compile failed \(_InjectedFailure: injected compile failure.*\); "
                                            "continuing without", warnings[0]), warnings
    got, want = _results(tmp_path / "failed"), _results(tmp_path / "off")
    assert_same_results(got, want)
    assert got["execution"]["switches"] == want["execution"]["switches"] and not got["execution"]["switches"]["compile"]
    assert got["execution"]["fallbacks"] == [{"switch": "compile",
                                              "reason": f"_InjectedFailure: injected compile failure ({FAIL_ENV})"}]
    assert want["execution"]["fallbacks"] == []


@pytest.mark.cuda
@pytest.mark.e2e
@pytest.mark.timeout(240)
@gpu_check_only("test_an_injected_compile_failure_warns_once_and_trains_as_compile_off, and for a capture "
                "test_failed_capture_falls_back_to_eager_steps_with_the_same_results and "
                "test_injected_capture_failure_via_the_environment")
@pytest.mark.parametrize("failure,switch", [("capture", "cuda_graphs"), ("compile", "compile")])
def test_injected_failure_finishes_the_run_like_the_switch_off(tmp_path, device, failure, switch):
    """FASTZHANG_TEST_FAIL=capture|compile: one warning, the fallback in `execution`, results as without it.
    On the CPU there is no capture to fail (graphs are off there): the run simply has no fallback."""
    args = [*TINY[:-2], str(device), "--quiet", "--compile", "on" if switch == "compile" else "off",
            "--cuda-graphs", "on" if switch == "cuda_graphs" and device.type == "cuda" else "off"]
    (tmp_path / "off").mkdir()
    (tmp_path / "failed").mkdir()
    off = Fz([*args[:-4], "--compile", "off", "--cuda-graphs", "off"], tmp_path / "off")
    failed = Fz(args, tmp_path / "failed", env=fz_env(**{FAIL_ENV: failure}))
    assert off.wait(timeout=200) == 0, off.stderr
    assert failed.wait(timeout=200) == 0, failed.stderr
    fails = switch == "compile" or device.type == "cuda"
    warnings = [line for line in stderr_lines(failed.stderr) if "warning" in line]
    assert len(warnings) == fails, warnings
    if fails:
        assert re.search(rf"{switch} failed \(_InjectedFailure: injected {failure} failure.*\); continuing without",
                         warnings[0])
    assert "Traceback" not in failed.stderr
    got, want = _results(tmp_path / "failed"), _results(tmp_path / "off")
    _assert_same_or_close(got, want, device)
    assert got["execution"]["switches"] == want["execution"]["switches"]
    assert got["execution"]["switches"][switch] is False
    assert got["execution"]["fallbacks"] == ([{"switch": switch, "reason":
                                               f"_InjectedFailure: injected {failure} failure ({FAIL_ENV})"}]
                                             if fails else [])
    assert want["execution"]["fallbacks"] == []
    assert got["execution"]["device"] == want["execution"]["device"] == device.type


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


# ------------------------------------------------------------------------------------------
# 8. The GPU check (`make gpu-check`): on the `device` fixture, CUDA on a GPU machine, else the CPU


@pytest.mark.cuda
@pytest.mark.timeout(60)
def test_environment_and_what_auto_picks(device, record_property):
    import importlib.metadata
    import os

    from fastzhang.config import SPEED_SWITCHES
    from fastzhang.data import dali
    from fastzhang.models.registry import MODELS
    from fastzhang.train.loaders import resolve_loader

    [floor] = [r for r in importlib.metadata.requires("fastzhang") if r.startswith("torch")]
    have = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    assert have >= tuple(int(p) for p in re.findall(r">=\s*(\d+)\.(\d+)", floor)[0]), (torch.__version__, floor)
    record_property("torch", f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
                             f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None})")
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        record_property("device", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, "
                                  f"{p.multi_processor_count} SMs; {torch.cuda.device_count()} visible")
    else:
        record_property("device", f"cpu, {torch.get_num_threads()} threads")
    import fastzhang
    import fastzhang.kernels

    where = [Path(m.__file__).resolve() for m in (fastzhang, fastzhang.kernels)]
    record_property("fastzhang", str(where[0].parent))
    install = os.environ.get("GPU_CHECK_INSTALL")  # make gpu-check: the product as installed, not the checkout
    if install:
        assert all(Path(install).resolve() in path.parents for path in where), (install, where)
    for name in ("orjson", "tqdm"):  # fastzhang's dependencies that a GPU machine may lack
        module = __import__(name)
        origin = "wheel folder" if install and Path(install).resolve() in Path(module.__file__).resolve().parents \
            else "this Python"
        record_property(name, f"{importlib.metadata.version(name)} ({origin})")
    try:
        import triton
        from fastzhang.kernels.preprocess_triton import unavailable

        record_property("triton", f"{triton.__version__}: {unavailable(device) or f'the kernel runs on {device}'}")
        expected = "triton" if device.type == "cuda" else "torch"
    except ImportError:
        record_property("triton", "not installed: the loader falls back to torch")
        expected = "torch"
    record_property("DALI", "present" if dali.available() else "absent")
    assert resolve_loader("auto", device) == expected
    record_property("loader auto", expected)
    for model in MODELS:
        speed = fastpath.resolve_speed(ExperimentConfig.from_mapping({"model": model}), device)
        on = [name for name in SPEED_SWITCHES if getattr(speed, name)]
        record_property(f"switches auto {model}", "+".join(on) or "fp32 eager")
        if device.type == "cuda":
            assert {"amp", "compile", "cuda_graphs"} <= set(on), (model, on)
            assert speed.channels_last == MODELS[model].convolutional, (model, on)
        else:
            assert not speed.compile and not speed.cuda_graphs, (model, on)


def _engine_run(device, model: str, speed: Speed, n: int, batch: int) -> tuple[dict, list]:
    """engine.train over 2 epochs of the synthetic set (random crops, the lr decayed in between, evaluation);
    built for graphs either way (fused SGD, lr in a device tensor): the only difference is replaying."""
    cfg = ExperimentConfig.from_mapping({"model": model, "dataset": "synthetic", "device": device.type, "epochs": 2,
                                         "batch_size": batch, "random_crop": True})
    data = ResidentData.build(make_synthetic(n, n // 4), randomization="none", corrupt_prob=0.0, seed=0,
                              train_subset=None, device=device)
    loader = make_loader("auto", data, batch, dtype=speed.input_dtype, channels_last=speed.channels_last)
    run = engine.build_run(cfg, device, dataclasses.replace(speed, cuda_graphs=device.type == "cuda"))
    fallbacks = [("loader", loader.fallback)] if loader.fallback else []
    hooks = engine.Hooks(save=lambda mid_epoch: None, quiet=True, on_fallback=lambda *a: fallbacks.append(a))
    assert engine.train(cfg, run, data, loader, speed, hooks)
    return state.to_payload(run, cfg, data.fingerprint), fallbacks


def _assert_close_training(got: dict, want: dict, rtol: float, atol: float) -> None:
    """Weights (BatchNorm statistics included), momentum buffers and metric series within a tolerance."""
    assert (got["epoch"], got["step_in_epoch"], got["global_step"]) == \
        (want["epoch"], want["step_in_epoch"], want["global_step"])
    for name, tensor in want["model_state_dict"].items():
        torch.testing.assert_close(got["model_state_dict"][name].cpu(), tensor.cpu(), rtol=rtol, atol=atol)
    for index, buffers in want["optimizer_state_dict"]["state"].items():
        for name, value in buffers.items():
            torch.testing.assert_close(got["optimizer_state_dict"]["state"][index][name].cpu(), value.cpu(),
                                       rtol=rtol, atol=atol)
    for key, series in want["all_metrics"].items():
        if key not in TIMING:
            assert got["all_metrics"][key] == pytest.approx(series, rel=rtol), key


GRAPH_CASES = [  # model, switches, tolerance: fp32 as tests/test_fastpath.py; compile+AMP looser
    ("mlp1", PLAIN, 1e-5, 1e-6), ("alexnet", PLAIN, 1e-5, 1e-6), ("inception", PLAIN, 1e-5, 1e-6),
    ("mlp1", dataclasses.replace(PLAIN, compile=True), 1e-4, 1e-5),
    ("alexnet", Speed(amp=True, compile=True, cuda_graphs=False, channels_last=True), 1e-4, 1e-5),
]


@pytest.mark.cuda
@pytest.mark.timeout(120)
@pytest.mark.parametrize("model,speed,rtol,atol", GRAPH_CASES,
                         ids=["mlp1-fp32", "alexnet-fp32", "inception-fp32", "mlp1-compile", "alexnet-compile-amp-cl"])
def test_cuda_graphs_train_as_eager_does(device, one_thread, model, speed, rtol, atol, record_property):
    """2 epochs with graphs against without (cuDNN deterministic). On the CPU there are no graphs and no
    compile: eager against eager, the plumbing only. A silent fallback fails the test."""
    cuda = device.type == "cuda"
    speed = dataclasses.replace(speed, compile=speed.compile and cuda)
    n, batch = (1024, 100) if cuda else (24, 16)  # the last batch is partial: 24 or 8 images
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    (plain, fell0), (captured, fell1) = (_engine_run(device, model, dataclasses.replace(speed, cuda_graphs=g), n, batch)
                                         for g in (False, cuda))
    assert fell0 == fell1 == []
    lr = captured["all_metrics"]["lr"]
    assert lr[1] < lr[0]
    _assert_close_training(captured, plain, rtol, atol)
    record_property("graphs", "replayed" if cuda else "dry run: eager both times")


def _kill_after_mid_epoch_checkpoint(fz: Fz, folder: Path, timeout: float = 120) -> tuple[int, int]:
    """SIGKILL `fz` once a mid-epoch checkpoint exists; (epoch, step_in_epoch) a resume must start from."""
    import time

    from fastzhang import checkpoint

    deadline, seen = time.monotonic() + timeout, None
    while True:
        assert fz.proc.poll() is None, f"ended before a mid-epoch checkpoint: {fz.stderr[-600:]}"
        assert time.monotonic() < deadline, "no mid-epoch checkpoint in time"
        found = list((folder / "checkpoints").glob("*_checkpoint.pth"))
        stamp = found[0].stat().st_mtime_ns if found else None
        if stamp is not None and stamp != seen:
            seen = stamp
            payload, _, _ = checkpoint.inspect_latest(found[0])
            if payload is not None and payload["step_in_epoch"] > 0:
                break
        time.sleep(0.02)
    fz.kill()
    payload, _, damage = checkpoint.inspect_latest(found[0])
    assert payload is not None and not damage, damage
    return payload["epoch"], payload["step_in_epoch"]


def _start(args, folder: Path, name: str, **env: str) -> Fz:
    folder.mkdir(parents=True, exist_ok=True)
    return Fz([*args, "--checkpoint-dir", folder / "checkpoints", "--results-dir", folder / "results"], folder,
              name=name, env=fz_env(**env))


def _resumed_from(stderr: str) -> tuple[int, int] | None:
    found = re.search(r"resuming after epoch (\d+)(?:, step (\d+))?", stderr)
    return (int(found[1]), int(found[2] or 0)) if found else None


def _final(folder: Path) -> tuple[dict, dict]:
    from fastzhang import checkpoint

    results = _results(folder)
    return checkpoint.load(checkpoint.latest_path(folder / "checkpoints", results["experiment_id"])), results


def _synthetic(device, model: str, batch: int, subset: int | None, **flags) -> list[str]:
    args = ["run", "--model", model, "--dataset", "synthetic", "--epochs", "2", "--batch-size", str(batch),
            "--device", str(device), *(["--train-subset", str(subset)] if subset else [])]
    return args + [str(a) for name, value in flags.items() for a in (f"--{name.replace('_', '-')}", value)]


@pytest.mark.cuda
@pytest.mark.e2e
@pytest.mark.timeout(240)
@gpu_check_only("test_faults_kill.py::test_sigkill_at_random_moments_then_resume_is_bitwise_exact")
def test_sigkill_after_a_mid_epoch_checkpoint_resumes_exactly(tmp_path, device, record_property):
    """Two uninterrupted runs (`auto` switches: on CUDA bf16, compile, graphs) and one SIGKILLed after a
    mid-epoch checkpoint, resumed. Bitwise is the claim; within a tolerance only where two uninterrupted
    runs differ as much (nondeterministic kernels decide, not the resume)."""
    from fastzhang.atomicio import SLOW_WRITE_ENV

    cuda = device.type == "cuda"
    args = _synthetic(device, "mlp1", 100 if cuda else 16, None if cuda else 256, randomization="random_labels",
                      checkpoint_every_steps=3 if cuda else 4)
    steady = [_start([*args, "--quiet"], tmp_path / f"steady{i}", f"steady{i}") for i in (1, 2)]
    killed = _start(args, tmp_path / "killed", "killed", **{SLOW_WRITE_ENV: "0.3" if cuda else "0.1"})
    point = _kill_after_mid_epoch_checkpoint(killed, tmp_path / "killed")
    resumed = _start(args, tmp_path / "killed", "resumed")
    for fz in (*steady, resumed):
        assert fz.wait(timeout=200) == 0, fz.stderr[-2000:]
    assert point[1] > 0 and _resumed_from(resumed.stderr) == point
    (ref, _), (twin, _), (back, _) = (_final(tmp_path / name) for name in ("steady1", "steady2", "killed"))
    record_property("killed at", f"epoch {point[0]} step {point[1]}")
    try:
        assert_same_training(twin, ref)
    except AssertionError:  # nondeterministic kernels on this device: the resume must be as close
        record_property("uninterrupted twice", "not bitwise: nondeterministic kernels")
        _assert_close_training(back, ref, 1e-4, 1e-5)
    else:
        record_property("uninterrupted twice", "bitwise")
        assert_same_training(back, ref)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_sigkill_mid_epoch_on_the_compiled_cpu_path_resumes_bitwise(tmp_path):
    """alexnet on the CPU with `compile: auto` planning enough steps to compile its LRN kernels (1,000 epochs
    of 4 steps; early stopping ends it after a few), SIGKILLed after a mid-epoch checkpoint and resumed: the
    same weights, optimizer state and metrics, bit for bit, as a run never interrupted."""
    from fastzhang.atomicio import SLOW_WRITE_ENV

    args = _synthetic("cpu", "alexnet", 16, 64, checkpoint_every_steps=2, randomization="random_labels")
    args[args.index("--epochs") + 1] = "1000"
    args += ["--early-stop-patience", "1", "--early-stop-min-epochs", "3"]
    steady = _start([*args, "--quiet"], tmp_path / "steady", "steady")
    assert steady.wait(timeout=400) == 0, steady.stderr[-2000:]
    killed = _start(args, tmp_path / "killed", "killed", **{SLOW_WRITE_ENV: "0.2"})
    point = _kill_after_mid_epoch_checkpoint(killed, tmp_path / "killed", timeout=300)
    assert "compile auto: LRN kernels only, 4,000 planned steps repay them" in killed.stderr
    resumed = _start(args, tmp_path / "killed", "resumed")
    assert resumed.wait(timeout=400) == 0, resumed.stderr[-2000:]
    assert point[1] > 0 and _resumed_from(resumed.stderr) == point
    (ref, ref_results), (back, back_results) = _final(tmp_path / "steady"), _final(tmp_path / "killed")
    assert back_results["execution"]["switches"]["compile_kernels"] and back_results["execution"]["fallbacks"] == []
    assert ref_results["metrics"]["early_stop_epoch"] is not None and len(back_results["metrics"]["epochs"]) >= 3
    assert_same_training(back, ref)


@pytest.mark.cuda
@pytest.mark.e2e
@pytest.mark.timeout(240)
@gpu_check_only("test_resume_with_toggled_channels_last_lays_buffers_out_like_parameters")
def test_resume_toggling_channels_last_finishes(tmp_path, device):
    """alexnet in NCHW, SIGKILLed after a mid-epoch checkpoint, resumed in channels_last (CUDA's fused
    SGD refuses momentum buffers whose strides differ from their parameters')."""
    from fastzhang.atomicio import SLOW_WRITE_ENV

    cuda = device.type == "cuda"
    args = _synthetic(device, "alexnet", 64 if cuda else 16, None if cuda else 128, compile="off",
                      checkpoint_every_steps=4 if cuda else 2)
    first = _start([*args, "--channels-last", "off"], tmp_path, "nchw", **{SLOW_WRITE_ENV: "0.3" if cuda else "0.1"})
    point = _kill_after_mid_epoch_checkpoint(first, tmp_path)
    second = _start([*args, "--channels-last", "on"], tmp_path, "channels_last")
    assert second.wait(timeout=200) == 0, second.stderr[-2000:]
    assert _resumed_from(second.stderr) == point
    results = _results(tmp_path)
    assert results["execution"]["switches"]["channels_last"] and results["execution"]["fallbacks"] == []
    assert all(math.isfinite(v) for v in results["metrics"]["train_loss"])


@pytest.mark.cuda
@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_table1_rows_on_the_real_data(tmp_path, device, record_property):
    """GPU_CHECK_DATA (a CIFAR-10 folder): Table 1's rows, the Inception baseline first, as many as fit in
    GPU_CHECK_TABLE1_S seconds (default 480). On the CPU: the MLP 1x512 row, one epoch of 256 images."""
    import os
    import time

    from fastzhang.report.paper import TABLE1

    data = os.environ.get("GPU_CHECK_DATA")
    if not data:
        pytest.skip("GPU_CHECK_DATA is not set")
    recipes = {}
    for path in sorted((REPO / "recipes" / "table1").glob("*.yaml")):
        cfg = ExperimentConfig.from_yaml(path)
        recipes[(cfg.model, cfg.randomization, cfg.random_crop, cfg.weight_decay > 0)] = path
    key = lambda r: (r.model, r.randomization, r.random_crop, r.weight_decay)  # noqa: E731
    rows = sorted(TABLE1, key=lambda r: key(r) != ("inception", "none", False, False))
    cpu = ["--epochs", "1", "--batch-size", "32", "--train-subset", "256", "--device", "cpu"]
    if device.type == "cpu":
        rows = [r for r in rows if r.model == "mlp1"][:1]
    deadline = time.monotonic() + float(os.environ.get("GPU_CHECK_TABLE1_S", "480"))
    last = 0.0
    for index, row in enumerate(rows):
        recipe = recipes[key(row)]  # every row has its recipe
        if time.monotonic() + 1.1 * last > deadline:
            record_property(row.label, f"not run: the last row took {last:.0f} s")
            continue
        started, folder = time.monotonic(), tmp_path / f"row{index:02d}"
        fz = _start(["run", "--config", recipe, "--data-dir", data, "--quiet", *(cpu if device.type == "cpu" else [])],
                    folder, "run")
        assert fz.wait(timeout=max(deadline - time.monotonic(), 30)) == 0, fz.stderr[-2000:]
        m = _results(folder)["metrics"]
        record_property(f"{row.label} crop {row.random_crop} wd {row.weight_decay}",
                        f"train {m['final_train_acc']:.2f}% (paper {row.train}), test {m['final_test_acc']:.2f}% "
                        f"(paper {row.test}, {m['final_test_acc'] - row.paper_test:+.2f})")
        last = time.monotonic() - started
