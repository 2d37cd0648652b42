"""`make bench-compare`: the latest benchmark run against the earlier ones in bench/history/, and their trend.

    python bench/history.py [--history bench/history] [--figure bench/history/trend.png] [--floor 0.10]

Runs are pytest-benchmark's storage (`make bench`: --benchmark-autosave), machine_info["fastzhang"] from
bench/conftest.py. The latest run: the newest file with every file of its commit and machine kind. Its
images/s (or rounds/s) are compared with runs of the same machine kind and torch threads only, its ratios
against the in-run baseline (RATIO_KEYS) with runs of the same device type; the reference is the median
of up to WINDOW earlier runs, at least MIN_RUNS (runs move by far more than their rounds; NOTES.md §11).
Below reference x (1 - noise) is a regression (exit 1), named with the first run of the trailing stretch
below; the noise: the largest of FLOOR, the spread of the rounds (a ratio's adds its baseline's), the
reference runs' median spread and the spread between them. Measured while the 1-minute load exceeded
the cores, a drop is shown but not judged.
"""

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")  # native bf16 (amp's CPU auto) and vector width
RATIO_KEYS = ("ratio_vs_naive", "speedup_vs_sequential")
FLOOR, WINDOW = 0.10, 5
MIN_RUNS = 2  # earlier comparable runs before a verdict: the noise between runs is measured from them
HISTORY = Path(__file__).resolve().parent / "history"


def machine(cpu: dict, cores: int, gpu: str | None) -> dict:
    """The machine kind and its parts; `cpu` is py-cpuinfo's dict (pytest-benchmark's machine_info["cpu"])."""
    flags = [flag for flag in FLAGS if flag in cpu.get("flags", ())]
    brand = cpu.get("brand_raw") or "unknown CPU"
    kind = f"{brand}, {'+'.join(flags) or 'no avx2'}, {cores} cores, {gpu or 'no GPU'}"
    return {"kind": kind, "cpu": brand, "flags": flags, "cores": cores, "gpu": gpu}


@dataclass(frozen=True)
class Run:
    path: str
    time: str  # ISO datetime (UTC) at which pytest-benchmark saved it
    commit: str  # short id, "+dirty" when the tree had uncommitted changes
    kind: str
    threads: int | None
    cores: int | None
    benchmarks: dict  # key (file::test[params]) -> the benchmark's JSON


class HistoryError(ValueError):
    """A history that cannot be read: one line naming the file."""


def load_runs(folder: Path) -> list[Run]:
    """Every run saved under `folder`, oldest first; a file that is not one is an error, not a lost run."""
    if not folder.is_dir():
        raise HistoryError(f"{folder}: no such folder (make bench records its runs there)")
    runs = []
    for path in sorted(folder.glob("*/*.json")):
        try:
            data = json.loads(path.read_bytes())
            commit, ours = data["commit_info"], data["machine_info"].get("fastzhang", {})
            label = str(commit.get("id", "unversioned"))[:10] + ("+dirty" if commit.get("dirty") else "")
            runs.append(Run(str(path), data["datetime"], label, ours.get("kind", "unknown machine"),
                            ours.get("torch_threads"), ours.get("cores"),
                            {b["fullname"].rsplit("/", 1)[-1]: b for b in data["benchmarks"]}))
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # ValueError: not JSON at all
            why = "not a pytest-benchmark JSON file" if isinstance(e, ValueError) else f"missing or bad field {e}"
            raise HistoryError(f"{path}: {why}") from None
    return sorted(runs, key=lambda run: run.time)


def round_noise(stats: dict) -> float | None:
    """The spread of a benchmark's rounds, (max - min) / median of their times; None for one round."""
    return (stats["max"] - stats["min"]) / stats["median"] if stats.get("rounds", 0) > 1 and stats["median"] else None


@dataclass(frozen=True)
class Point:
    run: Run
    value: float
    noise: float | None  # of the rounds that made it
    load: float | None  # the 1-minute load when it was measured

    @property
    def contended(self) -> bool:
        """Measured with more runnable threads than cores: its rounds waited for a core (bench/NOTES.md §11)."""
        return None not in (self.load, self.run.cores) and self.load > self.run.cores


