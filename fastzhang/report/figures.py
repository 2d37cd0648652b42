"""Figure 1 (a, b, c), Figure 2 and the demo's curves: PNGs with matplotlib's Agg canvas, plus data tables.

Each section function takes the runs and the output folder and returns the
report's Markdown lines; it writes its PNG only when it has something to draw
and removes a stale one otherwise. Figures are built on `matplotlib.figure.Figure`
with an Agg canvas, never pyplot, so nothing global is touched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastzhang.config import ExperimentConfig
from fastzhang.models.registry import display_name
from fastzhang.report.fit import FIT_THRESHOLD, steps_to_fit
from fastzhang.report.paper import (
    CHANCE_ACC, CORRUPTION_LEVELS, FIGURE1A_CURVES, FIGURE1A_MODEL, FIGURE1B_MODELS, FIGURE2_MODELS,
)
from fastzhang.report.tables import (
    NOT_RUN, FinishedRun, epochs_text, full_cifar, labels_text, markdown_table, pct, pick, table1_runs,
)

FIGURE1A = "figure1a.png"
FIGURE1B = "figure1b.png"
FIGURE1C = "figure1c.png"
FIGURE2 = "figure2.png"
DEMO = "demo.png"


def _number(value: Any) -> float:
    """A metric value for plotting: null (NaN or infinity written by orjson) becomes NaN."""
    return float(value) if isinstance(value, (int, float)) else math.nan


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, ax, path: Path, legend: str = "best") -> None:
    ax.grid(True, alpha=0.3)
    ax.legend(loc=legend, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _drop(path: Path) -> None:
    path.unlink(missing_ok=True)


def _image_or_none(path: Path, drawn: bool, name: str) -> list[str]:
    """The figure's Markdown image when it was drawn; else its stale PNG goes and a line says so."""
    if drawn:
        return [f"![{name}]({path.name})", ""]
    _drop(path)
    return [f"No {name} run has completed yet.", ""]


# ------------------------------------------------------------------------------------------
# Figure 1a: training loss against steps, one curve per randomization

def figure1a_runs(runs: list[FinishedRun]) -> list[tuple[str, str, FinishedRun | None]]:
    out = []
    for rand, label in FIGURE1A_CURVES:
        def wanted(cfg: ExperimentConfig, rand: str = rand) -> bool:
            return (full_cifar(cfg) and cfg.model == FIGURE1A_MODEL and cfg.randomization == rand
                    and not cfg.random_crop and cfg.weight_decay == 0)
        out.append((rand, label, pick(runs, wanted)))
    return out


def figure1a_section(runs: list[FinishedRun], out_dir: Path) -> list[str]:
    curves = figure1a_runs(runs)
    rows = []
    for _, label, run in curves:
        if run is None:
            rows.append([label, NOT_RUN, "—", "—", "—", "—"])
            continue
        m = run.metrics
        last_loss = m["train_loss"][-1] if m["train_loss"] else None
        last_step = str(m["steps"][-1]) if m["steps"] else "—"
        rows.append([label, f"`{run.experiment_id}`", epochs_text(run), last_step,
                     f"{last_loss:.4f}" if isinstance(last_loss, (int, float)) else "n/a",
                     pct(m["final_train_acc"])])
    lines = ["## Figure 1a: Inception's training loss against steps", ""]
    path = out_dir / FIGURE1A
    drawn = [(label, run) for _, label, run in curves if run is not None and run.metrics["steps"]]
    if drawn:
        fig, ax = _figure()
        for label, run in drawn:
            steps = [_number(s) / 1000 for s in run.metrics["steps"]]
            ax.plot(steps, [_number(v) for v in run.metrics["train_loss"]], label=label)
        ax.set(xlabel="thousand steps", ylabel="average training loss (per epoch)",
               title="Figure 1a: Inception on CIFAR-10")
        _save(fig, ax, path)
    lines += _image_or_none(path, bool(drawn), "Figure 1a")
    header = ["Data", "Experiment", "Epochs", "Steps", "Final train loss", "Final train acc"]
    return lines + markdown_table(header, rows) + [""]


# ------------------------------------------------------------------------------------------
# Figure 1b / 1c: against the label-corruption level p

def corruption_level(cfg: ExperimentConfig) -> float | None:
    """p of a label-corruption run (true labels 0, random labels 1), None for pixel randomizations."""
    return {"none": 0.0, "random_labels": 1.0}.get(
        cfg.randomization, cfg.corrupt_prob if cfg.randomization == "partial" else None)


def _curve_cfg(cfg: ExperimentConfig, model: str) -> bool:
    return (full_cifar(cfg) and cfg.model == model and not cfg.random_crop and cfg.weight_decay == 0
            and corruption_level(cfg) is not None)


