"""The benchmark history in bench/history/: what a run records besides pytest-benchmark's own, and its check.

    python bench/history.py [--history bench/history] [--figure bench/history/trend.png] [--floor 0.10]

Storage is pytest-benchmark's: `make bench` and `make bench-gpu` run pytest with
`--benchmark-storage=file://bench/history --benchmark-autosave`, which writes one JSON per
run, bench/history/<interpreter>/NNNN_<commit>_<time>[_uncommitted-changes].json, with
its commit_info (commit, dirty tree, branch), machine_info and every benchmark's stats
(min, max, median of its rounds) and extra_info (images_per_s and ratio_vs_naive, see
bench/conftest.py). What it lacks, bench/conftest.py adds as machine_info["fastzhang"]:
the machine kind (`machine` below), torch's version and threads, the load at the end.

The check (`compare`): the latest run is the newest file with every file of the same
commit and machine kind (a GPU suite saves one per stage). For each of its benchmarks
and each metric:
- absolute (images/s; rounds/s for a benchmark without images) only against runs of
  the same machine kind and torch thread count: other hardware is not slower code;
- ratio against the in-run baseline (ratio_vs_naive, speedup_vs_sequential) against
  runs on any machine with the same device type (CPU or CUDA, whose suites size their
  workloads differently);
the reference is the median of up to WINDOW earlier runs, and the noise the largest of
FLOOR, the spread of the latest run's rounds ((max - min) / median of the round times;
for a ratio combined with its baseline's), the median spread of the reference runs'
rounds, and the spread between those runs (run_spread). A verdict needs MIN_RUNS
earlier runs: on a shared machine the load moves between runs, and a run's numbers
move by far more than its rounds do (bench/NOTES.md §11). A latest value below
reference x (1 - noise) is a regression, reported with the first run (commit) of the
trailing stretch of runs below that line; exit status 1. Once three of the last five
runs confirm the lower level, the median moves: the new reference. A drop measured
while the 1-minute load exceeded the machine's cores is shown but not judged: its
rounds waited for a core, by how much the load alone does not say.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")  # native bf16 (amp's CPU auto) and vector width
RATIO_KEYS = ("ratio_vs_naive", "speedup_vs_sequential")
FLOOR = 0.10
WINDOW = 5
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

    def loads(self) -> tuple[float, float] | None:
        """(lowest, highest) 1-minute load recorded beside its benchmarks."""
        values = [b["extra_info"]["loadavg_1m"] for b in self.benchmarks.values() if "loadavg_1m" in b["extra_info"]]
        return (min(values), max(values)) if values else None


class HistoryError(ValueError):
    """A history that cannot be read: one line naming the file."""


def load_runs(folder: Path) -> list[Run]:
    """Every run saved under `folder`, oldest first, read by pytest-benchmark's FileStorage."""
    from pytest_benchmark.logger import Logger, PytestBenchmarkWarning
    from pytest_benchmark.storage.file import FileStorage

    if not folder.is_dir():
        raise HistoryError(f"{folder}: no such folder (make bench records its runs there)")
    storage = FileStorage(folder, logger=Logger(Logger.QUIET))
    files = storage.query("*/*")
    with warnings.catch_warnings():  # its warning for a file it skips: the error below says it once
        warnings.simplefilter("ignore", PytestBenchmarkWarning)
        loaded = dict(storage.load(*files))
    runs = []
    for path in files:
        data = loaded.get(path.relative_to(storage.path))
        if data is None:  # FileStorage skips what it cannot parse; a committed history must not lose runs silently
            raise HistoryError(f"{path}: not a pytest-benchmark JSON file")
        try:
            runs.append(_run(path, data))
        except (KeyError, TypeError, ValueError) as e:
            raise HistoryError(f"{path}: missing or bad field {e}") from None
    return sorted(runs, key=lambda run: run.time)


def _run(path: Path, data: dict) -> Run:
    commit = data["commit_info"]
    ours = data["machine_info"].get("fastzhang", {})
    label = str(commit.get("id", "unversioned"))[:10] + ("+dirty" if commit.get("dirty") else "")
    benchmarks = {b["fullname"].rsplit("/", 1)[-1]: b for b in data["benchmarks"]}
    return Run(str(path), data["datetime"], label, ours.get("kind", "unknown machine"), ours.get("torch_threads"),
               ours.get("cores"), benchmarks)


