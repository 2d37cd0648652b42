"""Local response normalization as TensorFlow defines it, fast on CPU and GPU.

TensorFlow (tf.nn.local_response_normalization), over the channel axis c:

    sqr_sum[c] = sum(x[c'] ** 2 for c' in [c - r, c + r] inside the channels)
    out[c]     = x[c] / (bias + alpha * sqr_sum[c]) ** beta

The TensorFlow CIFAR-10 tutorial, and so the paper's small AlexNet, uses r = 4, bias = 1,
alpha = 0.001 / 9, beta = 0.75. PyTorch's nn.LocalResponseNorm divides alpha by the window
size (`torch_equivalent` builds the same layer there), pads and average-pools a 5-d view and
lets autograd differentiate that.

Here every step is one memory pass with the channel axis wherever it lies in memory (NCHW and
channels_last alike): x**2 is written into a buffer padded with zeros along the channels, the
window sum of 9 is a sum of 3 adjacent channels, then of 3 such sums 3 apart, over that flat
buffer (4 contiguous adds, where a 0/1 band-matrix GEMM in float32 costs twice as much), the
power 0.75 is rsqrt(d) * sqrt(rsqrt(d)) (pow's exp/log costs as much as 7 passes), and the
backward is written out and reads what the forward kept. The forward's and the backward's work
past their padded products (the "tails") runs eager, or compiled by inductor into one loop nest
each (`Kernels`, what `compile: auto` does on a CPU: train/fastpath.py); evaluation (no gradient
wanted) keeps nothing and stays eager. Forward+backward of [128, 64, 14, 14] bf16 channels_last,
2 threads of a Zen 4 EPYC: 15.8 ms before, 8.2 eager, 4.8 compiled (bench/NOTES.md §13).

Precision: the window sum and the power are computed in float32 (float64 for float64 inputs),
whatever the input dtype, and the output is rounded once to the input's dtype; so is the
backward's window sum. Autocast never touches it: there is no matmul left to downcast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# The TensorFlow CIFAR-10 tutorial's norm1 / norm2.
TF_DEPTH_RADIUS = 4
TF_BIAS = 1.0
TF_ALPHA = 0.001 / 9.0
TF_BETA = 0.75


def _channels_innermost(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A contiguous view of x [B, C, H, W] and its channel axis: NHWC (3) for channels_last, else NCHW (1)."""
    if x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return x.permute(0, 2, 3, 1), 3
    return x.contiguous(), 1