def points(run: Run, key: str) -> dict[tuple, Point]:
    """A benchmark's metrics in one run, by series: ("abs", unit, kind, threads) or ("ratio", name, device type)."""
    info, stats = run.benchmarks[key]["extra_info"], run.benchmarks[key]["stats"]
    noise, load = round_noise(stats), info.get("loadavg_1m")
    rate, unit = (info["images_per_s"], "images/s") if "images_per_s" in info else (1 / stats["median"], "rounds/s")
    out = {("abs", unit, run.kind, run.threads): Point(run, rate, noise, load)}
    base = [round_noise(b["stats"]) for b in run.benchmarks.values()
            if info.get("baseline") is not None and b["extra_info"].get("name") == info["baseline"]]
    known = [x for x in (noise, *base[:1]) if x is not None]  # a quotient's relative spreads add in quadrature
    for name in RATIO_KEYS:
        if info.get(name) is not None:
            device = "cpu" if str(info.get("device", "cpu")) == "cpu" else "cuda"
            out["ratio", name, device] = Point(run, info[name], math.hypot(*known) if known else None, load)
    return out


def run_spread(values: list[float]) -> float:
    """How far runs of one benchmark move: 3 median absolute deviations (about 2 standard deviations) over
    the median; robust to a drop already among them, which a range would count as noise."""
    mid = statistics.median(values)
    return 3 * statistics.median(abs(v - mid) for v in values) / mid


@dataclass(frozen=True)
class Verdict:
    benchmark: str
    series: tuple
    latest: Point
    reference: float | None  # None: no earlier comparable run
    runs: int  # how many earlier runs the reference is the median of
    noise: float | None  # None: fewer than MIN_RUNS earlier runs measure it; no verdict
    since: Run | None  # a drop beyond the noise: the first run of it

    @property
    def regressed(self) -> bool:
        """A drop beyond the noise, measured on a machine that was not contended."""
        return self.since is not None and not self.latest.contended

    @property
    def change(self) -> float | None:
        return None if self.reference is None else self.latest.value / self.reference - 1


def latest_run(runs: list[Run]) -> list[Run]:
    return [run for run in runs if (run.commit, run.kind) == (runs[-1].commit, runs[-1].kind)]


def compare(runs: list[Run], *, floor: float = FLOOR, window: int = WINDOW) -> list[Verdict]:
    """One verdict per benchmark and metric of the latest run, runs oldest first (load_runs)."""
    latest = latest_run(runs)
    verdicts = []
    for key in dict.fromkeys(key for run in latest for key in run.benchmarks):
        series: dict[tuple, list[Point]] = {}
        for run in runs:
            for name, point in (points(run, key) if key in run.benchmarks else {}).items():
                series.setdefault(name, []).append(point)
        verdicts += [judge(key, name, history, floor, window) for name, history in series.items()
                     if history[-1].run in latest]
    return verdicts


def judge(key: str, name: tuple, history: list[Point], floor: float, window: int) -> Verdict:
    """The last point against the median of up to `window` points before it."""
    *before, last = history
    values = [p.value for p in before[-window:]]
    reference = statistics.median(values) if values else None
    if len(values) < MIN_RUNS:  # the noise between runs is not measured yet: no verdict
        return Verdict(key, name, last, reference, len(values), None, None)
    earlier_noise = [p.noise for p in before[-window:] if p.noise is not None]
    noise = max(floor, last.noise or 0.0, statistics.median(earlier_noise) if earlier_noise else 0.0,
                run_spread(values))
    since = None
    for point in reversed(history):
        if point.value >= reference * (1 - noise):
            break
        since = point.run
    return Verdict(key, name, last, reference, len(values), noise, since)


def short_name(key: str) -> str:
    """'test_bench_data.py::test_loader[torch]' -> 'loader[torch]'."""
    return key.split("::", 1)[-1].removeprefix("test_")


