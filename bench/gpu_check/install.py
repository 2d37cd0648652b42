"""Install fastzhang and what the machine lacks into a scratch folder, offline, with pip --target.

    python -m gpu_check.install [--bench] SCRATCH_ROOT      (prints the folder to put on PYTHONPATH)

fastzhang is built from a copy of the checkout (the installed layout maps kernels/ to
fastzhang.kernels, so the bare checkout on PYTHONPATH is not the product) with
`pip install --no-index --find-links WHEELS --no-deps --target`; build isolation takes
setuptools from the wheel folder, or, without one, from this Python
(--no-build-isolation). orjson and tqdm (and with --bench pytest-benchmark and
py-cpuinfo) are installed the same way when this Python cannot import them. The
result lives in SCRATCH_ROOT/<key>, the key a hash of the sources, the wheel folder
and this Python, so a second check on an unchanged tree reuses it. Standard library
only: it runs before anything of ours can be imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gpu_check.plan import REPO, WHEELS_ENV
from gpu_check.wheels import BENCH, BENCH_PYTEST, IMPORT_NAMES, RUNTIME, dist_name

# Top-level entries of the checkout a wheel build never needs (and the big or private ones).
NOT_BUILT = {".git", ".venv", "venv", "bench", "tests", "docs", "checkpoints", "results", "data", "build", "dist",
             "wandb", ".pytest_cache", ".benchmarks"}


@dataclass(frozen=True)
class Installed:
    path: Path  # goes first on PYTHONPATH
    added: tuple[str, ...]  # distributions installed from the wheel folder besides fastzhang
    reused: bool
    wheels: Path | None


class InstallError(Exception):
    pass


def missing(bench: bool = False) -> list[str]:
    """Distributions this Python cannot import (of orjson, tqdm; with bench, pytest-benchmark and py-cpuinfo)."""
    wanted = list(RUNTIME) + ([dist_name(req) for req in BENCH] if bench else [])
    return [name for name in wanted if importlib.util.find_spec(IMPORT_NAMES[name]) is None]


def install(root: Path, wheels: Path | None, *, bench: bool = False) -> Installed:
    root.mkdir(parents=True, exist_ok=True)
    wheels = wheels if wheels is not None and any(wheels.glob("*.whl")) else None
    need = missing(bench)
    if "pytest-benchmark" in need and _version("pytest") < BENCH_PYTEST:
        raise InstallError(f"pytest-benchmark from the wheel folder needs pytest >= "
                           f"{'.'.join(map(str, BENCH_PYTEST))}; this Python has pytest {_version('pytest')}")
    if need and wheels is None:
        raise InstallError(f"this Python lacks {', '.join(need)} and there is no wheel folder "
                           f"(run `make gpu-wheels` where pip reaches an index, or set {WHEELS_ENV})")
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(REPO, source, ignore=_ignored)
        final = root / _key(source, wheels, need)
        if (final / "ok").is_file():
            return Installed(final / "lib", tuple(need), True, wheels)
        lib = Path(tmp) / "out" / "lib"
        _pip(["--no-deps", "--target", str(lib), str(source)], wheels)
        if need:
            _pip(["--no-deps", "--target", str(lib), *need], wheels)
        (lib.parent / "ok").write_text("\n".join(["fastzhang", *need]) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(lib.parent, final)
    for old in root.iterdir():  # earlier trees' installs
        if old != final and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return Installed(final / "lib", tuple(need), False, wheels)


def _version(dist: str) -> tuple[int, ...]:
    import importlib.metadata

    try:
        text = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return (0,)
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def _ignored(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == REPO
    return {n for n in names if (top and n in NOT_BUILT) or n == "__pycache__" or n.endswith(".egg-info")}


def _key(source: Path, wheels: Path | None, need: list[str]) -> str:
    h = hashlib.sha256(f"{sys.version}|{sys.executable}|{need}".encode())
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    for wheel in sorted(wheels.glob("*.whl")) if wheels else ():
        h.update(wheel.name.encode())
    return h.hexdigest()[:16]


def _pip(args: list[str], wheels: Path | None) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
           "--no-index", "--no-warn-script-location"]
    cmd += ["--find-links", str(wheels)] if wheels else ["--no-build-isolation"]
    proc = subprocess.run(cmd + args, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        shown = " ".join(cmd[3:] + args)
        raise InstallError(f"`pip {shown}` failed:\n{(proc.stderr or proc.stdout).strip()[-3000:]}")


def main(argv: list[str]) -> int:
    bench = "--bench" in argv
    root = Path([a for a in argv if a != "--bench"][0])
    wheels = Path(os.environ.get(WHEELS_ENV) or REPO / "bench" / "wheels")
    try:
        done = install(root.resolve(), wheels.resolve(), bench=bench)
    except InstallError as e:
        print(f"gpu_check.install: {e}", file=sys.stderr)
        return 2
    print(done.path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
