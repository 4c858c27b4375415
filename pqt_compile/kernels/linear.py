"""A Triton GEMM with the sample in its prologue: y = x @ w_hat^T (+ bias), w_hat never stored.

Each program loads a [BLOCK_N, BLOCK_K] tile of the clean weight, turns it into the sample in
registers (formula_tl.sample_tile, the same device code as the standalone kernel), and feeds
it to tl.dot. The block amax comes from a small pre-pass ([N, number of blocks] floats, 1/B
of the weight): a tile need not hold whole blocks, so every block mode and any BLOCK_K work.
NVFP4: the pre-pass gives each block's S = s_b s_t instead (formula_nvfp4.block_params, from the
whole weight's amax and the key), and the prologue is formula_tl.nvfp4_sample_tile.

`linear` is the functional entry point (autograd: grad_input uses the regenerated sample,
grad_weight is the plain x^T grad, as d w_hat / d w = I).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ..blocks import block_amax, block_length, check_sample_args
from ..config import PQTConfig, config_or_default
from ..formula import TorchOps
from ..formula_noise import noise_scale
from ..formula_nvfp4 import block_params as nvfp4_block_params
from ..formula_nvfp4 import tensor_params as nvfp4_tensor_params
from ..op import sample
from .formula_tl import bf16_rne, nvfp4_sample_tile, sample_tile, stream_words

__all__ = ["linear_triton", "linear"]


@triton.jit
def _linear_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, amax_ptr, seed_ptr, key_ptr,
    M, N, stride_xm, stride_xk, stride_wn, stride_wk, NB,
    K: tl.constexpr, B: tl.constexpr, HAS_BIAS: tl.constexpr,
    IS_INT: tl.constexpr, EMAX: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr,
    GAUSSIAN: tl.constexpr, SCALE: tl.constexpr, BF16: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NVFP4: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m64, offs_n64 = offs_m.to(tl.int64), offs_n.to(tl.int64)  # int32 offsets overflow at 2^31 elements
    s1, s2, on = stream_words(seed_ptr, key_ptr)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xm = (offs_m[:, None] < M) & (offs_k[None, :] < K)
        wm = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        x = tl.load(x_ptr + offs_m64[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=xm, other=0.0)
        w = tl.load(w_ptr + offs_n64[:, None] * stride_wn + offs_k[None, :] * stride_wk, mask=wm, other=0.0).to(tl.float32)
        amax = tl.load(amax_ptr + offs_n64[:, None] * NB + offs_k[None, :] // B, mask=wm, other=0.0)
        idx = (offs_n64[:, None] * K + offs_k[None, :]).to(tl.uint32)  # logical row-major index of [N, K]
        if NVFP4:  # amax_ptr holds each block's S
            w_hat = nvfp4_sample_tile(w, amax, idx, s1, s2, GAUSSIAN, SCALE)
        else:
            w_hat = sample_tile(w, amax, idx, s1, s2, on, IS_INT, EMAX, EMIN, MBITS, GAUSSIAN, SCALE)
        w_hat = tl.where(wm, w_hat, 0.0)
        if BF16:
            w_op = bf16_rne(w_hat).to(tl.bfloat16, bitcast=True)
        else:
            w_op = w_hat.to(x.dtype)
        if DOT_FP32:
            # Workaround: Triton 3.6's interpreter keeps bf16 as raw uint16 bits and a bf16
            # tl.dot then multiplies the bits. bf16 products are exact in fp32, so an fp32 dot
            # is the same arithmetic; only the interpreter takes this path.
            acc += tl.dot(x.to(tl.float32), tl.trans(w_op.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w_op), input_precision="ieee" if not BF16 else None)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    ym = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if BF16:
        tl.store(y_ptr + offs_m64[:, None] * N + offs_n[None, :], bf16_rne(acc), mask=ym)
    else:
        tl.store(y_ptr + offs_m64[:, None] * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=ym)


def linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], seed: torch.Tensor,
                  key: torch.Tensor, config: PQTConfig, block_m: int = 16, block_n: int = 32, block_k: int = 32) -> torch.Tensor:
    """Forward only: x [..., K] (float32 or bfloat16) @ sample(weight [N, K])^T + bias."""
    spec = config.spec
    check_sample_args(weight, 1, spec, config.block_code, x.dtype)
    if config.mode != "sample" or config.noise not in ("gaussian", "uniform"):
        raise NotImplementedError(
            f"pqt linear (the Triton kernel): mode {config.mode!r} with noise {config.noise!r} is not "
            "implemented here; compile the model with backend='pqt' (the Inductor lowering has every mode)"
        )
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"pqt linear: x must be float32 or bfloat16, got {x.dtype}")
    N, K = weight.shape
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    b = block_length(K, config.block_code)
    amax = block_amax(weight, 1, config.block_code)[:, ::b].contiguous()  # [N, number of blocks]
    if spec.two_level:  # NVFP4: each block's S (formula_nvfp4), from the whole weight's amax and the key
        o = TorchOps(weight.device)
        live = key.reshape(()).to(weight.device, torch.int64) >= 0
        tensor = nvfp4_tensor_params(o, weight.detach().float().abs().amax(), live=live)
        amax = nvfp4_block_params(o, amax, tensor)[0].contiguous()
    bf16 = x.dtype == torch.bfloat16
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _linear_kernel[grid](
        x2, weight, bias if bias is not None else y, y.view(torch.int16) if bf16 else y, amax,
        seed.reshape(1).to(x.device, torch.int64), key.reshape(1).to(x.device, torch.int64),
        M, N, x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1), amax.shape[1],
        K=K, B=b, HAS_BIAS=bias is not None,
        IS_INT=spec.is_int, EMAX=spec.emax, EMIN=spec.emin, MBITS=spec.mantissa_bits,
        GAUSSIAN=config.noise == "gaussian", SCALE=noise_scale(config.noise, config.noise_std), BF16=bf16,
        DOT_FP32=os.environ.get("TRITON_INTERPRET") == "1",
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, NVFP4=spec.two_level,
    )
    return y.reshape(*x.shape[:-1], N)


class _PQTLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, seed, key, config):
        ctx.save_for_backward(x, weight, seed, key)  # the clean weight: the sample is regenerated
        ctx.config, ctx.has_bias = config, bias is not None
        return linear_triton(x, weight, bias, seed, key, config)

    @staticmethod
    def backward(ctx, grad):
        x, weight, seed, key = ctx.saved_tensors
        w_hat = sample(weight.detach(), seed=seed, key=key, axis=1, config=ctx.config, out_dtype=grad.dtype)
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_x = (g2 @ w_hat).reshape(x.shape)
        grad_w = (g2.t() @ x.reshape(-1, x.shape[-1])).to(weight.dtype)
        grad_b = g2.sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, seed, key=0,
           config: Optional[PQTConfig] = None) -> torch.Tensor:
    """F.linear with a sampled weight, the sample generated inside the GEMM (Triton).

    Where Triton cannot run (a CPU tensor without TRITON_INTERPRET=1), it computes
    F.linear(x, pqt_compile.sample(weight, ...), bias): the same values by another route.
    """
    config = config_or_default(config, "pqt_compile.kernels.linear")
    seed_t = torch.as_tensor(seed, dtype=torch.int64)
    key_t = torch.as_tensor(key, dtype=torch.int64)
    if x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return _PQTLinear.apply(x, weight, bias, seed_t, key_t, config)
    w_hat = sample(weight, seed=seed_t, key=key_t, axis=1, config=config, out_dtype=x.dtype)
    return torch.nn.functional.linear(x, w_hat, bias)
