"""Local response normalization as TensorFlow defines it, fast on CPU and GPU.

TensorFlow (tf.nn.local_response_normalization), over the channel axis c:

    sqr_sum[c] = sum(x[c'] ** 2 for c' in [c - r, c + r] inside the channels)
    out[c]     = x[c] / (bias + alpha * sqr_sum[c]) ** beta

The TensorFlow CIFAR-10 tutorial, and so the paper's small AlexNet, uses r = 4, bias = 1,
alpha = 0.001 / 9, beta = 0.75. PyTorch's nn.LocalResponseNorm divides alpha by the window
size (`torch_equivalent` builds the same layer there), pads and average-pools a 5-d view and
lets autograd differentiate that. Here the window sum is one matmul with a 0/1 band matrix
along whichever axis is innermost (NCHW and channels_last alike), and the backward is written
out: forward+backward of [128, 64, 14, 14] float32 on 1 CPU thread, NCHW / channels_last,
26 / 49 ms against nn.LocalResponseNorm's 154 / 330 (a cumulative sum: 80 / 151; the band
matmul under autograd: 40 / 86). Under torch.compile the traced backward uses the
cumulative-sum form (see _LocalResponseNorm.backward).

Precision: the sum and the power are computed in float32 (float64 for float64 inputs) with
autocast off, whatever the input dtype, and cast back; so is the backward's window sum, also
inside an autocast region. On CUDA with TF32 matmuls allowed, the forward's window sum is
TF32 (~1e-3 relative on sqr_sum, scaled by < 0.75 on the output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The TensorFlow CIFAR-10 tutorial's norm1 / norm2.
TF_DEPTH_RADIUS = 4
TF_BIAS = 1.0
TF_ALPHA = 0.001 / 9.0
TF_BETA = 0.75


def band_matrix(channels: int, radius: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[C, C] with 1 where |i - j| <= radius: (x**2 along C) @ band = TensorFlow's sqr_sum."""
    i = torch.arange(channels, device=device)
    return ((i[:, None] - i[None, :]).abs() <= radius).to(dtype)


def _window_sum(t: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Sum of t [B, C, H, W] over the channel windows of `band` (symmetric [C, C]); keeps t's layout."""
    b, c, h, w = t.shape
    if c > 1 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        # NHWC in memory: channels are the rows' inner axis, one [B*H*W, C] @ [C, C] GEMM.
        return (t.permute(0, 2, 3, 1) @ band).permute(0, 3, 1, 2)
    return (band @ t.reshape(b, c, h * w)).view(b, c, h, w)


class _LocalResponseNorm(torch.autograd.Function):
    """out = x * d**-beta, d = bias + alpha * W(x**2), W the channel-window sum.

    The backward is written out because autograd's chain through pow and the
    products costs about twice the memory passes:
    dL/dx = g * d**-beta - 2 * alpha * beta * x * W(g * out / d).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, radius: int, bias: float, alpha: float, beta: float) -> torch.Tensor:
        band = band_matrix(x.shape[1], radius, x.dtype, x.device)
        d = _window_sum(x * x, band).mul_(alpha).add_(bias)
        scale = d.pow(-beta)
        out = x * scale
        ctx.save_for_backward(x, d, scale)
        ctx.radius, ctx.alpha, ctx.beta = radius, alpha, beta
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, d, scale = ctx.saved_tensors
        grad = grad.to(x.dtype)
        t = grad * x * scale / d
        if torch.compiler.is_compiling():
            # A traced backward runs under the caller's autocast, and a context manager here breaks
            # tracing; a scan is never downcast (CUDA autocast even promotes it to float32).
            window = _window_sum_scan(t, ctx.radius)
        else:
            with torch.autocast(device_type=grad.device.type, enabled=False):  # backward() inside autocast
                window = _window_sum(t, band_matrix(x.shape[1], ctx.radius, x.dtype, x.device))
        dx = torch.addcmul(grad * scale, x, window, value=-2.0 * ctx.alpha * ctx.beta)
        return dx, None, None, None, None


def _window_sum_scan(t: torch.Tensor, radius: int) -> torch.Tensor:
    """The same window sum as a difference of cumulative sums over channels."""
    c = F.pad(t, (0, 0, 0, 0, radius + 1, radius)).cumsum(dim=1)
    return c[:, 2 * radius + 1 :] - c[:, : t.shape[1]]


def local_response_norm(
    x: torch.Tensor,
    depth_radius: int = TF_DEPTH_RADIUS,
    bias: float = TF_BIAS,
    alpha: float = TF_ALPHA,
    beta: float = TF_BETA,
) -> torch.Tensor:
    """TensorFlow's local response normalization of x [B, C, H, W] over C; returns x's dtype and layout."""
    if x.dim() != 4:
        raise ValueError(f"local_response_norm expects [B, C, H, W], got shape {tuple(x.shape)}")
    compute = torch.promote_types(x.dtype, torch.float32)
    # The window sum must not run in bf16/fp16 under autocast: it is a matmul autocast would downcast.
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = _LocalResponseNorm.apply(x.to(compute), depth_radius, float(bias), float(alpha), float(beta))
        return out.to(x.dtype)


class LocalResponseNorm(nn.Module):
    """The TensorFlow CIFAR-10 tutorial's LRN (alpha multiplies the plain sum); no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x)

    def extra_repr(self) -> str:
        return f"depth_radius={TF_DEPTH_RADIUS}, bias={TF_BIAS}, alpha={TF_ALPHA:.6g}, beta={TF_BETA}"


def torch_equivalent() -> nn.LocalResponseNorm:
    """The same layer as PyTorch's nn.LocalResponseNorm (which divides alpha by the window size)."""
    size = 2 * TF_DEPTH_RADIUS + 1
    return nn.LocalResponseNorm(size=size, alpha=TF_ALPHA * size, beta=TF_BETA, k=TF_BIAS)
