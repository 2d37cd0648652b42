"""The DALI loader gives the torch path's batches: same plan, same offsets, same values."""

from types import SimpleNamespace

import pytest
import torch

from fastzhang.data import dali
from fastzhang.data.preprocess import MIN_STD, preprocess
from fastzhang.errors import UsageError

needs_dali = pytest.mark.skipif(not dali.available(),
                                reason="nvidia-dali is not installed (pip install 'fastzhang[dali]')")
BF16_UNIT_ROUNDOFF = 2.0**-8


def resident(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(
        train_x=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
        train_y=torch.randint(0, 10, (n,), generator=g),
    )


def plan(n=300, seed=1):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(order=torch.randperm(n, generator=g), offsets=torch.randint(0, 5, (n, 2), generator=g))


def expected(data, p, lo, hi, **kw):
    idx = p.order[lo:hi]
    return preprocess(data.train_x[idx], p.offsets[lo:hi], **kw), data.train_y[idx]


@needs_dali
def test_every_batch_of_an_epoch_matches_preprocess():
    data, p = resident(), plan()
    loader = dali.DaliLoader(data, 128, device="cpu")
    for step, (lo, hi) in enumerate([(0, 128), (128, 256), (256, 300)]):  # the last batch holds 300 mod 128
        x, y = loader.train_batch(p, step)
        want_x, want_y = expected(data, p, lo, hi)
        assert x.shape == (hi - lo, 3, 28, 28) and x.dtype == torch.float32 and x.is_contiguous()
        torch.testing.assert_close(x, want_x, rtol=0, atol=1e-5)
        assert torch.equal(y, want_y)


@needs_dali
def test_a_step_is_the_same_whatever_came_before():
    data, p = resident(), plan()
    first = dali.DaliLoader(data, 128, device="cpu")
    for step in range(3):
        sequential = first.train_batch(p, step)[0]
    # Another epoch: same order, other offsets. Its offsets must be used, then dropped again.
    other = SimpleNamespace(order=p.order, offsets=(p.offsets + 1) % 5)
    fresh = dali.DaliLoader(data, 128, device="cpu")
    other_x = fresh.train_batch(other, 2)[0]
    torch.testing.assert_close(other_x, expected(data, other, 256, 300)[0], rtol=0, atol=1e-5)
    assert torch.equal(fresh.train_batch(p, 2)[0], sequential)


@needs_dali
def test_bfloat16_channels_last_is_the_float32_batch_rounded_once():
    data, p = resident(), plan()
    x, _ = dali.DaliLoader(data, 128, device="cpu").train_batch(p, 1, dtype=torch.bfloat16, channels_last=True)
    want16, _ = expected(data, p, 128, 256, dtype=torch.bfloat16, channels_last=True)
    want32, _ = expected(data, p, 128, 256)
    assert x.dtype == torch.bfloat16 and x.stride() == want16.stride() == (2352, 1, 84, 3)
    err = (x.float() - want32).abs()
    assert bool((err <= BF16_UNIT_ROUNDOFF * want32.abs() + 1e-5).all()), float(err.max())
    assert (x != want16).float().mean().item() < 1e-3  # only float32 rounding ties may differ


@needs_dali
def test_flat_images_use_the_std_floor():
    data = SimpleNamespace(train_x=torch.full((2, 3, 32, 32), 200, dtype=torch.uint8), train_y=torch.tensor([3, 4]))
    data.train_x[1, 2, 5, 7] = 201  # std ~ 8e-5, far below the floor 1/sqrt(N)
    p = SimpleNamespace(order=torch.tensor([0, 1]), offsets=torch.tensor([[4, 4], [1, 3]]))
    x, y = dali.DaliLoader(data, 2, device="cpu").train_batch(p, 0)
    # A flat image whitens to zero, up to the float32 rounding of its mean (as in preprocess).
    torch.testing.assert_close(x[0], torch.zeros(3, 28, 28), rtol=0, atol=1e-5)
    crop = data.train_x[1, :, 1:29, 3:31].float() / 255
    torch.testing.assert_close(x[1], (crop - crop.mean()) / MIN_STD, rtol=0, atol=1e-5)
    assert torch.equal(y, torch.tensor([3, 4]))


@needs_dali
@pytest.mark.parametrize("random_crop", [True, False])
def test_matches_the_resident_torch_loader(random_crop):
    batches = pytest.importorskip("fastzhang.data.batches", reason="fastzhang.data.batches is not available")
    from fastzhang.data.synthetic import make_synthetic

    data = batches.ResidentData.build(make_synthetic(260, 10), randomization="none", corrupt_prob=0.0, seed=3,
                                      train_subset=None, device="cpu")
    loader = dali.DaliLoader(data, 100, device="cpu")
    for epoch in (1, 2):
        p = batches.epoch_plan(5, epoch, 260, random_crop, "cpu")
        for step in range(batches.steps_per_epoch(260, 100)):
            want_x, want_y = batches.train_batch(data, p, step, 100, dtype=torch.float32, channels_last=False)
            x, y = loader.train_batch(p, step)
            torch.testing.assert_close(x, want_x, rtol=0, atol=1e-5)
            assert torch.equal(y, want_y)


@needs_dali
def test_bad_step_and_device_are_refused():
    data, p = resident(), plan()
    loader = dali.DaliLoader(data, 128, device="cpu")
    with pytest.raises(ValueError, match=r"step 3 outside 0..2"):
        loader.train_batch(p, 3)
    with pytest.raises(ValueError, match="epoch plan covers 200 images but the data set has 300"):
        loader.train_batch(plan(n=200), 0)
    with pytest.raises(UsageError, match="device: the data lives on cpu"):
        dali.DaliLoader(data, 128, device="cuda")


def test_missing_dali_is_a_usage_error_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(dali, "available", lambda: False)
    with pytest.raises(UsageError, match=r"needs nvidia-dali: pip install 'fastzhang\[dali\]'"):
        dali.DaliLoader(resident(), 128, device="cpu")


@pytest.mark.e2e
@needs_dali
def test_fastzhang_run_with_dali_gives_the_torch_loaders_metrics(tmp_path):
    """`fastzhang run --loader dali` end to end (real CLI processes) against `--loader torch`.

    Not bitwise: DALI's reductions sum in another order, so its batches differ
    from preprocess's in the last bits (max |diff| 6e-6 on the synthetic set,
    bench/NOTES.md §2b). Over two epochs of mlp1 those bits move the losses by
    ~1e-6 relative; accuracies are counts of images and stay equal.
    """
    import json

    from conftest import Fz

    runs = {}
    for loader in ("torch", "dali"):  # side by side, a thread each
        (tmp_path / loader).mkdir()
        runs[loader] = Fz(["run", "--model", "mlp1", "--dataset", "synthetic", "--epochs", "2", "--random-crop",
                           "--device", "cpu", "--amp", "off", "--loader", loader, "--quiet"], tmp_path / loader)
    metrics = {}
    for loader, fz in runs.items():
        assert fz.wait(timeout=300) == 0, fz.stderr[-2000:]
        (path,) = (tmp_path / loader / "results").glob("*.json")
        metrics[loader] = json.loads(path.read_text())["metrics"]
    torch_m, dali_m = metrics["torch"], metrics["dali"]
    for key in ("train_acc", "test_acc", "steps", "lr"):
        assert dali_m[key] == torch_m[key], key
    for key in ("train_loss", "test_loss"):
        assert dali_m[key] == pytest.approx(torch_m[key], rel=1e-4), key


@needs_dali
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU pipeline needs CUDA (make bench-gpu runs it on a GPU machine)")
def test_gpu_pipeline_matches_the_resident_torch_loader_on_cuda():
    from fastzhang.data import batches
    from fastzhang.data.synthetic import make_synthetic

    data = batches.ResidentData.build(make_synthetic(260, 10), randomization="none", corrupt_prob=0.0, seed=3,
                                      train_subset=None, device="cuda")
    loader = dali.DaliLoader(data, 100, device="cuda")
    p = batches.epoch_plan(5, 1, 260, True, "cuda")
    for step in range(batches.steps_per_epoch(260, 100)):
        for dtype, cl in ((torch.float32, False), (torch.bfloat16, True)):
            want_x, want_y = batches.train_batch(data, p, step, 100, dtype=dtype, channels_last=cl)
            x, y = loader.train_batch(p, step, dtype=dtype, channels_last=cl)
            assert x.device.type == "cuda" and x.dtype == dtype and x.stride() == want_x.stride()
            rtol = 2 * BF16_UNIT_ROUNDOFF if dtype == torch.bfloat16 else 0  # one bf16 ulp apart at most
            torch.testing.assert_close(x.float(), want_x.float(), rtol=rtol, atol=1e-5)
            assert torch.equal(y, want_y)


# ------------------------------------------------------------------------------------------
# Feeding ahead: step k + 1 is fed while step k trains; any order of calls gives the same batches.

N, BATCH = 260, 100  # three steps an epoch, the last one of 60 images


@pytest.fixture(scope="module")
def synthetic():
    """(data, plans, reference): reference[(epoch, step)] is the batch a fresh pipeline gives for that step alone."""
    from fastzhang.data import batches
    from fastzhang.data.synthetic import make_synthetic

    data = batches.ResidentData.build(make_synthetic(N, 10), randomization="none", corrupt_prob=0.0, seed=3,
                                      train_subset=None, device="cpu")
    plans = {epoch: batches.epoch_plan(5, epoch, N, True, "cpu") for epoch in (1, 2)}
    reference = {(epoch, step): dali.DaliLoader(data, BATCH, device="cpu").train_batch(plans[epoch], step)
                 for epoch in plans for step in range(batches.steps_per_epoch(N, BATCH))}
    return data, plans, reference


def assert_reference(loader, plan, key, reference):
    x, y = loader.train_batch(plan, key[1])
    assert torch.equal(x, reference[key][0]) and torch.equal(y, reference[key][1]), key


@needs_dali
def test_sequential_epochs_equal_the_step_alone_and_the_torch_loader(synthetic):
    from fastzhang.data import batches

    data, plans, reference = synthetic
    loader = dali.DaliLoader(data, BATCH, device="cpu")
    for epoch in (1, 2):  # across the epoch boundary, each epoch ending with its partial batch
        for step in range(3):
            assert_reference(loader, plans[epoch], (epoch, step), reference)
            want_x, want_y = batches.train_batch(data, plans[epoch], step, BATCH)
            torch.testing.assert_close(reference[(epoch, step)][0], want_x, rtol=0, atol=1e-5)
            assert torch.equal(reference[(epoch, step)][1], want_y)


@needs_dali
def test_random_access_and_resumes_give_the_same_batches(synthetic):
    from fastzhang.data import batches

    data, plans, reference = synthetic
    loader = dali.DaliLoader(data, BATCH, device="cpu")
    for key in [(1, 2), (2, 0), (1, 0), (1, 0), (2, 2), (2, 1), (1, 1), (2, 0), (2, 1), (2, 2)]:
        assert_reference(loader, plans[key[0]], key, reference)
    # A resume mid-epoch: a new process regenerates the plan and starts at the saved step.
    resumed = dali.DaliLoader(data, BATCH, device="cpu")
    again = batches.epoch_plan(5, 2, N, True, "cpu")
    for step in (1, 2):
        assert_reference(resumed, again, (2, step), reference)
    assert_reference(loader, again, (2, 1), reference)  # an equal plan, but not the one fed ahead for


class Spy:
    """Records the pipeline's feeds (by step), schedules and outputs, and still calls DALI for each."""

    def __init__(self, monkeypatch, loader, plan, fail_schedule=None):
        self.log, self.plan, self.fail_schedule = [], plan, fail_schedule
        pipe = loader._pipe
        feed, schedule, outputs = pipe.feed_input, pipe.schedule_run, pipe.outputs

        def feed_input(name, data, **kw):
            if name == "anchors":
                offsets = self.plan.offsets.to(torch.int32)
                self.log.append(next(f"feed {s}" for s in range(3)
                                     if torch.equal(torch.from_numpy(data), offsets[s * BATCH:(s + 1) * BATCH])))
            return feed(name, data, **kw)

        def schedule_run():
            self.log.append("schedule")
            if self.fail_schedule is not None and self.log.count("schedule") == self.fail_schedule:
                raise RuntimeError("injected")
            return schedule()

        def take(*a, **kw):
            self.log.append("outputs")
            return outputs(*a, **kw)

        monkeypatch.setattr(pipe, "feed_input", feed_input)
        monkeypatch.setattr(pipe, "schedule_run", schedule_run)
        monkeypatch.setattr(pipe, "outputs", take)


@needs_dali
def test_step_k_plus_1_is_fed_and_scheduled_before_step_k_is_returned(synthetic, monkeypatch):
    data, plans, reference = synthetic
    loader = dali.DaliLoader(data, BATCH, device="cpu")
    spy = Spy(monkeypatch, loader, plans[1])
    assert_reference(loader, plans[1], (1, 0), reference)
    assert spy.log == ["feed 0", "schedule", "outputs", "feed 1", "schedule"]
    del spy.log[:]
    assert_reference(loader, plans[1], (1, 1), reference)
    assert spy.log == ["outputs", "feed 2", "schedule"]  # step 1 was waiting: only step 2 is fed
    del spy.log[:]
    assert_reference(loader, plans[1], (1, 2), reference)
    assert spy.log == ["outputs"]  # the last step: the next epoch's plan is the caller's
    del spy.log[:]
    assert_reference(loader, plans[1], (1, 0), reference)
    assert_reference(loader, plans[1], (1, 2), reference)  # not the step fed ahead: it is dropped unused
    assert spy.log == ["feed 0", "schedule", "outputs", "feed 1", "schedule", "outputs", "feed 2", "schedule",
                       "outputs"]


@needs_dali
def test_a_call_that_fails_half_fed_does_not_shift_later_batches(synthetic, monkeypatch):
    data, plans, reference = synthetic
    loader = dali.DaliLoader(data, BATCH, device="cpu")
    spy = Spy(monkeypatch, loader, plans[1], fail_schedule=2)  # step 1 fed ahead, its run never scheduled
    with pytest.raises(RuntimeError, match="injected"):
        loader.train_batch(plans[1], 0)
    assert spy.log == ["feed 0", "schedule", "outputs", "feed 1", "schedule"]
    # The old pipeline still holds step 1's inputs; a fresh one gives step 2, not step 1.
    assert_reference(loader, plans[1], (1, 2), reference)
    assert_reference(loader, plans[1], (1, 0), reference)


@needs_dali
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU pipeline needs CUDA (make bench-gpu runs it on a GPU machine)")
def test_cuda_batches_fed_ahead_are_right_behind_queued_work():
    """Sequential steps with a long queue of torch work after each, as training leaves it.

    Step k + 1 is gathered and fed on torch's stream, then DALI runs it on its own
    stream while torch's stream is busy: a missing wait on either side (DALI reading
    the gather before it is done, or reusing step k's output buffer before torch's
    copy of it) shows up as wrong values.
    """
    from fastzhang.data import batches
    from fastzhang.data.synthetic import make_synthetic

    data = batches.ResidentData.build(make_synthetic(N, 10), randomization="none", corrupt_prob=0.0, seed=3,
                                      train_subset=None, device="cuda")
    loader = dali.DaliLoader(data, BATCH, device="cuda")
    plans = {epoch: batches.epoch_plan(5, epoch, N, True, "cuda") for epoch in (1, 2)}
    got = {}
    busy = torch.randn(2048, 2048, device="cuda")
    for epoch in (1, 2):
        for step in range(3):
            got[(epoch, step)] = loader.train_batch(plans[epoch], step)
            for _ in range(20):  # milliseconds of work queued behind the batch
                busy = busy @ busy
                busy = busy / busy.norm()
    torch.cuda.synchronize()
    for (epoch, step), (x, y) in got.items():
        want_x, want_y = batches.train_batch(data, plans[epoch], step, BATCH)
        torch.testing.assert_close(x, want_x, rtol=0, atol=1e-5)
        assert torch.equal(y, want_y)
