"""`loader` is explicit: each name is the path used, only auto chooses, and a path that cannot run is refused."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fastzhang.data import batches, dali
from fastzhang.data.synthetic import make_synthetic
from fastzhang.errors import UsageError
from fastzhang.kernels import preprocess_triton
from fastzhang.train.loaders import make_loader, resolve_loader

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def resident():
    return batches.ResidentData.build(make_synthetic(260, 10), randomization="none", corrupt_prob=0.0, seed=3,
                                      train_subset=None, device="cpu")


def test_torch_and_auto_off_cuda_use_the_resident_torch_path():
    data = resident()
    plan = batches.epoch_plan(5, 1, 260, True, "cpu")
    for name in ("torch", "auto"):
        loader = make_loader(name, data, 100, dtype=torch.bfloat16, channels_last=True)
        assert loader.name == "torch"
        for step in range(3):
            x, y = loader(plan, step)
            want_x, want_y = batches.train_batch(data, plan, step, 100, dtype=torch.bfloat16, channels_last=True)
            assert torch.equal(x, want_x) and x.stride() == want_x.stride() and torch.equal(y, want_y)


@pytest.mark.skipif(not dali.available(), reason="nvidia-dali is not installed (pip install 'fastzhang[dali]')")
def test_dali_is_the_dali_path():
    data = resident()
    plan = batches.epoch_plan(5, 1, 260, True, "cpu")
    loader = make_loader("dali", data, 100, dtype=torch.float32, channels_last=False)
    assert loader.name == "dali"
    x, y = loader(plan, 2)
    want_x, want_y = batches.train_batch(data, plan, 2, 100)
    torch.testing.assert_close(x, want_x, rtol=0, atol=1e-5)
    assert torch.equal(y, want_y)


def test_auto_on_cuda_is_triton_exactly_when_the_kernel_can_run(monkeypatch):
    monkeypatch.setattr(preprocess_triton, "unavailable", lambda device=None: None)
    assert resolve_loader("auto", torch.device("cuda")) == "triton"
    assert resolve_loader("auto", CPU) == "torch"  # auto picks the kernel on CUDA only
    monkeypatch.setattr(preprocess_triton, "unavailable", lambda device=None: "needs triton")
    assert resolve_loader("auto", torch.device("cuda")) == "torch"
    assert resolve_loader("torch", torch.device("cuda")) == "torch"  # never swapped for the kernel


def test_triton_that_cannot_run_is_refused(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed (pip install 'fastzhang[triton]')")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(UsageError, match=r"^loader 'triton' needs a CUDA device \(or TRITON_INTERPRET=1, "
                                         r"Triton's CPU interpreter\); the device is cpu$"):
        make_loader("triton", resident(), 100, dtype=torch.float32, channels_last=False)


def test_triton_not_installed_is_refused(monkeypatch):
    monkeypatch.setattr(preprocess_triton, "triton", None)
    with pytest.raises(UsageError, match=r"^loader 'triton' needs triton: pip install 'fastzhang\[triton\]'"):
        resolve_loader("triton", torch.device("cuda"))


def test_dali_without_nvidia_dali_is_refused(monkeypatch):
    monkeypatch.setattr(dali, "available", lambda: False)
    with pytest.raises(UsageError, match=r"^loader 'dali' needs nvidia-dali: pip install 'fastzhang\[dali\]'$"):
        resolve_loader("dali", CPU)


def test_a_checkout_without_fastzhang_kernels_is_refused_not_run_on_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastzhang.kernels", None)  # as when kernels/ was never mapped (no install)
    for name in ("auto", "triton"):
        with pytest.raises(UsageError, match=r"^loader: fastzhang.kernels is missing; install this checkout"):
            resolve_loader(name, torch.device("cuda"))
    assert resolve_loader("auto", CPU) == "torch"  # off CUDA auto never looks for the kernel


def test_an_unknown_name_is_not_taken_for_torch():
    with pytest.raises(ValueError, match="loader must be one of auto, torch, triton, dali; got 'ray'"):
        resolve_loader("ray", CPU)


DECOY_CHILD = """
import torch, kernels
from pathlib import Path
from fastzhang.data import batches
from fastzhang.data.synthetic import make_synthetic
from fastzhang.kernels import preprocess_triton
from fastzhang.train.loaders import make_loader, resolve_loader

