"""bench/history/trend.png: each benchmark's ratio against its in-run baseline, run after run.

One panel per suite (bench/test_bench_<suite>.py), one line per benchmark and device
type, runs in time order along x, labelled by commit and date; log scale, so a 30%
drop is the same height at 2x as at 14x. Ratios, not images/s: they are what can be
compared across machines (history.py).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a build machine
import matplotlib.pyplot as plt  # noqa: E402

from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from history import RATIO_KEYS, Run, points, short_name  # noqa: E402


def series(runs: list[Run]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """suite -> line label -> [(run index, ratio)], runs oldest first."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for index, run in enumerate(runs):
        for key in run.benchmarks:
            suite = key.split("::", 1)[0].removeprefix("test_bench_").removesuffix(".py")
            test = short_name(key)
            for name, point in points(run, key).items():
                if name[0] == "ratio":
                    label = test + (f" ({name[1]})" if name[1] != RATIO_KEYS[0] else "") + f" [{name[2]}]"
                    out.setdefault(suite, {}).setdefault(label, []).append((index, point.value))
    return out


def draw(runs: list[Run], path: Path) -> None:
    lines = series(runs)
    suites = sorted(lines) or ["(no ratios recorded)"]
    fig, axes = plt.subplots(len(suites), 1, figsize=(11, 3.2 * len(suites)), squeeze=False, sharex=True)
    for ax, suite in zip(axes[:, 0], suites):
        drawn = sorted(lines.get(suite, {}).items())
        for i, (label, values) in enumerate(drawn):
            xs, ys = zip(*values)  # past the ten colours of the cycle, a new dash tells the lines apart
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, linestyle=("-", "--", ":")[i // 10 % 3],
                    label=label)
        ax.set_yscale("log")
        if drawn:  # room for ticks at 1, 2, 5 x 10^k even when every ratio sits near one value
            ys = [y for _, values in drawn for _, y in values]
            ax.set_ylim(min(ys) / 1.6, max(ys) * 1.6)
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("ratio to baseline")
        ax.set_title(f"bench/test_bench_{suite}.py" if suite in lines else suite, fontsize=9, loc="left")
        ax.grid(True, which="both", alpha=0.3)
        if suite in lines:
            ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes[-1, 0].set_xticks(range(len(runs)))
    axes[-1, 0].set_xticklabels([f"{run.commit}\n{run.time[5:16].replace('T', ' ')}" for run in runs],
                                rotation=60, fontsize=6, ha="right")
    fig.suptitle("Benchmark ratios against the in-run baseline, by run (bench/history/)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
