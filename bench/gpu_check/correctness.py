"""Stage C: the fast path computes what the plain path computes.

1. CUDA graphs against eager, fp32, for mlp1, alexnet and inception: engine.train over
   2 epochs of the synthetic set (1,024 images in batches of 100: the last holds 24),
   random crops, the lr decayed in between, evaluation and metrics included; cuDNN
   deterministic, so replay and launch run the same kernels. Both runs are built alike
   (fused SGD, lr in a device tensor), so the only difference is replaying. Tolerance
   as tests/test_fastpath.py: rtol 1e-5, atol 1e-6.
2. compile + AMP with graphs against without, alexnet in channels_last (mlp1 under
   compile and graphs is stage D's): rtol 1e-4, atol 1e-5. A silent fallback (capture,
   compile or the Triton loader failed) fails the row, here and in 1.
3. channels_last toggled at a resume: `fastzhang run` of alexnet in NCHW, SIGKILLed
   after a mid-epoch checkpoint, resumed with --channels-last on (CUDA fused SGD refuses
   momentum buffers whose strides differ from their parameters').
4. Injected failures (FASTZHANG_TEST_FAIL=capture / compile): the run finishes with one
   warning, records the fallback in its results' `execution`, and equals the run made
   without that switch.
The dry run does all of it on the CPU: no graphs there (1 compares eager with eager,
the capture failure has nothing to fail), no compile in 2.
"""

from __future__ import annotations

import dataclasses

from gpu_check import compare, fz
from gpu_check.context import FAIL, verdict

SIZES = {"gpu": {"n": 1024, "m": 256, "batch": 100}, "dry": {"n": 24, "m": 8, "batch": 16}}
FP32_TOL = {"rtol": 1e-5, "atol": 1e-6}
COMPILED_TOL = {"rtol": 1e-4, "atol": 1e-5}
# `fastzhang run` sizes: (train subset or None, batch, checkpoint every k steps, slow-write seconds)
TOGGLE = {"gpu": (None, 64, 4, "0.3"), "dry": (128, 16, 2, "0.1")}
FALLBACK = {"gpu": (None, 100), "dry": (256, 32)}


def run(ctx, report) -> None:
    import torch

    from fastzhang.train.fastpath import Speed

    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    size = SIZES["dry" if ctx.dry else "gpu"]
    fp32 = Speed(amp=False, compile=False, cuda_graphs=False, channels_last=False)
    for model in ("mlp1", "alexnet", "inception"):
        report.attempt(f"graphs vs eager: {model} fp32", _graphs_vs_eager, ctx, model, fp32, FP32_TOL, size)
    speed = Speed(amp=True, compile=not ctx.dry, cuda_graphs=False, channels_last=True)
    report.attempt(f"graphs vs no graphs: alexnet {'AMP' if ctx.dry else 'compile+AMP'}, channels_last",
                   _graphs_vs_eager, ctx, "alexnet", speed, COMPILED_TOL, size)
    report.attempt("resume toggling channels_last: alexnet", _layout_toggle, ctx)
    try:
        runs = _fallback_runs(ctx)
    except AssertionError as e:
        report.add("injected failures", FAIL, "a run failed", str(e))
        return
    for name, switch in (("capture", "cuda_graphs"), ("compile", "compile")):
        report.attempt(f"injected {name} failure", _fallback_row, ctx, runs, name, switch)


def _engine_run(ctx, model: str, speed, size: dict):
    """engine.train, 2 epochs on the synthetic set; (checkpoint payload, fallbacks). Built as for graphs."""
    import torch

    from fastzhang.config import ExperimentConfig
    from fastzhang.data.batches import ResidentData
    from fastzhang.data.synthetic import make_synthetic
    from fastzhang.train import engine, state
    from fastzhang.train.loaders import make_loader

    device = torch.device(ctx.device)
    cfg = ExperimentConfig.from_mapping({"model": model, "dataset": "synthetic", "device": ctx.device, "epochs": 2,
                                         "batch_size": size["batch"], "random_crop": True})
    data = ResidentData.build(make_synthetic(size["n"], size["m"]), randomization="none", corrupt_prob=0.0, seed=0,
                              train_subset=None, device=device)
    loader = make_loader("auto", data, size["batch"], dtype=speed.input_dtype, channels_last=speed.channels_last)
    run = engine.build_run(cfg, device, dataclasses.replace(speed, cuda_graphs=True))  # lr tensor either way
    fallbacks = [f"loader: {loader.fallback}"] if loader.fallback else []
    hooks = engine.Hooks(save=lambda mid_epoch: None, quiet=True,
                         on_fallback=lambda switch, reason: fallbacks.append(f"{switch}: {reason}"))
    if not engine.train(cfg, run, data, loader, speed, hooks):
        raise AssertionError("engine.train stopped early")
    return state.to_payload(run, cfg, data.fingerprint), fallbacks


