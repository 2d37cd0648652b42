"""Figure 1 (a, b, c), Figure 2 and the demo's curves: PNGs with matplotlib's Agg canvas, plus data tables.

Each section function takes the runs and the output folder and returns the
report's Markdown lines; it writes its PNG only when it has something to draw
and removes a stale one otherwise. Figures are built on `matplotlib.figure.Figure`
with an Agg canvas, never pyplot, so nothing global is touched. A curve or point
stands for a configuration (tables.Group): the mean over its seeds, with a band
(a bar at a point) from their minimum to their maximum when there are two or more.
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
from fastzhang.report.stats import Summary, summarize
from fastzhang.report.tables import (
    NOT_RUN, FinishedRun, Group, config_id, epochs_text, full_cifar, labels_text, markdown_table, pct, pick, spread,
    table1_groups,
)

FIGURE1A = "figure1a.png"
FIGURE1B = "figure1b.png"
FIGURE1C = "figure1c.png"
FIGURE2 = "figure2.png"
DEMO = "demo.png"


def _number(value: Any) -> float:
    """A metric value for plotting: null (NaN or infinity written by orjson) becomes NaN."""
    return float(value) if isinstance(value, (int, float)) else math.nan


def curve(ax, group: Group, key: str, x: str = "steps", hatch: str | None = None, **style):
    """Draw `key` epoch by epoch averaged over the group's runs, against `x` of its longest run (one that
    ended earlier leaves the later epochs to the others), and from two runs on the band from their minimum
    to their maximum (hatched where a shading means something else). Returns (x, mean, band or None)."""
    import numpy as np

    longest = max(group.runs, key=lambda r: len(r.metrics[x]))
    ys = np.full((group.n, len(longest.metrics[x])), np.nan)
    for row, run in zip(ys, group.runs):
        row[:len(run.metrics[key])] = [_number(v) for v in run.metrics[key]]
    with np.errstate(invalid="ignore", divide="ignore"):  # an epoch no run has a number for stays NaN
        mean = np.nansum(ys, axis=0) / (~np.isnan(ys)).sum(axis=0)
    xs = np.array([_number(v) for v in longest.metrics[x]]) / (1000 if x == "steps" else 1)
    color = ax.plot(xs, mean, **style)[0].get_color()
    band = (np.fmin.reduce(ys), np.fmax.reduce(ys)) if group.n > 1 else None
    if band is not None:
        fill = dict(facecolor="none", edgecolor=color, hatch=hatch) if hatch else dict(color=color)
        ax.fill_between(xs, *band, linewidth=0, alpha=0.4 if hatch else 0.15, **fill)
    return xs, mean, band


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


def _image_or_none(path: Path, drawn: bool, name: str) -> list[str]:
    """The figure's Markdown image when it was drawn; else its stale PNG goes and a line says so."""
    if drawn:
        return [f"![{name}]({path.name})", ""]
    path.unlink(missing_ok=True)
    return [f"No {name} run has completed yet.", ""]


# ------------------------------------------------------------------------------------------
# Figure 1a: training loss against steps, one curve per randomization

def figure1a_groups(runs: list[FinishedRun]) -> list[tuple[str, Group | None]]:
    out = []
    for rand, label in FIGURE1A_CURVES:
        def wanted(cfg: ExperimentConfig, rand: str = rand) -> bool:
            return (full_cifar(cfg) and cfg.model == FIGURE1A_MODEL and cfg.randomization == rand
                    and not cfg.random_crop and cfg.weight_decay == 0)
        out.append((label, pick(runs, wanted)))
    return out


def figure1a_section(runs: list[FinishedRun], out_dir: Path) -> list[str]:
    curves = figure1a_groups(runs)
    rows = [[label, NOT_RUN, "—", "—", "—", "—"] if g is None else
            [label, g.who(), g.each(epochs_text), g.each(lambda r: str((r.metrics["steps"] or ["—"])[-1])),
             spread(g.stat(lambda r: (r.metrics["train_loss"] or [None])[-1]), 4),
             spread(g.stat("final_train_acc"))] for label, g in curves]
    path = out_dir / FIGURE1A
    drawn = [(label, g) for label, g in curves if g is not None and any(r.metrics["steps"] for r in g.runs)]
    if drawn:
        fig, ax = _figure()
        for label, g in drawn:
            curve(ax, g, "train_loss", label=label)
        ax.set(xlabel="thousand steps", ylabel="average training loss (per epoch)",
               title="Figure 1a: Inception on CIFAR-10")
        _save(fig, ax, path)
    header = ["Data", "Configuration", "Epochs", "Steps", "Final train loss", "Final train acc"]
    return (["## Figure 1a: Inception's training loss against steps", "",
             *_image_or_none(path, bool(drawn), "Figure 1a")] + markdown_table(header, rows) + [""])


# ------------------------------------------------------------------------------------------
# Figure 1b / 1c: against the label-corruption level p

