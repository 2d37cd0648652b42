"""The Triton kernel equals the torch reference: on CUDA when present, else on the CPU by Triton's interpreter.

Triton picks its interpreter from TRITON_INTERPRET=1 when triton itself is first
imported, so the kernel runs in one child process started with the variable set:
the parent writes every case's inputs to a file, the child writes the kernel's
outputs, and the tests compare them with `preprocess` here. Input validation
happens before any launch, so those tests call the kernel module directly.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastzhang.data.preprocess import MIN_STD, preprocess
from fastzhang.errors import UsageError

pytest.importorskip("triton", reason="triton is not installed (pip install 'fastzhang[triton]')")

from fastzhang.kernels.preprocess_triton import fused_preprocess, unavailable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BF16_UNIT_ROUNDOFF = 2.0**-8
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CHILD = """
import sys, torch
from fastzhang.kernels.preprocess_triton import available, fused_preprocess
assert available()
cases = torch.load(sys.argv[1])
out = {name: fused_preprocess(c["images"], c["idx"], c["offsets"],
                              dtype=getattr(torch, c["dtype"]), channels_last=c["channels_last"])
       for name, c in cases.items()}
torch.save(out, sys.argv[2])
"""


def random_batch(n=40, b=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    idx = torch.randint(0, n, (b,), generator=g)
    idx[1] = idx[0]  # repeats are legal: an index may appear twice in a batch
    idx[2] = idx[0]
    offsets = torch.randint(0, 5, (b, 2), generator=g)
    offsets[0] = torch.tensor([0, 4])  # both extremes of the offset range
    offsets[1] = torch.tensor([4, 0])
    return images, idx, offsets


def flat_batch():
    images = torch.full((3, 3, 32, 32), 77, dtype=torch.uint8)
    images[1, 0, 10, 10] = 78  # std ~ 8e-5 in [0, 1] units: far below the floor 1/sqrt(N)
    images[2] = torch.arange(256, dtype=torch.uint8).repeat(12).view(3, 32, 32)
    return images, torch.tensor([0, 1, 2]), torch.full((3, 2), 2)


def make_cases():
    cases = {}
    for seed, dtype in enumerate(DTYPES):
        images, idx, offsets = random_batch(seed=seed)
        for cl in (False, True):
            cases[f"{dtype}-cl{int(cl)}"] = dict(images=images, idx=idx, offsets=offsets, dtype=dtype, channels_last=cl)
    images, idx, offsets = random_batch(seed=3)
    cases["repeat"] = dict(images=images, idx=idx[:1].repeat(3), offsets=offsets[:1].repeat(3, 1),
                           dtype="float32", channels_last=False)
    cases["seed3"] = dict(images=images, idx=idx, offsets=offsets, dtype="float32", channels_last=False)
    images, idx, offsets = flat_batch()
    cases["flat"] = dict(images=images, idx=idx, offsets=offsets, dtype="float32", channels_last=False)
    cases["empty"] = dict(images=images, idx=idx[:0], offsets=offsets[:0], dtype="float32", channels_last=False)
    return cases


def run_on_cuda(cases):
    """The kernel compiled for the GPU, in this process; outputs copied back (strides kept)."""
    out = {}
    for name, c in cases.items():
        got = fused_preprocess(c["images"].cuda(), c["idx"].cuda(), c["offsets"].cuda(),
                               dtype=DTYPES[c["dtype"]], channels_last=c["channels_last"])
        out[name] = got.cpu()
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, device):
    """(cases, outputs): the kernel's outputs for every case, on the `device` fixture's GPU when there is
    one (`make gpu-check`: the tests marked cuda), else computed by the interpreter."""
    cases = make_cases()
    if device.type == "cuda":
        return cases, run_on_cuda(cases)
    tmp = tmp_path_factory.mktemp("triton")
    torch.save(cases, tmp / "in.pt")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(
        filter(None, (os.environ.get("PYTHONPATH"), str(ROOT)))))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "in.pt"), str(tmp / "out.pt")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cases, torch.load(tmp / "out.pt")


def reference(case, dtype=None, channels_last=None):
    dtype = DTYPES[case["dtype"]] if dtype is None else dtype
    cl = case["channels_last"] if channels_last is None else channels_last
    return preprocess(case["images"][case["idx"]], case["offsets"], dtype=dtype, channels_last=cl)


@pytest.mark.cuda
@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_matches_reference(run, channels_last):
    cases, out = run
    name = f"float32-cl{int(channels_last)}"
    got, want = out[name], reference(cases[name])
    assert got.shape == (24, 3, 28, 28) and got.dtype == torch.float32
    assert got.stride() == want.stride()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("channels_last", [False, True])
def test_bfloat16_is_float32_rounded_once(run, channels_last):
    cases, out = run
    name = f"bfloat16-cl{int(channels_last)}"
    got, want16 = out[name], reference(cases[name])
    want32 = reference(cases[name], dtype=torch.float32)
    assert got.dtype == torch.bfloat16 and got.stride() == want16.stride()
    err = (got.float() - want32).abs()
    assert bool((err <= BF16_UNIT_ROUNDOFF * want32.abs() + 1e-5).all()), float(err.max())
    # Only values on a bf16 rounding boundary, where float32 last bits decide, may differ.
    assert (got != want16).float().mean().item() < 1e-3


@pytest.mark.cuda
def test_channels_last_layout(run):
    _, out = run
    nchw, nhwc = out["float32-cl0"], out["float32-cl1"]
    assert nchw.is_contiguous() and not nhwc.is_contiguous()
    assert nhwc.stride() == (3 * 28 * 28, 1, 28 * 3, 3)
    assert torch.equal(nchw, nhwc)


@pytest.mark.cuda
def test_repeated_indices_and_offsets(run):
    cases, out = run
    rows, idx = out["seed3"], cases["seed3"]["idx"]
    assert idx[0] == idx[1] == idx[2]
    assert not torch.equal(rows[0], rows[1])  # one image, two offsets: two crops
    repeat = out["repeat"]
    assert torch.equal(repeat[0], repeat[1]) and torch.equal(repeat[0], repeat[2])
    assert torch.equal(repeat[0], rows[0])
    torch.testing.assert_close(rows, reference(cases["seed3"]), rtol=0, atol=1e-5)


@pytest.mark.cuda
def test_flat_and_nearly_flat_images_use_the_std_floor(run):
    cases, out = run
    got, images = out["flat"], cases["flat"]["images"]
    assert torch.equal(got[0], torch.zeros(3, 28, 28))
    x = images[1:2, :, 2:30, 2:30].float() / 255
    torch.testing.assert_close(got[1:2], (x - x.mean()) / MIN_STD, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, reference(cases["flat"]), rtol=0, atol=1e-5)


@pytest.mark.cuda
def test_empty_batch(run):
    _, out = run
    assert out["empty"].shape == (0, 3, 28, 28)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda im, i, o: (im.float(), i, o), "images_u8"),
        (lambda im, i, o: (im, i.int(), o), "idx"),
        (lambda im, i, o: (im, i, o[:-1]), "offsets"),
        (lambda im, i, o: (im, i, o + 1), r"offsets: expected values in \[0, 4\]"),
        (lambda im, i, o: (im, i + 1000, o), r"idx: expected values in \[0, 40\)"),
    ],
)
def test_bad_inputs_are_refused_before_launch(change, message):
    images, idx, offsets = random_batch()
    offsets[0] = torch.tensor([4, 4])
    with pytest.raises(ValueError, match=message):
        fused_preprocess(*change(images, idx, offsets))


def test_cpu_tensors_without_the_interpreter_are_a_usage_error(monkeypatch):
    """Refused before launch, with or without CUDA on the machine (a GPU kernel must not get host pointers)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert unavailable("cpu") == "needs a CUDA device (or TRITON_INTERPRET=1, Triton's CPU interpreter)"
    with pytest.raises(UsageError, match=r"the Triton kernel needs a CUDA device .*; the images are on cpu"):
        fused_preprocess(*random_batch())
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert unavailable("cpu") is None


