"""`fastzhang data info`: in-process on tiny fixtures, as a real subprocess for exit codes and real data."""

from __future__ import annotations

import pytest

import re
import subprocess
import sys

from conftest import REPO

from fastzhang.cli import main
from fastzhang.data import cifar, sources


def run_cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "fastzhang", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_info_reports_location_counts_histogram_fingerprints(cifar_any, monkeypatch, capsys):
    monkeypatch.setattr(cifar, "PER_BATCH", 20)
    assert main(["data", "info", "--data-dir", str(cifar_any.root)]) == 0
    out = capsys.readouterr().out
    expected = sources.load_dataset("cifar10", cifar_any.root, download=False, per_batch=20)
    assert f"source:       {cifar_any.path}" in out
    assert f"layout:       {cifar_any.layout}" in out
    assert ("extracted to:" in out) == (cifar_any.layout == "tarball")
    assert "train images: 100\n" in out and "test images:  20\n" in out
    assert re.search(r"^0 airplane\s+10\s+2$", out, re.M) and re.search(r"^9 truck\s+10\s+2$", out, re.M)
    assert f"fingerprint:          {expected.fingerprint}  (unknown data set)" in out
    assert f"content fingerprint:  {expected.content_fingerprint}" in out


@pytest.mark.e2e
def test_info_synthetic_subprocess():
    result = run_cli("data", "info", "--dataset", "synthetic")
    assert result.returncode == 0, result.stderr
    assert "train images: 1,024" in result.stdout and "test images:  256" in result.stdout
    assert re.search(r"fingerprint: +[0-9a-f]{64}  \(synthetic\)", result.stdout)


@pytest.mark.e2e
def test_missing_data_exits_2_with_one_line(tmp_path):
    result = run_cli("data", "info", "--data-dir", str(tmp_path / "empty"), "--no-download")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fastzhang: error: no CIFAR-10 in {tmp_path / 'empty'}: put cifar-10-python.tar.gz, cifar-10-batches-py/ "
        "or cifar-10-batches-bin/ there, or point --data-dir / FASTZHANG_DATA at a folder that has them"
    ]
    assert result.stdout == ""


@pytest.mark.e2e
def test_crafted_batch_exits_2_and_runs_nothing(cifar_python, tmp_path):
    import os
    import pickle

    target = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {target}",))

    (cifar_python.path / "data_batch_1").write_bytes(pickle.dumps({"data": Payload()}, protocol=2))
    result = run_cli("data", "info", "--data-dir", str(cifar_python.root))
    assert result.returncode == 2 and "refused to unpickle" in result.stderr
    assert str(cifar_python.path / "data_batch_1") in result.stderr
    assert not target.exists()


@pytest.mark.e2e
def test_real_cifar10_info(shared_cifar, user_env):
    result = run_cli("data", "info", "--data-dir", str(shared_cifar), env=user_env, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "train images: 50,000" in out and "test images:  10,000" in out
    for k, name in enumerate(cifar.CIFAR10.classes):
        assert re.search(rf"^{k} {name}\s+5,000\s+1,000$", out, re.M), name
    assert "(CIFAR-10 offline copy (shuffled order))" in out
    assert "(CIFAR-10 (official images and labels); order-independent)" in out