def corruption_level(cfg: ExperimentConfig) -> float | None:
    """p of a label-corruption run (true labels 0, random labels 1), None for pixel randomizations."""
    return {"none": 0.0, "random_labels": 1.0}.get(
        cfg.randomization, cfg.corrupt_prob if cfg.randomization == "partial" else None)


def _curve_cfg(cfg: ExperimentConfig, model: str) -> bool:
    return (full_cifar(cfg) and cfg.model == model and not cfg.random_crop and cfg.weight_decay == 0
            and corruption_level(cfg) is not None)


def _fitted(threshold: float):
    """A run's steps to fit at `threshold` (None when it never got there)."""
    return lambda run: steps_to_fit(run.metrics, threshold)


def figure1b_points(runs: list[FinishedRun], threshold: float) -> dict[str, list[tuple[float, Group | None]]]:
    """model -> [(p, group)] for the paper's levels plus any other level that has a run."""
    out = {}
    for model in FIGURE1B_MODELS:
        levels = set(CORRUPTION_LEVELS)
        levels |= {round(corruption_level(r.cfg), 6) for r in runs if r.completed and _curve_cfg(r.cfg, model)}
        points = []
        for p in sorted(levels):
            def wanted(cfg: ExperimentConfig, p: float = p, model: str = model) -> bool:
                return _curve_cfg(cfg, model) and math.isclose(corruption_level(cfg), p, abs_tol=1e-9)
            # Any run of the point will do (a Table 1 run too); prefer the one whose runs reached the threshold.
            points.append((p, pick(runs, wanted, ignore=("stop_at_train_acc",),
                                   prefer=lambda g: g.stat(_fitted(threshold)).n)))
        out[model] = points
    return out


def against_p(points, value) -> dict[str, list[tuple[float, Summary]]]:
    """model -> [(p, value over the group's runs)] for the points with a value: what a figure against p draws."""
    return {m: [(p, s) for p, g in pts if g is not None and (s := g.stat(value)).n] for m, pts in points.items()}


def figure1b_series(points, threshold: float) -> dict[str, list[tuple[float, Summary]]]:
    """Figure 1b as drawn: model -> [(p, thousand steps to fit)]."""
    return against_p(points, lambda r: None if (step := _fitted(threshold)(r)) is None else step / 1000)


def _test_error(run: FinishedRun) -> float | None:
    acc = run.metrics["final_test_acc"]
    return 100.0 - acc if isinstance(acc, (int, float)) else None


def _plot_against_p(series, path: Path, ylabel: str, title: str) -> bool:
    if not any(series.values()):
        path.unlink(missing_ok=True)
        return False
    fig, ax = _figure()
    for model, points in series.items():
        if points:
            line = ax.plot([p for p, _ in points], [s.mean for _, s in points], marker="o", label=display_name(model))
            for p, s in points:
                if s.n > 1:
                    ax.vlines(p, s.lo, s.hi, color=line[0].get_color(), linewidth=3, alpha=0.4)
    ax.set(xlabel="label corruption p", ylabel=ylabel, title=title, xlim=(-0.05, 1.05))
    ax.set_ylim(bottom=0)
    _save(fig, ax, path)
    return True


def _fit_text(group: Group, threshold: float) -> str:
    steps = group.stat(_fitted(threshold))
    best = summarize(a for r in group.runs for a in r.metrics["train_acc"]).hi
    missed = (f"{group.n - steps.n} of {group.n} " if steps.n else "") + (
        f"not reached (best {pct(best)}% in {group.each(epochs_text)} epochs)")
    return spread(steps, 0) if steps.n == group.n else f"{spread(steps, 0)}; {missed}" if steps.n else missed


def figure1bc_section(runs: list[FinishedRun], out_dir: Path, threshold: float = FIT_THRESHOLD) -> list[str]:
    points = figure1b_points(runs, threshold)
    has_b = _plot_against_p(figure1b_series(points, threshold), out_dir / FIGURE1B,
                            f"thousand steps to {threshold:g}% train accuracy", "Figure 1b: time to overfit")
    has_c = _plot_against_p(against_p(points, _test_error), out_dir / FIGURE1C, "test error (%)",
                            "Figure 1c: test error after convergence")
    rows = [[display_name(model), f"{p:g}", *([NOT_RUN, "—", "—", "—"] if g is None else [
        g.who(), _fit_text(g, threshold), g.each(epochs_text), spread(g.stat(_test_error))])]
        for model, pts in points.items() for p, g in pts]
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
    header = ["Model", "p", "Configuration", "Steps to fit", "Epochs", "Test error (%)"]
    return lines + markdown_table(header, rows) + [""]


# ------------------------------------------------------------------------------------------
# Figure 2 (CIFAR-10): Inception's test accuracy over training, with and without BatchNorm

