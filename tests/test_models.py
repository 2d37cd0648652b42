"""fastzhang.models: Table 1's parameter counts, shapes, determinism, the TensorFlow LRN, fast paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastzhang.cli import main
from fastzhang.models.build import build_model
from fastzhang.train.fastpath import compile_model
from fastzhang.models.measure import count_trainable, forward_flops
from fastzhang.models.registry import MODELS
from fastzhang.models.inception import STAGES, BatchNormShift
from fastzhang.models.lrn import (
    TF_ALPHA,
    TF_BETA,
    TF_BIAS,
    TF_DEPTH_RADIUS,
    LocalResponseNorm,
    local_response_norm,
    torch_equivalent,
)

NAMES = list(MODELS)
TABLE1 = {
    "inception": 1_649_402,
    "inception_no_bn": 1_649_402,
    "alexnet": 1_387_786,
    "mlp3": 1_735_178,
    "mlp1": 1_209_866,
}


def _batch(n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: build_model(name, seed=0) for name in NAMES}


# ---------------------------------------------------------------- parameter counts


def test_registry_names_and_paper_counts():
    assert set(MODELS) == set(TABLE1)
    assert {name: entry.paper_params for name, entry in MODELS.items()} == TABLE1


@pytest.mark.parametrize("name", NAMES)
def test_trainable_count_equals_table1(models, name):
    model = models[name]
    assert count_trainable(model) == TABLE1[name]
    # Every parameter is trainable: the count is not reached by freezing or excluding anything.
    assert all(p.requires_grad for p in model.parameters())
    assert count_trainable(model) == sum(p.numel() for p in model.parameters())


def _inception_convs() -> tuple[list[tuple[int, int, int, int]], int]:
    """The paper's convs as (cin, cout, kernel, output side) in module order, and the final width."""
    convs = [(3, 96, 3, 28)]
    cin, side = 96, 28
    for kind, c1, c3 in STAGES:
        if kind == "inc":
            convs += [(cin, c1, 1, side), (cin, c3, 3, side)]
            cin = c1 + c3
        else:
            side //= 2
            convs += [(cin, c3, 3, side)]
            cin += c3
    return convs, cin


def _expected_inception_shapes(batchnorm: bool) -> list[tuple[int, ...]]:
    """Trainable tensors in module order: per conv its weight, then BN's shift or the conv bias."""
    convs, width = _inception_convs()
    shapes: list[tuple[int, ...]] = []
    for i, o, k, _ in convs:
        shapes += [(o, i, k, k), (o,)]
    return shapes + [(10, width), (10,)]


@pytest.mark.parametrize("name", ["inception", "inception_no_bn"])
def test_inception_trainable_tensors_exactly(models, name):
    batchnorm = name == "inception"
    model = models[name]
    named = list(model.named_parameters())
    assert [tuple(p.shape) for _, p in named] == _expected_inception_shapes(batchnorm)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, BatchNormShift)]
    assert len(convs) == 19
    if batchnorm:
        # No conv bias, and BatchNorm learns a shift (beta) but no scale.
        assert all(c.bias is None for c in convs)
        assert len(bns) == 19 and sum(b.bias.numel() for b in bns) == 1712
        assert [n for n, _ in named if n.endswith(".bias")][:2] == ["features.0.bn.bias", "features.1.branch1.bn.bias"]
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    else:
        assert all(c.bias is not None for c in convs) and not bns
    assert sum(c.weight.numel() for c in convs) == 1_644_320


def test_num_classes_changes_only_the_classifier():
    assert count_trainable(build_model("mlp1", num_classes=100)) == TABLE1["mlp1"] + 90 * 513
    assert build_model("alexnet", num_classes=3)(_batch()[0]).shape == (2, 3)


def test_unknown_model_name_is_refused():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet")
    with pytest.raises(ValueError, match=r"unknown model 'MLP1'.*\(did you mean mlp1\?\)"):
        build_model("MLP1")


def test_forward_flops_count_convs_and_linears_only(models):
    # AlexNet by hand: 2 FLOPs per multiply-add; the LRN's band matmul is not part of the network's count.
    convs = 2 * (5 * 5 * 3 * 64 * 28 * 28 + 5 * 5 * 64 * 64 * 14 * 14)
    linears = 2 * (3136 * 384 + 384 * 192 + 192 * 10)
    assert forward_flops(models["alexnet"]) == convs + linears == 50_226_944
    assert forward_flops(models["mlp3"]) == 2 * (2352 * 512 + 2 * 512 * 512 + 512 * 10)
    convs, width = _inception_convs()
    inception = sum(2 * k * k * i * o * side * side for i, o, k, side in convs) + 2 * width * 10
    assert forward_flops(models["inception"]) == forward_flops(models["inception_no_bn"]) == inception
    assert models["alexnet"].training  # restored after the eval-mode count