def figure1b_points(runs: list[FinishedRun], threshold: float) -> dict[str, list[tuple[float, FinishedRun | None]]]:
    """model -> [(p, run)] for the paper's levels plus any other level that has a run."""
    out = {}
    for model in FIGURE1B_MODELS:
        levels = set(CORRUPTION_LEVELS)
        levels |= {round(corruption_level(r.cfg), 6) for r in runs if r.completed and _curve_cfg(r.cfg, model)}
        points = []
        for p in sorted(levels):
            def wanted(cfg: ExperimentConfig, p: float = p, model: str = model) -> bool:
                return _curve_cfg(cfg, model) and math.isclose(corruption_level(cfg), p, abs_tol=1e-9)
            # Any run of the point will do (a Table 1 run too); prefer one that reached the threshold.
            points.append((p, pick(runs, wanted, ignore=("stop_at_train_acc",),
                                   prefer=lambda r: steps_to_fit(r.metrics, threshold) is not None)))
        out[model] = points
    return out


def against_p(points, value) -> dict[str, list[tuple[float, float]]]:
    """model -> [(p, value(run))] for the points whose run has a value: what a figure against p draws."""
    return {m: [(p, v) for p, r in pts if r is not None and (v := value(r)) is not None]
            for m, pts in points.items()}


def figure1b_series(points, threshold: float) -> dict[str, list[tuple[float, float]]]:
    """Figure 1b as drawn: model -> [(p, thousand steps to fit)]."""
    def thousands(run: FinishedRun) -> float | None:
        step = steps_to_fit(run.metrics, threshold)
        return step / 1000 if step is not None else None
    return against_p(points, thousands)


def _plot_against_p(series, path: Path, ylabel: str, title: str) -> bool:
    if not any(series.values()):
        _drop(path)
        return False
    fig, ax = _figure()
    for model, xy in series.items():
        if xy:
            ax.plot([p for p, _ in xy], [v for _, v in xy], marker="o", label=display_name(model))
    ax.set(xlabel="label corruption p", ylabel=ylabel, title=title, xlim=(-0.05, 1.05))
    ax.set_ylim(bottom=0)
    _save(fig, ax, path)
    return True


def _fit_text(run: FinishedRun, threshold: float) -> str:
    step = steps_to_fit(run.metrics, threshold)
    if step is not None:
        return str(step)
    accs = [a for a in run.metrics["train_acc"] if isinstance(a, (int, float)) and a == a]
    best = f"best {max(accs):.2f}%" if accs else "no train accuracy"
    return f"not reached ({best} in {run.epochs} epochs)"


def figure1bc_section(runs: list[FinishedRun], out_dir: Path, threshold: float = FIT_THRESHOLD) -> list[str]:
    points = figure1b_points(runs, threshold)
    test_err = lambda r: (100.0 - r.metrics["final_test_acc"]  # noqa: E731
                          if isinstance(r.metrics["final_test_acc"], (int, float)) else None)
    has_b = _plot_against_p(figure1b_series(points, threshold), out_dir / FIGURE1B,
                            f"thousand steps to {threshold:g}% train accuracy", "Figure 1b: time to overfit")
    has_c = _plot_against_p(against_p(points, test_err), out_dir / FIGURE1C, "test error (%)",
                            "Figure 1c: test error after convergence")
    rows = []
    for model, pts in points.items():
        for p, run in pts:
            if run is None:
                rows.append([display_name(model), f"{p:g}", NOT_RUN, "—", "—", "—"])
            else:
                err = test_err(run)
                rows.append([display_name(model), f"{p:g}", f"`{run.experiment_id}`", _fit_text(run, threshold),
                             epochs_text(run), f"{err:.2f}" if err is not None else "n/a"])
    lines = ["## Figure 1b and 1c: label corruption p", "",
             f"Steps to fit: the optimizer steps up to the end of the first epoch whose training accuracy "
             f"reaches T = {threshold:g}% (`fastzhang report --fit-threshold T`; the paper's 100% is out of "
             "MLP 1x512's reach in 100 epochs), and the test error after the last epoch. Inception, AlexNet "
             "and MLP 1x512, no regularization; p = 0 is the true data set, p = 1 random labels (chance error "
             f"{100 - CHANCE_ACC:g}%). A run that stopped at a lower train accuracy cannot show a higher T.", ""]
    lines += ([f"![Figure 1b: steps to {threshold:g}% train accuracy]({FIGURE1B})", "",
               f"*Figure 1b: thousand steps until an epoch's training accuracy reaches T = {threshold:g}%.*", ""]
              if has_b else [f"No run has reached {threshold:g}% train accuracy yet.", ""])
    lines += [f"![Figure 1c]({FIGURE1C})", ""] if has_c else ["No Figure 1c run has completed yet.", ""]
    header = ["Model", "p", "Experiment", "Steps to fit", "Epochs", "Test error (%)"]
    return lines + markdown_table(header, rows) + [""]


# ------------------------------------------------------------------------------------------
# Figure 2 (CIFAR-10): Inception's test accuracy over training, with and without BatchNorm

