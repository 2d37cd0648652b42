"""Print a pytest-benchmark JSON file (--benchmark-json) as a short markdown table.

    python bench/table.py bench/out/cpu.json [more.json ...]

One row per benchmark, in the files' order: its name, the device, images/s and
the ratio against the baseline measured in the same run (extra_info written by
bench/conftest.py), notes (time-to-first-step, epoch time, checkpoint size and
its share of an mlp1 epoch), and the machine's load when it ran. Benchmarks
without images_per_s show their median round time instead. Several files (the
GPU suite writes one per stage) make one table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson


NOTES = (  # extra_info key -> how the notes column shows it
    ("first_step_s", "first step {:.2f} s"),
    ("first_epoch_s", "first epoch {:.1f} s"),
    ("epoch_s", "epoch {:.2f} s"),
    ("size_mb", "{:.1f} MB"),
    ("pct_of_mlp1_epoch", "{:.2f}% of an mlp1 epoch"),
    ("speedup_vs_sequential", "{:.2f}x vs sequential"),
)


def notes(info: dict) -> str:
    parts = [fmt.format(info[key]) for key, fmt in NOTES if info.get(key) is not None]
    losses = info.get("train_loss")
    if losses:
        parts.append(f"train loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return "; ".join(parts)


def rows(report: dict) -> list[list[str]]:
    out = []
    for bench in report.get("benchmarks", []):
        info = bench.get("extra_info", {})
        rate = info.get("images_per_s")
        ratio = info.get("ratio_vs_naive")
        out.append([
            bench["name"].removeprefix("test_"),
            str(info.get("device", "")),
            f"{rate:,.0f}" if rate is not None else f"{bench['stats']['median'] * 1e3:.1f} ms/round",
            "baseline" if rate is not None and ratio is None else (f"{ratio:.2f}x" if ratio is not None else ""),
            notes(info),
            f"{info['loadavg_1m']:.1f}" if "loadavg_1m" in info else "",
        ])
    return out


def markdown(report: dict) -> str:
    header = ["benchmark", "device", "images/s", "vs baseline", "notes", "load (1 min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(report)]
    machine = report.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw") or machine.get("processor", "")
    if cpu:
        lines.append(f"\n{report.get('datetime', '')} on {cpu}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, nargs="+", help="files written by pytest --benchmark-json")
    args = parser.parse_args(argv)
    merged: dict = {"benchmarks": []}
    for path in args.json:
        try:
            report = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as e:
            print(f"table.py: cannot read {path}: {e}", file=sys.stderr)
            return 2
        merged["benchmarks"] += report.get("benchmarks", [])
        merged.setdefault("machine_info", report.get("machine_info", {}))
        merged.setdefault("datetime", report.get("datetime", ""))
    print(markdown(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