def _graphs_vs_eager(ctx, model: str, speed, tol: dict, size: dict):
    graphs = not ctx.dry
    (plain, fell0), (captured, fell1) = (_engine_run(ctx, model, dataclasses.replace(speed, cuda_graphs=g), size)
                                         for g in (False, graphs))
    diff = compare.trainings(captured, plain, **tol)
    lr = captured["all_metrics"]["lr"]
    ok = diff["close"] and not (fell0 or fell1) and lr[1] < lr[0]
    last = size["n"] % size["batch"] or size["batch"]
    detail = f"2 epochs, last batch {last}, lr {lr[0]:.4g} -> {lr[1]:.4g}"
    detail += "; dry run: eager both times (no CUDA graphs on the CPU)" if ctx.dry else ""
    detail += f"; FELL BACK: {fell0 + fell1}" if fell0 or fell1 else ""
    return verdict(ok), compare.describe(diff), detail, compare.numbers(diff)



def _layout_toggle(ctx):
    from fastzhang.atomicio import SLOW_WRITE_ENV

    subset, batch, every, slow = TOGGLE["dry" if ctx.dry else "gpu"]
    folder = ctx.work / "layout-toggle"
    args = fz.synthetic_run(ctx, "alexnet", epochs=2, batch=batch, subset=subset, compile="off",
                            checkpoint_every_steps=every)
    first = fz.start(ctx, [*args, "--channels-last", "off"], folder, "nchw", **{SLOW_WRITE_ENV: slow})
    point = fz.kill_after_mid_epoch_checkpoint(first, folder, timeout=ctx.left() - fz.RESUME_S)
    second = fz.start(ctx, [*args, "--channels-last", "on"], folder, "channels_last")
    fz.finish(second, ctx.left() - 5)
    results = fz.results_of(folder)
    execution = results["execution"]
    losses = results["metrics"]["train_loss"]
    resumed = fz.resumed_from(second.stderr)
    ok = resumed == point and execution["switches"]["channels_last"] and not execution["fallbacks"] \
        and all(v is not None and v == v for v in losses)
    return verdict(ok), f"resumed at epoch {point[0]} step {point[1]} in channels_last, finished", \
        f"train loss {losses[0]:.3f} -> {losses[-1]:.3f}; execution {execution['switches']}", \
        {"resumed_at": point, "announced": resumed, "execution": execution}


def _fallback_runs(ctx) -> dict:
    """Three mlp1 runs side by side: plain, with an injected capture failure, with an injected compile failure."""
    from fastzhang.train.fastpath import FAIL_ENV

    subset, batch = FALLBACK["dry" if ctx.dry else "gpu"]
    base = fz.synthetic_run(ctx, "mlp1", epochs=2, batch=batch, subset=subset)
    cases = {"reference": ({}, ["--compile", "off", "--cuda-graphs", "off"]),
             "capture": ({FAIL_ENV: "capture"}, ["--compile", "off"]),
             "compile": ({FAIL_ENV: "compile"}, ["--compile", "on", "--cuda-graphs", "off"])}
    procs = {name: fz.start(ctx, base + flags, ctx.work / f"fallback-{name}", name, **env)
             for name, (env, flags) in cases.items()}
    for proc in procs.values():
        fz.finish(proc, ctx.left() - 5)
    return {name: (proc, *fz.outputs(ctx.work / f"fallback-{name}")) for name, proc in procs.items()}


def _fallback_row(ctx, runs: dict, name: str, switch: str):
    proc, ckpt, results = runs[name]
    _, ref_ckpt, _ = runs["reference"]
    execution = results["execution"]
    expected = [] if switch == "cuda_graphs" and ctx.dry else [switch]  # no capture on the CPU
    fell = [f["switch"] for f in execution["fallbacks"]]
    warnings = fz.fallback_warnings(proc.stderr, switch)
    diff = compare.trainings(ckpt, ref_ckpt, **FP32_TOL)
    ok = fell == expected and warnings == len(expected) and not execution["switches"][switch] and diff["close"]
    value = f"fell back {fell or 'nowhere'}, {warnings} warning(s); against the run without {switch}: " \
        + compare.describe(diff)
    reason = "; ".join(f["reason"] for f in execution["fallbacks"])
    return verdict(ok), value, reason or "dry run: graphs are off on the CPU, nothing to fail", \
        {**compare.numbers(diff), "fallbacks": execution["fallbacks"], "warnings": warnings}
