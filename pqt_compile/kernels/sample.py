"""The standalone Triton sample kernel: one read of w, one write of w_hat, noise in registers.

A second implementation of formula.py (NOTE [integers] there): here the 32-bit words are
uint32, whose multiplies wrap and whose shifts are logical, which gives the same words as the
int64-masked arithmetic of the eager and Inductor paths. tests/kernels holds the two to the
same bits, under TRITON_INTERPRET=1 on CPU and natively on a GPU.

Layout: the weight is seen as [R, K] with K the reduction axis; one program takes BLOCK_R rows
and one block of B columns (B = K for "row"), finds each row's block amax in a first loop over
the block and writes the samples in a second; "tensor" blocks take a precomputed amax.

B is a constexpr (one compile per block size). Workaround: Triton 3.6's interpreter turns a
runtime int argument into a 1-element array, and `range()` over it fails under numpy >= 2
("only 0-dimensional arrays can be converted to Python scalars").
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..formats import parse_format
from ..formula import FLT_MAX, KEY_SALT, STREAM_SALT, noise_scale
from ..op import block_amax, check_sample_args

__all__ = ["sample_triton"]


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x21F0AAAD
    return x ^ (x >> 16)


@triton.jit
def _floor_log2(x):
    sub = x < 1.1754943508222875e-38
    xs = tl.where(sub, x * 18446744073709551616.0, x)
    field = (xs.to(tl.int32, bitcast=True) >> 23) & 255
    return field - tl.where(sub, 191, 127)


@triton.jit
def _pow2(n):
    normal = tl.maximum(n + 127, 1) << 23
    sub = 1 << tl.minimum(tl.maximum(n + 149, 0), 22)
    bits = tl.where(n > -127, normal, tl.where(n < -149, 0, sub))
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _bf16_rne(x):
    """fp32 -> bf16 bits, round to nearest even; NaN -> 0x7FC0 as torch (c10::BFloat16) does.

    Workaround: Triton 3.6's interpreter casts fp32 to bf16 by truncation (its cast_impl passes
    no rounding mode); integer rounding is exact on every backend, so the GPU uses it too.
    """
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return tl.where(x != x, 0x7FC0, rounded).to(tl.uint16)


@triton.jit
def _sample_kernel(
    w_ptr, out_ptr, seed_ptr, key_ptr, amax_ptr,
    R, K, stride_r, stride_k, index_r, index_k, B: tl.constexpr,
    IS_INT: tl.constexpr, EMAX: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr,
    GAUSSIAN: tl.constexpr, SCALE: tl.constexpr, AMAX_GIVEN: tl.constexpr, OUT_BF16: tl.constexpr,
    BLOCK_R: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_b = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    start = pid_b * B
    stop = tl.minimum(start + B, K)

    # Stream words (formula.stream_words): per program, not per element.
    seed = tl.load(seed_ptr)
    key = tl.load(key_ptr)
    seed32 = (seed ^ (seed >> 32)).to(tl.uint32)
    s1 = _mix32(seed32 ^ _mix32(key.to(tl.uint32) ^ 0x9E3779B9))
    s2 = _mix32(s1 ^ 0x85EBCA6B)

    if AMAX_GIVEN:
        amax = tl.zeros([BLOCK_R], tl.float32) + tl.load(amax_ptr)
        nan_seen = amax != amax
    else:
        amax = tl.zeros([BLOCK_R], tl.float32)
        nan_seen = tl.zeros([BLOCK_R], tl.int1)
        for c0 in range(0, B, CHUNK):
            cols = start + c0 + tl.arange(0, CHUNK)
            m = row_ok[:, None] & (cols < stop)[None, :]
            w = tl.load(w_ptr + rows[:, None] * stride_r + cols[None, :] * stride_k, mask=m, other=0.0).to(tl.float32)
            a = tl.abs(w)
            nan_seen = nan_seen | (tl.max(tl.where(a != a, 1, 0), axis=1) > 0)  # tl.max does not propagate NaN
            amax = tl.maximum(amax, tl.max(tl.where(a != a, 0.0, a), axis=1))
    valid = (amax > 0.0) & (amax <= 3.4028234663852886e38) & (~nan_seen)
    k = _floor_log2(tl.where(valid, amax, 1.0)) - EMAX

    for c0 in range(0, B, CHUNK):
        cols = start + c0 + tl.arange(0, CHUNK)
        m = row_ok[:, None] & (cols < stop)[None, :]
        w_in = tl.load(w_ptr + rows[:, None] * stride_r + cols[None, :] * stride_k, mask=m, other=0.0)
        w = w_in.to(tl.float32)
        if IS_INT:
            n = k[:, None] + tl.zeros([BLOCK_R, CHUNK], tl.int32)
        else:
            a = tl.abs(w)
            a = tl.where(a <= 3.4028234663852886e38, a, 0.0)
            n = tl.maximum(_floor_log2(a), k[:, None] + EMIN) - MBITS
        delta = _pow2(n)
        idx = (rows[:, None].to(tl.int64) * index_r + cols[None, :].to(tl.int64) * index_k).to(tl.uint32)
        h = _mix32(_mix32(idx ^ s1) ^ s2)
        if GAUSSIAN:
            z = ((h & 255) + ((h >> 8) & 255) + ((h >> 16) & 255) + (h >> 24)).to(tl.int32) - 510
        else:
            z = ((h >> 8) * 2).to(tl.int32) - 16777215
        r = z.to(tl.float32) * SCALE
        out = tl.where(valid[:, None], w + delta * r, w)
        if OUT_BF16:
            tl.store(out_ptr + rows[:, None] * K + cols[None, :], _bf16_rne(out), mask=m)
        else:
            tl.store(out_ptr + rows[:, None] * K + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=m)


def sample_triton(
    w: torch.Tensor, seed: torch.Tensor, key: torch.Tensor, axis: int, format: str, block_size: int,
    noise: str, noise_std: float, out_dtype: torch.dtype, block_r: int = 16, chunk: int = 32,
) -> torch.Tensor:
    """pqt.sample with the Triton kernel (same arguments as the op). 2-D weights only."""
    spec = parse_format(format)
    axis = check_sample_args(w, axis, spec, block_size, out_dtype)
    if w.dim() != 2:
        raise ValueError("sample_triton takes 2-D weights; the op uses the torch formula for others")
    # View as [R, K] with K the reduction axis; the logical index keeps w's own row-major order.
    wv = w if axis == 1 else w.t()
    R, K = wv.shape
    index_r, index_k = (K, 1) if axis == 1 else (1, R)
    b = K if block_size in (0, -1) else min(block_size, K)
    out = torch.empty((R, K), dtype=out_dtype, device=w.device)
    out_view = out.view(torch.int16) if out_dtype == torch.bfloat16 else out  # bf16 is written as bits
    amax = block_amax(w, axis, -1).reshape(-1)[:1] if block_size == -1 else out  # a dummy pointer if unused
    grid = (triton.cdiv(R, block_r), triton.cdiv(K, b))
    _sample_kernel[grid](
        wv, out_view, seed.reshape(1).to(w.device, torch.int64), key.reshape(1).to(w.device, torch.int64), amax,
        R, K, wv.stride(0), wv.stride(1), index_r, index_k, b,
        IS_INT=spec.is_int, EMAX=spec.emax, EMIN=spec.emin, MBITS=spec.mantissa_bits,
        GAUSSIAN=noise == "gaussian", SCALE=noise_scale(noise, noise_std), AMAX_GIVEN=block_size == -1,
        OUT_BF16=out_dtype == torch.bfloat16,
        BLOCK_R=block_r, CHUNK=chunk,
    )
    return out if axis == 1 else out.t().contiguous()