assert kernels.DECOY, "the decoy must be what `import kernels` finds"
assert Path(preprocess_triton.__file__).parent == Path({kernels_dir!r})
assert resolve_loader("auto", torch.device("cuda")) == "triton"
data = batches.ResidentData.build(make_synthetic(260, 10), randomization="none", corrupt_prob=0.0, seed=3,
                                  train_subset=None, device="cpu")
plan = batches.epoch_plan(5, 1, 260, True, "cpu")
loader = make_loader("triton", data, 100, dtype=torch.float32, channels_last=False)
assert loader.name == "triton"
for step in range(3):  # the last batch holds 60 images
    x, y = loader(plan, step)
    want_x, want_y = batches.train_batch(data, plan, step, 100)
    torch.testing.assert_close(x, want_x, rtol=0, atol=1e-5)
    assert torch.equal(y, want_y)
print("triton ok")
"""


@pytest.mark.e2e
def test_a_top_level_kernels_package_changes_nothing(tmp_path):
    """Another distribution's `kernels` first on the path: fastzhang.kernels is still ours, auto still finds it.

    Run under Triton's interpreter (the kernel on the CPU), where `available()` holds
    as it does on CUDA; before the kernels moved into fastzhang, this decoy made
    auto fall back to torch without a word.
    """
    pytest.importorskip("triton", reason="triton is not installed (pip install 'fastzhang[triton]')")
    decoy = tmp_path / "site" / "kernels"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("DECOY = True\n")
    (decoy / "preprocess_triton.py").write_text("raise ImportError('the decoy has no kernel')\n")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(ROOT)]))
    child = DECOY_CHILD.format(kernels_dir=str(ROOT / "kernels"))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(child)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "triton ok"


@pytest.mark.parametrize("kernel,reason", [
    (lambda *a, **k: (_ for _ in ()).throw(RuntimeError("PTX assembly failed\ndetails")),
     "triton: RuntimeError: PTX assembly failed"),
    (lambda images, idx, offsets, *, dtype, channels_last: torch.zeros(idx.shape[0], 3, 28, 28, dtype=dtype),
     "triton: AssertionError: Tensor-likes are not close!"),
], ids=["fails-to-compile", "wrong-values"])
def test_auto_proves_the_kernel_on_one_batch_and_falls_back_to_torch(monkeypatch, kernel, reason):
    """auto chose the kernel unasked, so a kernel that fails or disagrees must not cost the run."""
    from fastzhang.train import loaders

    monkeypatch.setattr(loaders, "resolve_loader", lambda name, device: "triton")  # as on a CUDA machine
    monkeypatch.setattr(preprocess_triton, "fused_preprocess", kernel)
    data = resident()
    loader = make_loader("auto", data, 100, dtype=torch.float32, channels_last=False)
    assert (loader.name, loader.fallback) == ("torch", reason)
    plan = batches.epoch_plan(5, 1, 260, True, "cpu")
    assert torch.equal(loader(plan, 1)[0], batches.train_batch(data, plan, 1, 100)[0])
    explicit = make_loader("triton", data, 100, dtype=torch.float32, channels_last=False)
    assert (explicit.name, explicit.fallback) == ("triton", None)  # asked for: never swapped


def test_auto_keeps_a_kernel_that_agrees(monkeypatch):
    from fastzhang.data.preprocess import preprocess
    from fastzhang.train import loaders

    monkeypatch.setattr(loaders, "resolve_loader", lambda name, device: "triton")
    monkeypatch.setattr(preprocess_triton, "fused_preprocess",
                        lambda images, idx, offsets, *, dtype, channels_last:
                        preprocess(images, offsets, dtype=dtype, channels_last=channels_last, index=idx))
    loader = make_loader("auto", resident(), 100, dtype=torch.bfloat16, channels_last=True)
    assert (loader.name, loader.fallback) == ("triton", None)
