"""`make gpu-wheels`: fill the wheel folder an offline GPU machine installs from (bench/wheels/).

    python -m gpu_check.wheels [FOLDER]      (PYTHONPATH=bench; needs pip and package access)

What a GPU machine with torch, Triton, numpy, PyYAML and pytest may lack, for CPython
3.10 to 3.13 on Linux (x86_64, and aarch64 for Grace Hopper): fastzhang's runtime
dependencies orjson (one wheel per Python version and platform) and tqdm, at the
versions pyproject.toml allows; pytest-benchmark and py-cpuinfo for `make bench-gpu`;
and the build backend of pyproject.toml's [build-system] (setuptools), so that
`pip install --no-index --find-links FOLDER .` can build fastzhang itself. The folder is
replaced as a whole; it is git-ignored, so a tool that copies only tracked files must
carry it along.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gpu_check.plan import REPO

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
PLATFORMS = {  # the manylinux tags a wheel may carry, newest glibc first
    "x86_64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    "aarch64": ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"),
}
RUNTIME = ("orjson", "tqdm")  # fastzhang's dependencies beyond what the GPU machine brings
BINARY = ("orjson",)  # compiled: one wheel per Python version and platform
# pytest-benchmark for `make bench-gpu`. No version serves every pytest 8: 5.0.x breaks on pytest >= 8.1
# (its import_path hook), 5.1 and later need pytest >= 8.1. 5.2.3 takes py-cpuinfo (5.3 wants py-cpuinfo2).
BENCH = ("pytest-benchmark==5.2.3", "py-cpuinfo==9.0.0")
BENCH_PYTEST = (8, 1)
IMPORT_NAMES = {"orjson": "orjson", "tqdm": "tqdm", "pytest-benchmark": "pytest_benchmark", "py-cpuinfo": "cpuinfo"}


def requirements() -> tuple[list[str], list[str]]:
    """(binary, pure) requirement strings: RUNTIME as pyproject.toml pins them, BENCH, the build backend."""
    import tomllib  # Python >= 3.11, on the machine that downloads

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    pinned = {dist_name(req): req for req in project["project"]["dependencies"]}
    runtime = [pinned[name] for name in RUNTIME]
    binary = [req for req in runtime if dist_name(req) in BINARY]
    pure = [req for req in runtime if dist_name(req) not in BINARY] + list(BENCH)
    return binary, pure + list(project["build-system"]["requires"])


def dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def download(folder: Path) -> list[Path]:
    binary, pure = requirements()
    base = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--only-binary=:all:"]
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-") as tmp:
        _pip([*base, "--dest", tmp, *pure])
        for version in PYTHONS:
            tag = "cp" + version.replace(".", "")
            for platforms in PLATFORMS.values():
                flags = [f"--platform={p}" for p in platforms]
                _pip([*base, "--dest", tmp, "--python-version", version, "--implementation", "cp",
                      "--abi", tag, *flags, *binary])
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(tmp, folder)
    return sorted(folder.glob("*.whl"))


def _pip(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gpu-wheels: {' '.join(cmd[3:])} failed:\n{proc.stderr.strip()[-2000:]}")


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else REPO / "bench" / "wheels").resolve()
    wheels = download(folder)
    size = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"  {wheel.name} ({wheel.stat().st_size / 1e3:.0f} kB)")
    print(f"gpu-wheels: {len(wheels)} wheels, {size / 1e6:.1f} MB in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