def loader_epoch(device: torch.device) -> None:
    """One epoch through the real loaders, "triton" against "torch", random crops, the last batch partial,
    in both dtypes and layouts: float32 within 1e-5; bfloat16 the float32 value rounded once."""
    from fastzhang.data.batches import ResidentData, epoch_plan, steps_per_epoch
    from fastzhang.data.synthetic import make_synthetic
    from fastzhang.train.loaders import make_loader

    n, batch = (1000, 128) if device.type == "cuda" else (40, 16)  # the last batch holds 104 / 8
    data = ResidentData.build(make_synthetic(n, 16), randomization="none", corrupt_prob=0.0, seed=0,
                              train_subset=None, device=device)
    plan = epoch_plan(0, 1, n, True, device)
    assert int(plan.offsets.min()) == 0 and int(plan.offsets.max()) == 4
    for dtype in DTYPES.values():
        for cl in (False, True):
            loaders = [make_loader(name, data, batch, dtype=kind, channels_last=cl)
                       for name, kind in (("triton", dtype), ("torch", dtype), ("torch", torch.float32))]
            assert loaders[0].name == "triton" and not loaders[0].fallback
            for step in range(steps_per_epoch(n, batch)):
                (x, y), (want, want_y), (want32, _) = (loader(plan, step) for loader in loaders)
                x, want, want32 = x.cpu(), want.cpu(), want32.cpu()
                assert x.stride() == want.stride() and torch.equal(y.cpu(), want_y.cpu())
                err = (x.float() - want32).abs()
                if dtype == torch.float32:
                    assert err.max() <= 1e-5, (step, float(err.max()))
                else:
                    assert bool((err <= BF16_UNIT_ROUNDOFF * want32.abs() + 1e-5).all()), step
                    assert float((x != want).float().mean()) < 1e-3, step


@pytest.mark.cuda
def test_an_epoch_through_the_triton_loader_matches_the_torch_loader(device, tmp_path):
    if device.type == "cuda":
        return loader_epoch(device)
    child = f"import sys, torch; sys.path.insert(0, {str(ROOT / 'tests')!r}); import test_kernels; " \
            "test_kernels.loader_epoch(torch.device('cpu')); print('ok')"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(
        filter(None, (os.environ.get("PYTHONPATH"), str(ROOT)))))
    proc = subprocess.run([sys.executable, "-c", child], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
