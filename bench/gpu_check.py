"""`make gpu-check`, `make bench-gpu`, `make gpu-wheels`: pytest on a lent GPU machine, offline.

    python bench/gpu_check.py check            the tests and benchmarks marked `cuda`, then one summary
    python bench/gpu_check.py bench            the whole benchmark suite on the GPU (make bench-gpu)
    python bench/gpu_check.py wheels [FOLDER]  fill the wheel folder (needs package access)

The checks are ordinary tests and benchmarks marked `cuda` (tests/, bench/; their device is the `device`
fixture of tests/conftest.py), limited by pytest-timeout, reported by pytest. Left here is what a machine
with a CUDA torch, Triton, numpy, PyYAML and pytest but no network needs: fastzhang and what that Python
lacks installed by `pip --no-index --target` from the wheel folder (bench/wheels/) into OUT/pydeps/,
pytest run from OUT (the installed product is imported, not the checkout), and summary.md.
Environment: FASTZHANG_GPU_DRY_RUN=1 (all of it on the CPU, tiny sizes), GPU_CHECK_OUT (default
bench/out/gpu-check or gpu-bench), GPU_CHECK_DATA (CIFAR-10: adds Table 1 rows), GPU_CHECK_TABLE1_S
(their time, default 480), GPU_CHECK_WHEELS. Exit status: 0 all passed, 1 something failed, 2 nothing
was run. Standard library only (and the machine's torch, asked about CUDA): nothing of ours is installed yet.
"""

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DRY_ENV = "FASTZHANG_GPU_DRY_RUN"
# Wheels: what a GPU machine may lack, for CPython 3.10-3.13 on Linux x86_64 and aarch64 (Grace Hopper).
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
PLATFORMS = (("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
             ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"))
RUNTIME = ("orjson", "tqdm")  # pinned as pyproject.toml pins them; orjson is compiled: a wheel per platform
# No pytest-benchmark serves every pytest 8: 5.1 and later need pytest >= 8.1; 5.2.3 takes py-cpuinfo.
TESTING = ("pytest-timeout==2.4.0", "pytest-benchmark==5.2.3", "py-cpuinfo==9.0.0")
NOT_BUILT = {".git", ".venv", "venv", "bench", "tests", "docs", "checkpoints", "results", "data", "build", "dist",
             "wandb", ".pytest_cache", ".benchmarks"}


class Refused(Exception):
    """Nothing was run: one line for stderr, exit status 2."""


def settings(kind: str) -> dict:
    env = os.environ
    dry = env.get(DRY_ENV, "0")
    if dry not in ("0", "1", ""):
        raise Refused(f"{DRY_ENV} must be 1 (dry run on the CPU) or 0, got {dry!r}")
    data = env.get("GPU_CHECK_DATA") or None
    if data is not None and not Path(data).is_dir():
        raise Refused(f"GPU_CHECK_DATA={data}: no such folder (it should hold CIFAR-10, as --data-dir does)")
    table1 = env.get("GPU_CHECK_TABLE1_S", "480")
    if not table1.isdigit() or int(table1) < 60:
        raise Refused(f"GPU_CHECK_TABLE1_S must be a whole number of seconds >= 60, got {table1!r}")
    out = Path(env.get("GPU_CHECK_OUT") or REPO / "bench" / "out" / f"gpu-{kind}").resolve()
    wheels = Path(env.get("GPU_CHECK_WHEELS") or REPO / "bench" / "wheels").resolve()
    return {"dry": dry == "1", "out": out, "wheels": wheels}


def cuda_problem() -> str | None:
    try:
        import torch
    except ImportError as e:
        return f"this Python cannot import torch: {e}"
    if not torch.cuda.is_available():
        return f"no CUDA device is visible to PyTorch (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
    return None


def dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def install(root: Path, wheels: Path) -> tuple[Path, list[str]]:
    """(the folder to put first on PYTHONPATH, what came from the wheel folder besides fastzhang).

    fastzhang is built from a copy of the checkout; build isolation takes setuptools from the
    wheel folder, or, without one, from this Python. Reused while sources, wheels and Python are unchanged.
    """
    need = [name for name in (*RUNTIME, *map(dist_name, TESTING))
            if importlib.util.find_spec({"py-cpuinfo": "cpuinfo"}.get(name, name.replace("-", "_"))) is None]
    has_wheels = wheels.is_dir() and any(wheels.glob("*.whl"))
    if need and not has_wheels:
        raise Refused(f"this Python lacks {', '.join(need)} and {wheels} holds no wheels "
                      "(run `make gpu-wheels` where pip reaches an index, or set GPU_CHECK_WHEELS)")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(REPO, source, ignore=lambda folder, names: {
            n for n in names if (Path(folder) == REPO and n in NOT_BUILT) or n == "__pycache__"
            or n.endswith(".egg-info")})
        h = hashlib.sha256(f"{sys.version}|{sys.executable}|{need}".encode())
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            h.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
        h.update(" ".join(w.name for w in sorted(wheels.glob("*.whl"))).encode() if has_wheels else b"")
        final = root / h.hexdigest()[:16]
        if not (final / "ok").is_file():
            lib = Path(tmp) / "out" / "lib"
            pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                   "--no-index", "--no-warn-script-location", "--no-deps", "--target", str(lib),
                   *(["--find-links", str(wheels)] if has_wheels else ["--no-build-isolation"])]
            pinned = {dist_name(r): r for r in TESTING}
            for args in ([str(source)], [pinned.get(name, name) for name in need]):
                if not args:
                    continue
                proc = subprocess.run(pip + args, capture_output=True, text=True, cwd=tempfile.gettempdir())
                if proc.returncode != 0:
                    raise Refused(f"`pip install {' '.join(args)}` failed: {(proc.stderr or proc.stdout)[-2000:]}")
            (lib.parent / "ok").write_text("\n".join(["fastzhang", *need]) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(lib.parent, final)
    for old in root.iterdir():  # earlier trees' installs
        if old != final and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return final / "lib", need


def wheels_main(folder: Path) -> int:
    """`make gpu-wheels`: download the wheels an offline GPU machine installs from (needs pip and an index)."""
    import tomllib  # Python >= 3.11, on the machine that downloads

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    pinned = {dist_name(r): r for r in project["project"]["dependencies"]}
    pure = [pinned["tqdm"], *TESTING, *project["build-system"]["requires"]]
    base = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--only-binary=:all:"]
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-") as tmp:
        runs = [[*base, "--dest", tmp, *pure]]
        runs += [[*base, "--dest", tmp, "--python-version", v, "--implementation", "cp", "--abi",
                  "cp" + v.replace(".", ""), *(f"--platform={p}" for p in platforms), pinned["orjson"]]
                 for v in PYTHONS for platforms in PLATFORMS]
        for cmd in runs:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"gpu-wheels: {' '.join(cmd[3:])} failed:\n{proc.stderr.strip()[-2000:]}", file=sys.stderr)
                return 1
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(tmp, folder)
    wheels = sorted(folder.glob("*.whl"))
    print(f"gpu-wheels: {len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 1e6:.1f} MB in {folder}")
    return 0


def pytest_run(out: Path, env: dict, name: str, args: list[str]) -> int:
    """pytest from OUT (the checkout is not on sys.path), its output in OUT/<name>.log and on the terminal.
    Compiler caches of its own, empty at the start: the benchmarks' first steps are cold, not the tests' leftovers."""
    cache = out / "cache" / name
    env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton")}
    cmd = [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(REPO),
           "-p", "no:cacheprovider", "-o", "junit_family=xunit1", "-ra", *args]  # xunit1: test properties kept
    print(f"gpu-check: pytest {' '.join(args)}", flush=True)
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            print(line, end="", flush=True)
    return proc.wait()


def junit_rows(path: Path) -> list[dict]:
    """One row per test case of a JUnit XML file: name, outcome, seconds, message, recorded properties."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase") if path.is_file() else ():
        found = next(((tag, e) for tag in ("failure", "error", "skipped") if (e := case.find(tag)) is not None), None)
        rows.append({"name": f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}",
                     "outcome": {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}.get(found and found[0],
                                                                                              "passed"),
                     "message": ((found[1].get("message") or "").splitlines() or [""])[0][:200] if found else "",
                     "seconds": float(case.get("time") or 0),
                     "properties": {p.get("name"): p.get("value") for p in case.iter("property")}})
    return rows


def summary(out: Path, dry: bool) -> tuple[str, bool]:
    """(summary.md's text, whether every test and benchmark case passed)."""
    tests, bench = junit_rows(out / "tests.xml"), junit_rows(out / "bench.xml")
    cases = tests + bench
    bad = [r for r in cases if r["outcome"] in ("FAILED", "ERROR")]
    ok = bool(tests) and bool(bench) and not bad
    count = lambda rows, *o: sum(r["outcome"] in o for r in rows)  # noqa: E731
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = [f"# GPU check: {'PASS' if ok else 'FAIL'}", "",
             f"{'Dry run on the CPU (tiny sizes)' if dry else 'On the GPU'}: tests marked cuda "
             f"{count(tests, 'passed')} passed, {count(tests, 'skipped')} skipped, {count(tests, 'FAILED', 'ERROR')} "
             f"failed; benchmarks {count(bench, 'passed')} passed, {count(bench, 'skipped')} skipped, "
             f"{count(bench, 'FAILED', 'ERROR')} failed; {sum(r['seconds'] for r in cases):.0f} s in all.", ""]
    if bad:
        lines += ["## Failed", "", *(f"- `{r['name']}` ({r['outcome']}): {cell(r['message'])}" for r in bad), ""]
    speed = out / "benchmarks.md"  # bench/conftest.py's table of benchmarks.json
    lines += ["## Facts (recorded by the tests)", "", "| test | fact | value |", "| --- | --- | --- |",
              *(f"| {cell(r['name'].split('::')[-1])} | {cell(k)} | {cell(v)} |" for r in tests
                for k, v in r["properties"].items()),
              "", "## Speed (pytest-benchmark)", "", speed.read_text() if speed.is_file() else "(no benchmark ran)",
              "## Every case", "", "| case | outcome | s |", "| --- | --- | --- |",
              *(f"| {cell(r['name'])} | {r['outcome']} | {r['seconds']:.1f} |" for r in cases)]
    return "\n".join(lines) + "\n", ok


def check(kind: str) -> int:
    conf = settings(kind)
    if not conf["dry"] and (problem := cuda_problem()):
        raise Refused(f"{problem}\ngpu-check: {DRY_ENV}=1 runs all of it on the CPU instead.")
    out = conf["out"]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():  # pydeps/ (the install) is reused
        if stale.name != "pydeps":
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    lib, added = install(out / "pydeps", conf["wheels"])
    print(f"gpu-check: fastzhang installed in {lib}; from the wheel folder: {', '.join(added) or 'nothing'}")
    env = {**os.environ, "PYTHONPATH": str(lib), "GPU_CHECK_INSTALL": str(lib)}
    if conf["dry"]:  # a shared CPU: one thread per benchmark, as the tests' `fastzhang` children have
        env.setdefault("FASTZHANG_BENCH_THREADS", "1")
    if kind == "bench":
        keep = [] if conf["dry"] else [f"--benchmark-storage=file://{REPO / 'bench' / 'history'}",
                                       "--benchmark-autosave"]  # gpu.md beside gpu.json: bench/conftest.py
        return 0 if pytest_run(out, env, "bench", [str(REPO / "bench"), f"--benchmark-json={out / 'gpu.json'}", *keep,
                                                   *(["-m", "cuda"] if conf["dry"] else [])]) == 0 else 1
    pytest_run(out, env, "tests", ["-m", "cuda", str(REPO / "tests"), f"--junitxml={out / 'tests.xml'}"])
    pytest_run(out, env, "bench", ["-m", "cuda", str(REPO / "bench"), f"--junitxml={out / 'bench.xml'}",
                                   f"--benchmark-json={out / 'benchmarks.json'}"])
    text, ok = summary(out, conf["dry"])
    (out / "summary.md").write_text(text)
    print(text + f"gpu-check: {'PASS' if ok else 'FAIL'}; summary in {out / 'summary.md'}")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    try:
        if command in ("check", "bench"):
            return check(command)
        if command == "wheels":
            return wheels_main(Path(argv[1] if len(argv) > 1 else REPO / "bench" / "wheels").resolve())
    except Refused as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 2
    print("usage: gpu_check.py check | bench | wheels [FOLDER]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