def test_cli_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split() and line.split()[0] in TABLE1}
    assert set(rows) == set(TABLE1)
    for name, count in TABLE1.items():
        assert rows[name][1:4] == [f"{count:,}", f"{count:,}", "yes"]
    assert rows["alexnet"][4] == "50.2"
    assert "LRN" in out and "not counted" in out


def test_cli_models_for_cifar100_counts_100_outputs(capsys):
    assert main(["models", "--dataset", "cifar100"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split() and line.split()[0] in TABLE1}
    # 90 more classifier rows than Table 1's 10-class models, each as wide as the layer's input plus a bias
    fan_in = {"inception": _inception_convs()[1], "inception_no_bn": _inception_convs()[1], "alexnet": 192,
              "mlp1": 512, "mlp3": 512}
    for name, count in TABLE1.items():
        assert rows[name][1:4] == [f"{count + 90 * (fan_in[name] + 1):,}", "—", "—"]
    assert out.startswith("cifar100: 100 classes\n")


# ---------------------------------------------------------------- forward, backward, determinism


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_on_cpu(models, name):
    model = models[name].train()
    x, y = _batch()
    out = model(x)
    assert out.shape == (2, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(out, y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(int(g.count_nonzero()) for g in grads) > 0
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights_different_seed_different(name):
    first, again, other = build_model(name, seed=0), build_model(name, seed=0), build_model(name, seed=1)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    weights = [k for k in first.state_dict() if k.endswith("weight")]
    assert weights and all(not torch.equal(first.state_dict()[k], other.state_dict()[k]) for k in weights)


def test_build_model_leaves_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    build_model("mlp1", seed=7)
    assert torch.equal(torch.rand(5), expected)


def test_alexnet_pools_before_its_first_relu_with_the_same_values_and_gradients():
    """SmallAlexNet.forward pools conv1's output before the ReLU (a quarter of the pixels): the paper's order
    (ReLU, then pool) gives the same bits, forward and every gradient, windows of ties and of negatives included."""

    def paper_order(m, t):
        t = m.norm1(m.pool1(torch.relu(m.conv1(t))))
        t = m.pool2(m.norm2(torch.relu(m.conv2(t))))
        return m.fc3(torch.relu(m.fc2(torch.relu(m.fc1(torch.flatten(t, 1))))))

    torch.manual_seed(0)
    model = build_model("alexnet", seed=0)
    x = torch.randn(4, 3, 28, 28)
    x[0, :, :8] = 0  # constant patches: windows of equal values, and of zero or negative pre-activations
    assert (model.conv1(x) <= 0).float().mean() > 0.3
    outputs, grads = [], []
    for forward in (paper_order, lambda m, t: m(t)):
        model.zero_grad()
        out = forward(model, x)
        out.pow(2).sum().backward()
        outputs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.equal(*outputs)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_alexnet_initialization_is_the_tensorflow_tutorials(models):
    m = models["alexnet"]
    for layer, std, bias in ((m.conv1, 5e-2, 0.0), (m.conv2, 5e-2, 0.1), (m.fc1, 0.04, 0.1), (m.fc3, 1 / 192, 0.0)):
        w = layer.weight.detach()
        assert w.abs().max() <= 2 * std  # truncated at two standard deviations
        assert 0.8 * std < w.std() < 0.95 * std  # a normal cut at 2 sd has sd 0.88 * std
        assert torch.equal(layer.bias.detach(), torch.full_like(layer.bias, bias))


def test_inception_no_bn_trains_at_paper_lr_without_diverging():
    # lr 0.1 with momentum 0.9 and no BatchNorm: He init blows up to NaN within a few steps here.
    model = build_model("inception_no_bn", seed=0).train()
    x, y = _batch(16, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(l < 2.6 for l in losses), losses
    assert losses[-1] < losses[0] - 0.1, losses


# ---------------------------------------------------------------- the TensorFlow LRN


def _lrn_reference(x: torch.Tensor, r: int, bias: float, alpha: float, beta: float) -> torch.Tensor:
    """tf.nn.local_response_normalization, one channel at a time."""
    out = torch.empty_like(x)
    channels = x.shape[1]
    for c in range(channels):
        window = x[:, max(0, c - r) : min(channels, c + r + 1)]
        sqr_sum = (window * window).sum(dim=1)
        out[:, c] = x[:, c] / (bias + alpha * sqr_sum) ** beta
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_equals_tensorflow_formula(dtype, channels_last):
    g = torch.Generator().manual_seed(0)
    # Scales from tiny to large so alpha * sqr_sum ranges from negligible to dominant.
    x = torch.randn(3, 64, 5, 6, generator=g, dtype=torch.float64) * torch.logspace(-2, 2.5, 64).view(1, 64, 1, 1)
    expected = _lrn_reference(x, TF_DEPTH_RADIUS, TF_BIAS, TF_ALPHA, TF_BETA)
    xin = x.to(dtype)
    if channels_last:
        xin = xin.contiguous(memory_format=torch.channels_last)
    got = LocalResponseNorm()(xin)
    assert got.dtype == dtype and got.shape == x.shape
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    reference = expected if dtype == torch.float64 else _lrn_reference(xin.double(), 4, 1.0, 0.001 / 9, 0.75)
    torch.testing.assert_close(got.double(), reference, rtol=1e-6, atol=0)
    assert (got.double() - x).abs().max() > 1.0  # the normalization really did something


@pytest.mark.parametrize(
    "r,bias,alpha,beta,channels", [(2, 2.0, 1e-2, 0.5, 7), (0, 1.0, 0.5, 1.0, 3), (5, 0.5, 1e-3, 0.75, 8)]
)
def test_lrn_other_parameters_and_edges(r, bias, alpha, beta, channels):
    x = torch.randn(2, channels, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4
    torch.testing.assert_close(
        local_response_norm(x, r, bias, alpha, beta), _lrn_reference(x, r, bias, alpha, beta), rtol=1e-12, atol=0
    )


def test_lrn_equals_torch_local_response_norm_with_converted_parameters():
    x = torch.randn(4, 64, 7, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 10
    torch_lrn = torch_equivalent()
    assert (torch_lrn.size, torch_lrn.k, torch_lrn.beta) == (9, 1.0, 0.75)
    assert torch_lrn.alpha == pytest.approx(0.001)
    torch.testing.assert_close(LocalResponseNorm()(x), torch_lrn(x), rtol=1e-12, atol=0)
    # And PyTorch's own parameters (alpha divided by size) would be a different layer.
    assert not torch.allclose(LocalResponseNorm()(x), nn.LocalResponseNorm(9, alpha=TF_ALPHA, beta=0.75, k=1.0)(x))


@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_gradient_matches_reference(channels_last):
    x = torch.randn(2, 12, 2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 20
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    # The written-out backward against autograd through the loop reference, and against finite differences.
    g_fast = torch.autograd.grad(local_response_norm(x).pow(2).sum(), x)[0]
    g_ref = torch.autograd.grad(_lrn_reference(x, 4, 1.0, 0.001 / 9, 0.75).pow(2).sum(), x)[0]
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=0)
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 2, 0.5, 1e-2, 0.75), (x[:, :, :1, :2],))


def test_lrn_backward_inside_autocast_stays_float32():
    x = (torch.randn(2, 64, 3, 3, generator=torch.Generator().manual_seed(5)) * 30).requires_grad_(True)
    outside = torch.autograd.grad(local_response_norm(x).pow(2).sum(), x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = torch.autograd.grad(local_response_norm(x).pow(2).sum(), x)[0]
    assert torch.equal(inside, outside)


def test_lrn_under_bf16_autocast_sums_in_float32():
    x = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(4)) * 30
    xb = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = local_response_norm(xb)
    assert got.dtype == torch.bfloat16
    # Exactly the float32 computation on the same input, rounded once: autocast's bf16 matmul was kept out.
    assert torch.equal(got, local_response_norm(xb.float()).bfloat16())
    torch.testing.assert_close(got.double(), _lrn_reference(xb.double(), 4, 1.0, 0.001 / 9, 0.75), rtol=2**-8, atol=0)


# ---------------------------------------------------------------- fast paths


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_and_bf16_autocast(models, name):
    model = models[name].eval()
    x, _ = _batch()
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        cl = model_cl(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model_cl(x.contiguous(memory_format=torch.channels_last))
    model.to(memory_format=torch.contiguous_format).train()
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)
    assert bf.shape == (2, 10) and torch.isfinite(bf).all()
    assert (bf.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05


@pytest.mark.slow  # torch.compile on CPU: ~20-40 s of Inductor codegen and C++ compilation
def test_compiled_fullgraph_equals_eager():
    model = build_model("alexnet", seed=0).eval()
    x, _ = _batch(4)
    compiled = compile_model(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # torch.compile on CPU: ~10 s for the LRN alone, forward and backward
def test_compiled_lrn_backward_under_autocast_stays_float32():
    # The traced backward takes the scan path (an autocast context would break tracing): still float32.
    x = (torch.randn(2, 64, 3, 3, generator=torch.Generator().manual_seed(6)) * 30).requires_grad_(True)
    expected = torch.autograd.grad(local_response_norm(x).pow(2).sum(), x)[0]
    compiled = compile_model(LocalResponseNorm(), fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.autograd.grad(compiled(x).pow(2).sum(), x)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
