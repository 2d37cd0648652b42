"""Print a pytest-benchmark JSON file (--benchmark-json) as a short markdown table.

    python bench/table.py bench/out/cpu.json

One row per benchmark, in the file's order: its name, the device, images/s and
the ratio against the baseline measured in the same run (extra_info written by
bench/conftest.py), and the machine's load when it ran. Benchmarks without
images_per_s show their median round time instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson


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
            f"{info['loadavg_1m']:.1f}" if "loadavg_1m" in info else "",
        ])
    return out


def markdown(report: dict) -> str:
    header = ["benchmark", "device", "images/s", "vs baseline", "load (1 min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(report)]
    machine = report.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw") or machine.get("processor", "")
    if cpu:
        lines.append(f"\n{report.get('datetime', '')} on {cpu}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="a file written by pytest --benchmark-json")
    args = parser.parse_args(argv)
    try:
        report = orjson.loads(args.json.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        print(f"table.py: cannot read {args.json}: {e}", file=sys.stderr)
        return 2
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
