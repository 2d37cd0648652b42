"""Figure 1 (a, b, c) and the demo's curves: PNGs with matplotlib's Agg canvas, plus data tables.

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
from fastzhang.report.paper import CHANCE_ACC, CORRUPTION_LEVELS, FIGURE1A_CURVES, FIGURE1A_MODEL, FIGURE1B_MODELS
from fastzhang.report.tables import (
    NOT_RUN, FinishedRun, epochs_text, full_cifar, labels_text, markdown_table, pct, pick,
)

FIGURE1A = "figure1a.png"
FIGURE1B = "figure1b.png"
FIGURE1C = "figure1c.png"
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
        lines += [f"![Figure 1a]({FIGURE1A})", ""]
    else:
        _drop(path)
        lines += ["No Figure 1a run has completed yet.", ""]
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


def figure1b_points(runs: list[FinishedRun]) -> dict[str, list[tuple[float, FinishedRun | None]]]:
    """model -> [(p, run)] for the paper's levels plus any other level that has a run."""
    out = {}
    for model in FIGURE1B_MODELS:
        levels = set(CORRUPTION_LEVELS)
        levels |= {round(corruption_level(r.cfg), 6) for r in runs if r.completed and _curve_cfg(r.cfg, model)}
        points = []
        for p in sorted(levels):
            def wanted(cfg: ExperimentConfig, p: float = p, model: str = model) -> bool:
                return _curve_cfg(cfg, model) and math.isclose(corruption_level(cfg), p, abs_tol=1e-9)
            # Only runs with a stop threshold record the step they fit at; prefer those.
            points.append((p, pick(runs, wanted, ignore=("stop_at_train_acc",),
                                   prefer=lambda r: r.metrics["fit_step"] is not None)))
        out[model] = points
    return out


def _plot_against_p(points, value, path: Path, ylabel: str, title: str) -> bool:
    series = {m: [(p, value(r)) for p, r in pts if r is not None and value(r) is not None]
              for m, pts in points.items()}
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


def _fit_text(run: FinishedRun) -> str:
    fit = run.metrics["fit_step"]
    if fit is not None:
        return str(fit)
    stop = run.cfg.stop_at_train_acc
    return f"not reached in {run.epochs} epochs" if stop is not None else "not recorded (no stop_at_train_acc)"


def figure1bc_section(runs: list[FinishedRun], out_dir: Path) -> list[str]:
    points = figure1b_points(runs)
    fit_k = lambda r: r.metrics["fit_step"] / 1000 if r.metrics["fit_step"] is not None else None  # noqa: E731
    test_err = lambda r: (100.0 - r.metrics["final_test_acc"]  # noqa: E731
                          if isinstance(r.metrics["final_test_acc"], (int, float)) else None)
    has_b = _plot_against_p(points, fit_k, out_dir / FIGURE1B, "thousand steps to 100% train accuracy",
                            "Figure 1b: time to overfit")
    has_c = _plot_against_p(points, test_err, out_dir / FIGURE1C, "test error (%)",
                            "Figure 1c: test error after convergence")
    rows = []
    for model, pts in points.items():
        for p, run in pts:
            if run is None:
                rows.append([display_name(model), f"{p:g}", NOT_RUN, "—", "—", "—"])
            else:
                err = test_err(run)
                rows.append([display_name(model), f"{p:g}", f"`{run.experiment_id}`", _fit_text(run),
                             epochs_text(run), f"{err:.2f}" if err is not None else "n/a"])
    lines = ["## Figure 1b and 1c: label corruption p", "",
             "Steps until the training accuracy of an epoch reaches the run's stop_at_train_acc (the recipes: "
             "100%), and the test error after the last epoch. Inception, AlexNet and MLP 1x512, no "
             f"regularization; p = 0 is the true data set, p = 1 random labels (chance error {100 - CHANCE_ACC:g}%).",
             ""]
    lines += [f"![Figure 1b]({FIGURE1B})", ""] if has_b else ["No run has recorded its fit step yet.", ""]
    lines += [f"![Figure 1c]({FIGURE1C})", ""] if has_c else ["No Figure 1c run has completed yet.", ""]
    header = ["Model", "p", "Experiment", "Steps to fit", "Epochs", "Test error (%)"]
    return lines + markdown_table(header, rows) + [""]


# ------------------------------------------------------------------------------------------
# Demo: train and test accuracy per epoch

def demo_figure(runs: list[FinishedRun], out_dir: Path) -> str | None:
    path = out_dir / DEMO
    drawn = [r for r in runs if r.metrics["epochs"]]
    if not drawn:
        _drop(path)
        return None
    fig, ax = _figure()
    for i, run in enumerate(drawn):
        color = f"C{i}"
        name = labels_text(run.cfg)
        epochs = [_number(e) for e in run.metrics["epochs"]]
        ax.plot(epochs, [_number(v) for v in run.metrics["train_acc"]], color=color, label=f"{name}: train")
        ax.plot(epochs, [_number(v) for v in run.metrics["test_acc"]], color=color, linestyle="--",
                label=f"{name}: test")
    ax.axhline(CHANCE_ACC, color="gray", linewidth=0.8, linestyle=":", label="chance")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 101), title="Demo: memorizing random labels")
    _save(fig, ax, path, legend="center right")  # the curves fill the top and bottom
    return DEMO