def _as_layout(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x [B, C, H, W] as the contiguous view `_channels_innermost` gave for axis `dim` (a copy if laid out otherwise)."""
    return x.permute(0, 2, 3, 1).contiguous() if dim == 3 else x.contiguous()


def _restore(view: torch.Tensor, dim: int) -> torch.Tensor:
    return view.permute(0, 3, 1, 2) if dim == 3 else view


def padded_product(a: torch.Tensor, b: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """a * b (contiguous, alike) with `radius` zeros on each side of `dim`, written in place: no copy to pad it."""
    shape = list(a.shape)
    shape[dim] += 2 * radius
    if torch.compiler.is_compiling():  # tracing refuses a strided out=; inductor fuses the pad anyway
        return F.pad(a * b, [0, 0] * (a.dim() - 1 - dim) + [radius, radius])
    buffer = a.new_empty(shape)
    buffer.narrow(dim, 0, radius).zero_()
    buffer.narrow(dim, shape[dim] - radius, radius).zero_()
    torch.mul(a, b, out=buffer.narrow(dim, radius, a.shape[dim]))
    return buffer


def window_sum(buffer: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """For the values t padded by `radius` zeros along `dim` of `buffer` (`padded_product`): t's window sums
    sum(t[c'] for c' in [c - radius, c + radius]) for every c, a view shaped like t.

    The adds run over the flat buffer at offsets of whole channel strides: contiguous and vectorized,
    where slices along the channel axis would be strided; entries that mix rows are never read.
    """
    size, step = 2 * radius + 1, buffer.stride(dim)
    flat = buffer.view(-1)
    inner = 3 if size % 3 == 0 else 1  # a window of 3k channels: k sums of 3 adjacent ones, 3 apart
    if inner == 3:
        m = flat.numel() - 2 * step
        flat = torch.add(flat[:m], flat[step : m + step]).add_(flat[2 * step : m + 2 * step])
    m = flat.numel() - (size - inner) * step
    total = flat[:m].clone() if size == inner else torch.add(flat[:m], flat[inner * step : m + inner * step])
    for k in range(2 * inner, size, inner):
        total.add_(flat[k * step : m + k * step])
    shape = list(buffer.shape)
    shape[dim] -= 2 * radius
    return total.as_strided(shape, buffer.stride())


def _neg_pow(d: torch.Tensor, beta: float) -> torch.Tensor:
    """d ** -beta; for the tutorial's 0.75 as rsqrt(d) * d ** -0.25, the same function at a quarter of the cost."""
    if beta != 0.75:
        return d.pow(-beta)
    scale = torch.rsqrt(d)
    return scale.mul_(scale.sqrt())


def _forward_tail(squares, v, radius: int, bias: float, alpha: float, beta: float, dim: int, dtype, keep: bool):
    """From x's channel-innermost view v (float32/64) and its padded squares: (out in `dtype`, what the
    backward reads or None). The forward's work past its first two passes: what `Kernels` compiles."""
    d = torch.add(bias, window_sum(squares, radius, dim), alpha=alpha)
    scale = _neg_pow(d, beta)
    out = v * scale
    return out.to(dtype), ((scale, out / d) if keep else None)  # out / d = x * d**-(beta + 1): g's factor


def _backward_tail(products, g, scale, v, radius: int, alpha: float, beta: float, dim: int, dtype):
    """dx in `dtype` from g, the padded products g * x * d**-(beta + 1) and the saved scale and v."""
    window = window_sum(products, radius, dim) * v
    return torch.mul(g, scale).add_(window, alpha=-2.0 * alpha * beta).to(dtype)


@dataclass(frozen=True)
class Kernels:
    """The two tails a training step runs: eager (EAGER), or each compiled to one loop nest per batch shape
    by `compiled` (train/fastpath.py decides), where eager makes ~10 passes over memory (bench/NOTES.md §13)."""

    forward: Callable = _forward_tail
    backward: Callable = _backward_tail

    @classmethod
    def compiled(cls, compile: Callable[[Callable], Callable]) -> "Kernels":
        return cls(compile(_forward_tail), compile(_backward_tail))


EAGER = Kernels()


def _forward(x: torch.Tensor, radius: int, bias: float, alpha: float, beta: float, keep: bool, kernels: Kernels):
    """(out in x's dtype and layout, the channel axis, what the backward reads or None), in float32 or float64."""
    v, dim = _channels_innermost(x.to(torch.promote_types(x.dtype, torch.float32)))
    out, saved = kernels.forward(padded_product(v, v, radius, dim), v, radius, bias, alpha, beta, dim, x.dtype, keep)
    return _restore(out, dim), dim, (v, *saved) if keep else None


class _LocalResponseNorm(torch.autograd.Function):
    """out = x * d**-beta, d = bias + alpha * W(x**2), W the channel-window sum.

    dL/dx = g * d**-beta - 2 * alpha * beta * x * W(g * x * d**-(beta + 1)): five passes and one
    window sum, where autograd's chain through pow and the products costs about twice the passes.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, radius: int, bias: float, alpha: float, beta: float,
                kernels: Kernels) -> torch.Tensor:
        out, dim, saved = _forward(x, radius, bias, alpha, beta, True, kernels)
        ctx.save_for_backward(*saved)
        ctx.radius, ctx.alpha, ctx.beta, ctx.dim, ctx.dtype, ctx.kernels = radius, alpha, beta, dim, x.dtype, kernels
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, scale, factor = ctx.saved_tensors
        g = _as_layout(grad.to(v.dtype), ctx.dim)
        products = padded_product(g, factor, ctx.radius, ctx.dim)
        dx = ctx.kernels.backward(products, g, scale, v, ctx.radius, ctx.alpha, ctx.beta, ctx.dim, ctx.dtype)
        return _restore(dx, ctx.dim), None, None, None, None, None


def local_response_norm(
    x: torch.Tensor,
    depth_radius: int = TF_DEPTH_RADIUS,
    bias: float = TF_BIAS,
    alpha: float = TF_ALPHA,
    beta: float = TF_BETA,
    kernels: Kernels = EAGER,
) -> torch.Tensor:
    """TensorFlow's local response normalization of x [B, C, H, W] over C; returns x's dtype and layout."""
    if x.dim() != 4:
        raise ValueError(f"local_response_norm expects [B, C, H, W], got shape {tuple(x.shape)}")
    args = (depth_radius, float(bias), float(alpha), float(beta))
    if torch.is_grad_enabled() and x.requires_grad:
        return _LocalResponseNorm.apply(x, *args, kernels)
    return _forward(x, *args, False, EAGER)[0]  # evaluation: nothing kept; never compiled, so never a compile error


class LocalResponseNorm(nn.Module):
    """The TensorFlow CIFAR-10 tutorial's LRN (alpha multiplies the plain sum); no parameters.
    `kernels`: the training step's tails (`use_kernels`), eager unless a run compiles them."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels = EAGER

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, kernels=self.kernels)

    def extra_repr(self) -> str:
        return f"depth_radius={TF_DEPTH_RADIUS}, bias={TF_BIAS}, alpha={TF_ALPHA:.6g}, beta={TF_BETA}"


def use_kernels(model: nn.Module, kernels: Kernels) -> int:
    """Give every LocalResponseNorm of `model` these kernels (one compiled pair serves them all); how many."""
    layers = [m for m in model.modules() if isinstance(m, LocalResponseNorm)]
    for layer in layers:
        layer.kernels = kernels
    return len(layers)


def torch_equivalent() -> nn.LocalResponseNorm:
    """The same layer as PyTorch's nn.LocalResponseNorm (which divides alpha by the window size)."""
    size = 2 * TF_DEPTH_RADIUS + 1
    return nn.LocalResponseNorm(size=size, alpha=TF_ALPHA * size, beta=TF_BETA, k=TF_BIAS)