def _label(v: Verdict) -> str:
    return f"{short_name(v.benchmark)} {v.series[1].replace('_', ' ')}"


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def report(runs: list[Run], verdicts: list[Verdict]) -> str:
    latest = latest_run(runs)
    loads = [b["extra_info"]["loadavg_1m"] for run in latest for b in run.benchmarks.values()
             if "loadavg_1m" in b["extra_info"]]
    load = f", load {min(loads):.1f}-{max(loads):.1f}" if loads else ""
    lines = [f"latest run: {latest[-1].commit} at {latest[-1].time[:19]} on {latest[-1].kind}{load} "
             f"({len(latest)} file(s) of this commit); history: {len(runs)} run(s)", "",
             "| benchmark | compared with | reference (runs) | latest | change | noise | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in verdicts:
        kind, _, *scope = v.series
        where = f"any {scope[0]}" if kind == "ratio" else "same kind" + (
            f", {scope[1]} thread(s)" if scope[1] is not None else "")
        verdict = (f"REGRESSION since {v.since.commit}" if v.regressed else
                   f"drop beyond the noise, not judged: load {v.latest.load:.1f} > {v.latest.run.cores} cores"
                   if v.since else "new" if v.reference is None else
                   f"no verdict: {v.runs} earlier run(s)" if v.noise is None else "ok")
        ref = "none yet" if v.reference is None else f"{_num(v.reference)} ({v.runs})"
        lines.append(f"| {_label(v)} | {where} | {ref} | {_num(v.latest.value)} | "
                     f"{'' if v.change is None else f'{100 * v.change:+.1f}%'} | "
                     f"{'?' if v.noise is None else f'{100 * v.noise:.0f}%'} | {verdict} |")
    regressions = [v for v in verdicts if v.regressed]
    lines.append("")
    lines += [f"REGRESSION: {_label(v)} {_num(v.reference)} -> {_num(v.latest.value)} ({100 * v.change:+.1f}%, "
              f"noise {100 * v.noise:.0f}%), first in commit {v.since.commit} ({v.since.time[:19]}, "
              f"{Path(v.since.path).name})" for v in regressions]
    compared = sum(v.noise is not None for v in verdicts)
    contended = sum(v.latest.contended for v in verdicts if v.noise is not None)
    lines.append(f"{len(regressions)} regression(s) among {compared} comparison(s)"
                 + (f", {contended} of them measured on a contended machine (a drop there is shown, not judged)"
                    if contended else "")
                 + (f"; {len(verdicts) - compared} without a verdict (fewer than {MIN_RUNS} earlier comparable runs)"
                    if compared < len(verdicts) else ""))
    return "\n".join(lines)


def draw(runs: list[Run], path: Path) -> None:
    """Each ratio against its in-run baseline, run after run, one panel per suite (bench file), log scale (a 30%
    drop is the same height at 2x as at 14x); ratios, not images/s: they compare across machines."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a build machine
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lines: dict[str, dict[str, list[tuple[int, float]]]] = {}  # suite -> label -> [(run index, ratio)]
    for index, run in enumerate(runs):
        for key in run.benchmarks:
            for (kind, name, *scope), point in points(run, key).items():
                if kind == "ratio":
                    label = short_name(key) + (f" ({name})" if name != RATIO_KEYS[0] else "") + f" [{scope[0]}]"
                    lines.setdefault(key.split("::")[0], {}).setdefault(label, []).append((index, point.value))
    suites = sorted(lines) or ["(no ratios recorded)"]
    fig, axes = plt.subplots(len(suites), 1, figsize=(11, 3.2 * len(suites)), squeeze=False, sharex=True)
    for ax, suite in zip(axes[:, 0], suites):
        for i, (label, values) in enumerate(sorted(lines.get(suite, {}).items())):
            xs, ys = zip(*values)  # past the ten colours of the cycle, a new dash tells the lines apart
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, linestyle=("-", "--", ":")[i // 10 % 3],
                    label=label)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("ratio to baseline")
        ax.set_title(f"bench/{suite}", fontsize=9, loc="left")
        ax.grid(True, which="both", alpha=0.3)
        if suite in lines:
            ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes[-1, 0].set_xticks(range(len(runs)))
    axes[-1, 0].set_xticklabels([f"{run.commit}\n{run.time[5:16].replace('T', ' ')}" for run in runs], rotation=60,
                                fontsize=6, ha="right")
    fig.suptitle("Benchmark ratios against the in-run baseline, by run (bench/history/)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare the latest benchmark run against bench/history/.")
    parser.add_argument("--history", type=Path, default=HISTORY, help="pytest-benchmark storage folder")
    parser.add_argument("--figure", type=Path, default=None, help="also draw each ratio over commits (PNG)")
    parser.add_argument("--floor", type=float, default=FLOOR, help="smallest noise assumed (default 0.10)")
    parser.add_argument("--window", type=int, default=WINDOW, help="earlier runs the reference is the median of")
    args = parser.parse_args(argv)
    if not 0 <= args.floor < 1 or args.window < 1:
        print("history.py: --floor must be in [0, 1) and --window >= 1", file=sys.stderr)
        return 2
    try:
        runs = load_runs(args.history)
        if not runs:
            raise HistoryError(f"{args.history}: no runs recorded yet (make bench records one)")
    except HistoryError as e:
        print(f"history.py: {e}", file=sys.stderr)
        return 2
    verdicts = compare(runs, floor=args.floor, window=args.window)
    print(report(runs, verdicts))
    if args.figure is not None:
        draw(runs, args.figure)
        print(f"trend of the ratios: {args.figure}")
    return 1 if any(v.regressed for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