def round_noise(stats: dict) -> float | None:
    """The spread of a benchmark's rounds, (max - min) / median of their times; None for one round."""
    if stats.get("rounds", 0) < 2 or not stats["median"]:
        return None
    return (stats["max"] - stats["min"]) / stats["median"]


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
    bench = run.benchmarks[key]
    info, stats = bench["extra_info"], bench["stats"]
    noise, load = round_noise(stats), info.get("loadavg_1m")
    rate, unit = (info["images_per_s"], "images/s") if "images_per_s" in info else (1 / stats["median"], "rounds/s")
    out = {("abs", unit, run.kind, run.threads): Point(run, rate, noise, load)}
    device = "cpu" if str(info.get("device", "cpu")) == "cpu" else "cuda"
    for name in RATIO_KEYS:
        if info.get(name) is not None:
            out["ratio", name, device] = Point(run, info[name], _combined(noise, _baseline_noise(run, info)), load)
    return out


def _baseline_noise(run: Run, info: dict) -> float | None:
    for bench in run.benchmarks.values():
        if info.get("baseline") is not None and bench["extra_info"].get("name") == info["baseline"]:
            return round_noise(bench["stats"])
    return None


def run_spread(values: list[float]) -> float:
    """How far runs of one benchmark move: 3 median absolute deviations (about 2 standard deviations) over
    the median; robust to a drop already among them, which a range would count as noise."""
    mid = statistics.median(values)
    return 3 * statistics.median(abs(v - mid) for v in values) / mid


def _combined(a: float | None, b: float | None) -> float | None:
    """Relative spreads of a quotient's two terms add in quadrature."""
    known = [x for x in (a, b) if x is not None]
    return math.hypot(*known) if known else None


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
    newest = runs[-1]
    return [run for run in runs if (run.commit, run.kind) == (newest.commit, newest.kind)]


def compare(runs: list[Run], *, floor: float = FLOOR, window: int = WINDOW) -> list[Verdict]:
    """One verdict per benchmark and metric of the latest run, runs oldest first (load_runs)."""
    latest = latest_run(runs)
    keys = dict.fromkeys(key for run in latest for key in run.benchmarks)
    verdicts = []
    for key in keys:
        series: dict[tuple, list[Point]] = {}
        for run in runs:
            if key in run.benchmarks:
                for name, point in points(run, key).items():
                    series.setdefault(name, []).append(point)
        for name, history in series.items():
            if history[-1].run in latest:
                verdicts.append(judge(key, name, history, floor, window))
    return verdicts


def judge(key: str, name: tuple, history: list[Point], floor: float, window: int) -> Verdict:
    """The last point against the median of up to `window` points before it."""
    *before, last = history
    before = before[-window:]
    if not before:
        return Verdict(key, name, last, None, 0, None, None)
    values = [p.value for p in before]
    reference = statistics.median(values)
    if len(values) < MIN_RUNS:  # the noise between runs is not measured yet: no verdict
        return Verdict(key, name, last, reference, len(before), None, None)
    earlier_noise = [p.noise for p in before if p.noise is not None]
    noise = max(floor, last.noise or 0.0, statistics.median(earlier_noise) if earlier_noise else 0.0,
                run_spread(values))
    line = reference * (1 - noise)
    since = None
    for point in reversed(history):
        if point.value >= line:
            break
        since = point.run
    return Verdict(key, name, last, reference, len(before), noise, since)


def short_name(key: str) -> str:
    """'test_bench_data.py::test_resident_torch_loader' -> 'resident_torch_loader'."""
    return key.split("::", 1)[-1].removeprefix("test_")


def _label(v: Verdict) -> str:
    return f"{short_name(v.benchmark)} {v.series[1].replace('_', ' ')}"


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _scope(v: Verdict) -> str:
    if v.series[0] == "ratio":
        return f"any {v.series[2]}"
    return f"same kind, {v.series[3]} thread(s)" if v.series[3] is not None else "same kind"


