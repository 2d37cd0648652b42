"""The wheel holds every module of the checkout, kernels/ as fastzhang.kernels and nothing at the top level."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_the_wheel_holds_every_module_and_kernels_only_inside_fastzhang(tmp_path):
    pytest.importorskip("setuptools", reason="builds without isolation, offline: needs setuptools installed")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("fastzhang", "kernels"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fastzhang-*.whl")
    modules = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    want = set()
    for folder, package in (("fastzhang", "fastzhang"), ("kernels", "fastzhang/kernels")):
        want |= {f"{package}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).rglob("*.py")}
    assert "fastzhang/kernels/preprocess_triton.py" in want
    assert modules == want, (sorted(want - modules), sorted(modules - want))
