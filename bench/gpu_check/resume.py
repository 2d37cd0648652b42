"""Stage D: resumption on the device, and which equality holds there.

Three `fastzhang run` processes of one short mlp1 experiment (random labels, so every
step moves the weights; `auto` switches: on the GPU bf16, compile and CUDA graphs), two
of them side by side from the start:
- uninterrupted twice: says whether two identical runs agree bitwise on this device
  (they do when every kernel is deterministic for fixed shapes and switches);
- killed: SIGKILLed as soon as a mid-epoch checkpoint exists (FASTZHANG_TEST_SLOW_WRITE
  slows its writes, so the kill lands mid-epoch), then resumed to the end.
The resumed run against the uninterrupted one: bitwise is the claim; within a tolerance
is acceptable only when the two uninterrupted runs differ by as much (the kernels, not
the resume, decide); a resumed run that differs while the uninterrupted ones agree
means the resume lost or changed something.
"""

from __future__ import annotations

from gpu_check import compare, fz
from gpu_check.context import FAIL, verdict

# (train subset, batch, checkpoint every k steps, seconds each write sleeps in the killed run)
SIZES = {"gpu": (None, 100, 3, "0.3"), "dry": (256, 16, 4, "0.1")}
TOL = {"rtol": 1e-4, "atol": 1e-5}


def run(ctx, report) -> None:
    from fastzhang.atomicio import SLOW_WRITE_ENV

    subset, batch, every, slow = SIZES["dry" if ctx.dry else "gpu"]
    args = fz.synthetic_run(ctx, "mlp1", epochs=2, batch=batch, subset=subset, randomization="random_labels",
                            checkpoint_every_steps=every)
    folders = {name: ctx.work / name for name in ("uninterrupted-1", "uninterrupted-2", "killed")}
    steady = [fz.start(ctx, [*args, "--quiet"], folders[name], name) for name in ("uninterrupted-1", "uninterrupted-2")]
    killed = fz.start(ctx, args, folders["killed"], "killed", **{SLOW_WRITE_ENV: slow})
    try:
        point = fz.kill_after_mid_epoch_checkpoint(killed, folders["killed"], timeout=ctx.left() - fz.RESUME_S)
        resumed = fz.start(ctx, args, folders["killed"], "resumed")
        for proc in (*steady, resumed):
            fz.finish(proc, ctx.left() - 5)
    except AssertionError as e:
        report.add("runs", FAIL, "a run failed", str(e))
        return
    announced = fz.resumed_from(resumed.stderr)
    report.add("SIGKILL after a mid-epoch checkpoint", verdict(announced == point and point[1] > 0),
               f"killed with epoch {point[0]} step {point[1]} on disk; resumed from epoch {announced[0]} step "
               f"{announced[1]}" if announced else "the resumed run did not say where it resumed",
               f"checkpoint every {every} steps, writes slowed by {slow} s", point=point, announced=announced)
    (ref, _), (twin, _), (back, _) = (fz.outputs(folders[name]) for name in folders)
    report.attempt("uninterrupted twice", _twice, ref, twin)
    report.attempt("resumed against uninterrupted", _resumed, ref, twin, back)


def _twice(ref: dict, twin: dict):
    diff = compare.trainings(twin, ref, **TOL)
    why = "deterministic kernels: same device, shapes and switches give the same bits" if diff["bitwise"] else \
        "nondeterministic kernels on this device (atomics in a reduction or an algorithm choice)"
    return verdict(diff["close"]), compare.describe(diff), why, compare.numbers(diff)


def _resumed(ref: dict, twin: dict, back: dict):
    diff = compare.trainings(back, ref, **TOL)
    twins = compare.trainings(twin, ref, **TOL)
    if diff["bitwise"]:
        why = "bitwise: the checkpoint restores weights, momentum, lr, RNG and the partial epoch's sums exactly"
    elif twins["bitwise"]:
        why = "uninterrupted runs agree bitwise but the resumed one does not: the resume changed something"
    else:
        why = "within tolerance, as two uninterrupted runs are: the kernels, not the resume, set the bits"
    ok = diff["bitwise"] or (diff["close"] and not twins["bitwise"])
    return verdict(ok), compare.describe(diff), why, compare.numbers(diff)