def figure2_groups(runs: list[FinishedRun]) -> list[tuple[str, Group | None]]:
    """(curve label, group) for each Table 1 row of Inception with or without BatchNorm on true labels."""
    out = []
    for row, group in table1_groups(runs):
        if row.model in FIGURE2_MODELS and row.randomization == "none":
            regs = [name for name, on in (("random crop", row.random_crop), ("weight decay", row.weight_decay)) if on]
            out.append((f"{display_name(row.model)}, {' + '.join(regs) or 'no regularizer'}", group))
    return out


def _draw_figure2(drawn: list[tuple[int, str, Group]], path: Path) -> None:
    import numpy as np

    fig, ax = _figure()
    for i, label, group in drawn:  # i: the curve's place among all six, so its color never changes
        color = f"C{i}"
        steps, acc, _ = curve(ax, group, "test_acc", hatch="///", color=color, label=label,
                            linestyle="-" if group.cfg.model == "inception" else "--")
        # the running best skips a diverged (NaN) epoch
        ax.fill_between(steps, acc, np.fmax.accumulate(acc), color=color, alpha=0.2, linewidth=0)
    ax.set(xlabel="thousand steps", ylabel="test accuracy (%)",
           title="Figure 2: Inception on CIFAR-10, with and without BatchNorm")
    _save(fig, ax, path, legend="lower right")


def _best_gain(run: FinishedRun) -> float | None:
    m = run.metrics
    numbers = all(isinstance(m[k], (int, float)) for k in ("best_test_acc", "final_test_acc"))
    return m["best_test_acc"] - m["final_test_acc"] if numbers else None


def figure2_section(runs: list[FinishedRun], out_dir: Path) -> list[str]:
    curves = figure2_groups(runs)
    rows = [[label, NOT_RUN, "—", "—", "—", "—"] if g is None else
            [label, g.who(), g.each(epochs_text), spread(g.stat("final_test_acc")), spread(g.stat("best_test_acc")),
             spread(g.stat(_best_gain))] for label, g in curves]
    lines = ["## Figure 2: Inception's test accuracy over training (CIFAR-10)", "",
             "The Table 1 runs of Inception with BatchNorm (solid) and without (dashed) on true labels: test "
             "accuracy after each epoch against steps, the mean over seeds (hatched: their min–max). The shading "
             "reaches up to the cumulative best test accuracy, what early stopping could have kept.", ""]
    path = out_dir / FIGURE2
    drawn = [(i, label, g) for i, (label, g) in enumerate(curves)
             if g is not None and any(r.metrics["steps"] for r in g.runs)]
    if drawn:
        _draw_figure2(drawn, path)
    lines += _image_or_none(path, bool(drawn), "Figure 2")
    header = ["Curve", "Configuration", "Epochs", "Final test acc", "Best test acc", "Best − final"]
    return lines + markdown_table(header, rows) + [""]


# ------------------------------------------------------------------------------------------
# Demo: train and test accuracy per epoch

def demo_figure(groups: list[Group], out_dir: Path) -> str | None:
    """One color per configuration (up to 10 stay distinct), solid train and dashed test accuracy; the legend
    beside the axes names each by what sets it apart from the others."""
    path = out_dir / DEMO
    drawn = [g for g in groups if any(r.metrics["epochs"] for r in g.runs)]
    if not drawn:
        path.unlink(missing_ok=True)
        return None
    fig, ax = _figure()
    for i, (group, name) in enumerate(zip(drawn, demo_labels([g.cfg for g in drawn]))):
        curve(ax, group, "train_acc", x="epochs", color=f"C{i % 10}", label=name)
        curve(ax, group, "test_acc", x="epochs", color=f"C{i % 10}", linestyle="--")
    ax.plot([], [], color="black", label="train (solid)")
    ax.plot([], [], color="black", linestyle="--", label="test (dashed)")
    if any(g.n > 1 for g in drawn):
        ax.fill_between([], [], color="gray", alpha=0.3, label="min–max over seeds")
    ax.axhline(CHANCE_ACC, color="gray", linewidth=0.8, linestyle=":", label="chance")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 101), title="Demo: memorizing random labels")
    ax.grid(True, alpha=0.3)
    # beside the axes, not over the curves; bbox_inches="tight" widens the image to hold it (no tight_layout)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small", frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return DEMO


def demo_labels(configs: list[ExperimentConfig]) -> list[str]:
    """Each configuration's label: its labels, plus the model, subset, weight decay, crops or epochs where they
    differ; its configuration ID where even those leave two alike."""
    parts = [lambda c: display_name(c.model), lambda c: f"{c.train_subset} images",
             lambda c: f"wd {c.weight_decay:g}", lambda c: "crops" if c.random_crop else "no crops",
             lambda c: f"{c.epochs} epochs"]
    varying = [part for part in parts if len({part(c) for c in configs}) > 1]
    names = [", ".join([labels_text(c)] + [part(c) for part in varying]) for c in configs]
    return [n if names.count(n) == 1 else config_id(c) for n, c in zip(names, configs)]