def report(runs: list[Run], verdicts: list[Verdict]) -> str:
    latest = latest_run(runs)
    loads = [load for run in latest if (load := run.loads())]
    load = f", load {min(a for a, _ in loads):.1f}-{max(b for _, b in loads):.1f}" if loads else ""
    lines = [f"latest run: {latest[-1].commit} at {latest[-1].time[:19]} on {latest[-1].kind}{load} "
             f"({len(latest)} file(s) of this commit); history: {len(runs)} run(s)", "",
             "| benchmark | compared with | reference (runs) | latest | change | noise | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in verdicts:
        ref = "none yet" if v.reference is None else f"{_num(v.reference)} ({v.runs})"
        change = "" if v.change is None else f"{100 * v.change:+.1f}%"
        verdict = (f"REGRESSION since {v.since.commit}" if v.regressed else
                   f"drop beyond the noise, not judged: {_contention(v.latest)}" if v.since else
                   "new" if v.reference is None else f"no verdict: {v.runs} earlier run(s)" if v.noise is None else
                   "ok")
        noise = "?" if v.noise is None else f"{100 * v.noise:.0f}%"
        lines.append(f"| {_label(v)} | {_scope(v)} | {ref} | {_num(v.latest.value)} | {change} | {noise} | "
                     f"{verdict} |")
    regressions = [v for v in verdicts if v.regressed]
    lines.append("")
    for v in regressions:
        lines.append(f"REGRESSION: {_label(v)} {_num(v.reference)} -> {_num(v.latest.value)} "
                     f"({100 * v.change:+.1f}%, noise {100 * v.noise:.0f}%), first in commit {v.since.commit} "
                     f"({v.since.time[:19]}, {Path(v.since.path).name})")
    compared = sum(v.reference is not None and v.noise is not None for v in verdicts)
    unjudged = len(verdicts) - compared
    contended = sum(v.latest.contended for v in verdicts if v.noise is not None)
    lines.append(f"{len(regressions)} regression(s) among {compared} comparison(s)"
                 + (f", {contended} of them measured on a contended machine (a drop there is shown, not judged)"
                    if contended else "")
                 + (f"; {unjudged} without a verdict (fewer than {MIN_RUNS} earlier comparable runs)"
                    if unjudged else ""))
    return "\n".join(lines)


def series(runs: list[Run]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """The trend figure's lines: suite -> line label -> [(run index, ratio)], runs oldest first."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for index, run in enumerate(runs):
        for key in run.benchmarks:
            suite = key.split("::", 1)[0].removeprefix("test_bench_").removesuffix(".py")
            for name, point in points(run, key).items():
                if name[0] == "ratio":
                    label = short_name(key) + (f" ({name[1]})" if name[1] != RATIO_KEYS[0] else "") + f" [{name[2]}]"
                    out.setdefault(suite, {}).setdefault(label, []).append((index, point.value))
    return out


def _contention(point: Point) -> str:
    return f"load {point.load:.1f} > {point.run.cores} cores"


def draw(lines: dict[str, dict[str, list[tuple[int, float]]]], runs: list[str], path: Path) -> None:
    """bench/history/trend.png: each ratio against its in-run baseline, run after run; `lines` from series(),
    `runs` labels the x positions (commit and date), oldest first. One panel per suite, log scale (a 30%
    drop is the same height at 2x as at 14x); ratios, not images/s: they compare across machines."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a build machine
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

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
    axes[-1, 0].set_xticklabels(runs, rotation=60, fontsize=6, ha="right")
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
    except HistoryError as e:
        print(f"history.py: {e}", file=sys.stderr)
        return 2
    if not runs:
        print(f"history.py: {args.history}: no runs recorded yet (make bench records one)", file=sys.stderr)
        return 2
    verdicts = compare(runs, floor=args.floor, window=args.window)
    print(report(runs, verdicts))
    if args.figure is not None:
        draw(series(runs), [f"{run.commit}\n{run.time[5:16].replace('T', ' ')}" for run in runs], args.figure)
        print(f"trend of the ratios: {args.figure}")
    return 1 if any(v.regressed for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