def figure2_runs(runs: list[FinishedRun]) -> list[tuple[str, FinishedRun | None]]:
    """(curve label, run) for each Table 1 row of Inception with or without BatchNorm on true labels."""
    out = []
    for row, run in table1_runs(runs):
        if row.model in FIGURE2_MODELS and row.randomization == "none":
            regs = [name for name, on in (("random crop", row.random_crop), ("weight decay", row.weight_decay)) if on]
            out.append((f"{display_name(row.model)}, {' + '.join(regs) or 'no regularizer'}", run))
    return out


def _draw_figure2(drawn: list[tuple[int, str, FinishedRun]], path: Path) -> None:
    import numpy as np

    fig, ax = _figure()
    for i, label, run in drawn:  # i: the curve's place among all six, so its color never changes
        steps = np.array([_number(s) / 1000 for s in run.metrics["steps"]])
        acc = np.array([_number(v) for v in run.metrics["test_acc"]])
        best = np.fmax.accumulate(acc)  # the running best skips a diverged (NaN) epoch
        color = f"C{i}"
        ax.plot(steps, acc, color=color, linestyle="-" if run.cfg.model == "inception" else "--", label=label)
        ax.fill_between(steps, acc, best, color=color, alpha=0.2, linewidth=0)
    ax.set(xlabel="thousand steps", ylabel="test accuracy (%)",
           title="Figure 2: Inception on CIFAR-10, with and without BatchNorm")
    _save(fig, ax, path, legend="lower right")


def figure2_section(runs: list[FinishedRun], out_dir: Path) -> list[str]:
    curves = figure2_runs(runs)
    rows = []
    for label, run in curves:
        if run is None:
            rows.append([label, NOT_RUN, "—", "—", "—", "—"])
            continue
        m = run.metrics
        gain = m["best_test_acc"] - m["final_test_acc"] if all(
            isinstance(m[k], (int, float)) for k in ("best_test_acc", "final_test_acc")) else None
        rows.append([label, f"`{run.experiment_id}`", epochs_text(run), pct(m["final_test_acc"]),
                     pct(m["best_test_acc"]), pct(gain)])
    lines = ["## Figure 2: Inception's test accuracy over training (CIFAR-10)", "",
             "The Table 1 runs of Inception with BatchNorm (solid) and without (dashed) on true labels: test "
             "accuracy after each epoch against steps. The shading reaches up to the cumulative best test "
             "accuracy, what early stopping could have kept.", ""]
    path = out_dir / FIGURE2
    drawn = [(i, label, run) for i, (label, run) in enumerate(curves) if run is not None and run.metrics["steps"]]
    if drawn:
        _draw_figure2(drawn, path)
    lines += _image_or_none(path, bool(drawn), "Figure 2")
    header = ["Curve", "Experiment", "Epochs", "Final test acc", "Best test acc", "Best − final"]
    return lines + markdown_table(header, rows) + [""]


# ------------------------------------------------------------------------------------------
# Demo: train and test accuracy per epoch

def demo_figure(runs: list[FinishedRun], out_dir: Path) -> str | None:
    """One color per run (up to 10 stay distinct), solid train and dashed test accuracy; the legend
    beside the axes names each run by what sets it apart from the others."""
    path = out_dir / DEMO
    drawn = [r for r in runs if r.metrics["epochs"]]
    if not drawn:
        _drop(path)
        return None
    fig, ax = _figure()
    for i, (run, name) in enumerate(zip(drawn, demo_labels([r.cfg for r in drawn]))):
        epochs = [_number(e) for e in run.metrics["epochs"]]
        ax.plot(epochs, [_number(v) for v in run.metrics["train_acc"]], color=f"C{i % 10}", label=name)
        ax.plot(epochs, [_number(v) for v in run.metrics["test_acc"]], color=f"C{i % 10}", linestyle="--")
    ax.plot([], [], color="black", label="train (solid)")
    ax.plot([], [], color="black", linestyle="--", label="test (dashed)")
    ax.axhline(CHANCE_ACC, color="gray", linewidth=0.8, linestyle=":", label="chance")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 101), title="Demo: memorizing random labels")
    ax.grid(True, alpha=0.3)
    # beside the axes, not over the curves; bbox_inches="tight" widens the image to hold it (no tight_layout)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small", frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return DEMO


def demo_labels(configs: list[ExperimentConfig]) -> list[str]:
    """Each run's label: its labels, plus the model, subset, seed, weight decay, crops or epochs where the
    runs differ in them; its experiment ID where even those leave two alike."""
    parts = [lambda c: display_name(c.model), lambda c: f"{c.train_subset} images", lambda c: f"seed {c.seed}",
             lambda c: f"wd {c.weight_decay:g}", lambda c: "crops" if c.random_crop else "no crops",
             lambda c: f"{c.epochs} epochs"]
    varying = [part for part in parts if len({part(c) for c in configs}) > 1]
    names = [", ".join([labels_text(c)] + [part(c) for part in varying]) for c in configs]
    return [n if names.count(n) == 1 else c.experiment_id for n, c in zip(names, configs)]
