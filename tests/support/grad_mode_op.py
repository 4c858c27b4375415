"""A CPU stand-in for the GPU attention kernels whose forward depends on grad mode.

scaled_dot_product_attention asks its efficient and cuDNN kernels for the logsumexp (LSE) of
each row only when grad is on and an input requires grad (at::should_compute_logsumexp); their
backward reads it. The CPU kernels always return it, so on the CPU no aten op shows the
difference. `pqt_test::lse_attention(q, k, v, compute_lse)` does: its forward returns an
empty LSE when `compute_lse` is false, and its backward then reads zeros in its place (as a
kernel reading an LSE that was never written), giving wrong gradients without an error, as
cuDNN did under bf16 autocast on an H200. `attention` decides `compute_lse` the way SDPA does.
"""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.library.custom_op("pqt_test::lse_attention", mutates_args=())
def lse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, compute_lse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    lse = torch.logsumexp(s, dim=-1)
    out = torch.exp(s - lse.unsqueeze(-1)) @ v
    return out, (lse if compute_lse else lse.new_empty(0))


@lse_attention.register_fake
def _(q, k, v, compute_lse):
    return q.new_empty(*q.shape[:-1], v.shape[-1]), q.new_empty(q.shape[:-1] if compute_lse else (0,))


def _setup(ctx, inputs, output) -> None:
    q, k, v, _ = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1])


def _backward(ctx, d_out, d_lse):
    q, k, v, out, lse = ctx.saved_tensors
    if lse.numel() == 0:  # never written: what such a kernel reads is not the LSE
        lse = q.new_zeros(q.shape[:-1])
    scale = q.shape[-1] ** -0.5
    p = torch.exp(q @ k.transpose(-1, -2) * scale - lse.unsqueeze(-1))
    dv = p.transpose(-1, -2) @ d_out
    dp = d_out @ v.transpose(-1, -2)
    ds = p * (dp - (d_out * out).sum(-1, keepdim=True))
    return ds @ k * scale, ds.transpose(-1, -2) @ q * scale, dv, None


lse_attention.register_autograd(_backward, setup_context=_setup)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention; the LSE is computed only where a backward will need it (as SDPA does)."""
    needs = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return torch.ops.pqt_test.lse_attention(q, k, v, needs)[0]


class GradModeAttention(nn.Module):
    """One attention block over `attention`, with sampled projections (d 32, 2 heads)."""

    def __init__(self, d: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.qkv, self.proj, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(x).split(d, dim=-1))
        return self.proj(attention(q, k, v).transpose(1, 2).reshape(b, t, d))
