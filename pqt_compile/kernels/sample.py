"""The standalone Triton sample kernel: one read of w, one write of w_hat, noise in registers.

A second implementation of formula.py (NOTE [integers] there): here the 32-bit words are
uint32, whose multiplies wrap and whose shifts are logical, which gives the same words as the
int64-masked arithmetic of the eager and Inductor paths. tests/kernels holds the two to the
same bits, under TRITON_INTERPRET=1 on CPU and natively on a GPU.

Layout: the weight is seen as [R, K] with K the reduction axis; one program takes BLOCK_R rows
and one block of B columns (B = K for "row"), finds each row's block amax in a first loop over
the block and writes the samples in a second; "tensor" blocks take a precomputed amax.

NVFP4 (NVFP4=True, B = 16): the whole weight's amax comes in a one-element buffer (torch's amax,
or the op's tensor_amax); each program turns it into the tensor's scales and its rows' block amax
into their S (formula_tl.nvfp4_tensor / nvfp4_block), then samples with nvfp4_sample_tile.

B is a constexpr (one compile per block size). Workaround: Triton 3.6's interpreter turns a
runtime int argument into a 1-element array, and `range()` over it fails under numpy >= 2
("only 0-dimensional arrays can be converted to Python scalars").
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..blocks import TENSOR, block_amax, block_length, check_sample_args
from ..formats import parse_format
from ..formula_noise import noise_scale
from .formula_tl import bf16_rne, nvfp4_block, nvfp4_sample_tile, nvfp4_tensor, sample_tile, stream_words

__all__ = ["sample_triton"]


@triton.jit
def _sample_kernel(
    w_ptr, out_ptr, seed_ptr, key_ptr, amax_ptr,
    R, K, stride_r, stride_k, index_r, index_k, B: tl.constexpr,
    IS_INT: tl.constexpr, EMAX: tl.constexpr, EMIN: tl.constexpr, MBITS: tl.constexpr,
    GAUSSIAN: tl.constexpr, SCALE: tl.constexpr, AMAX_GIVEN: tl.constexpr, OUT_BF16: tl.constexpr,
    BLOCK_R: tl.constexpr, CHUNK: tl.constexpr, NVFP4: tl.constexpr = False,
):
    pid_r = tl.program_id(0)
    pid_b = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    rows = rows.to(tl.int64)  # offsets of weights with >= 2^31 elements overflow int32
    start = pid_b * B
    stop = tl.minimum(start + B, K)

    s1, s2, on = stream_words(seed_ptr, key_ptr)  # per program, not per element

    if AMAX_GIVEN:  # block_size "tensor" (amax_ptr: the whole weight's amax)
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
    amax = tl.where(nan_seen, float("nan"), amax)
    if NVFP4:  # amax_ptr: the whole weight's amax; per row, the block's S
        s_t, s_t_inv = nvfp4_tensor(tl.load(amax_ptr), on)
        scale = nvfp4_block(amax, s_t, s_t_inv)

    for c0 in range(0, B, CHUNK):
        cols = start + c0 + tl.arange(0, CHUNK)
        m = row_ok[:, None] & (cols < stop)[None, :]
        w = tl.load(w_ptr + rows[:, None] * stride_r + cols[None, :] * stride_k, mask=m, other=0.0).to(tl.float32)
        idx = (rows[:, None].to(tl.int64) * index_r + cols[None, :].to(tl.int64) * index_k).to(tl.uint32)
        if NVFP4:
            out = nvfp4_sample_tile(w, scale[:, None] + tl.zeros([BLOCK_R, CHUNK], tl.float32), idx, s1, s2,
                                    GAUSSIAN, SCALE)
        else:
            out = sample_tile(w, amax[:, None] + tl.zeros([BLOCK_R, CHUNK], tl.float32), idx, s1, s2, on,
                              IS_INT, EMAX, EMIN, MBITS, GAUSSIAN, SCALE)
        if OUT_BF16:
            tl.store(out_ptr + rows[:, None] * K + cols[None, :], bf16_rne(out), mask=m)
        else:
            tl.store(out_ptr + rows[:, None] * K + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=m)


def sample_triton(
    w: torch.Tensor, seed: torch.Tensor, key: torch.Tensor, axis: int, format: str, block_size: int,
    noise: str, noise_std: float, out_dtype: torch.dtype, block_r: int = 16, chunk: int = 32,
    tensor_amax: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """pqt.sample with the Triton kernel (same arguments as the op). 2-D weights only.
    `tensor_amax`: NVFP4's whole-weight amax (op.nvfp4_tensor_amax), computed here if None."""
    spec = parse_format(format)
    axis = check_sample_args(w, axis, spec, block_size, out_dtype)
    if w.dim() != 2:
        raise ValueError("sample_triton takes 2-D weights; the op uses the torch formula for others")
    # View as [R, K] with K the reduction axis; the logical index keeps w's own row-major order.
    wv = w if axis == 1 else w.t()
    R, K = wv.shape
    index_r, index_k = (K, 1) if axis == 1 else (1, R)
    b = block_length(K, block_size)
    out = torch.empty((R, K), dtype=out_dtype, device=w.device)
    out_view = out.view(torch.int16) if out_dtype == torch.bfloat16 else out  # bf16 is written as bits
    amax = block_amax(w, axis, TENSOR).reshape(-1)[:1] if block_size == TENSOR else out  # a dummy pointer if unused
    if spec.two_level:
        amax = (w.detach().float().abs().amax() if tensor_amax is None else tensor_amax).reshape(1).to(w.device, torch.float32)
        chunk = min(chunk, b)  # one block of 16 per program
    grid = (triton.cdiv(R, block_r), triton.cdiv(K, b))
    _sample_kernel[grid](
        wv, out_view, seed.reshape(1).to(w.device, torch.int64), key.reshape(1).to(w.device, torch.int64), amax,
        R, K, wv.stride(0), wv.stride(1), index_r, index_k, b,
        IS_INT=spec.is_int, EMAX=spec.emax, EMIN=spec.emin, MBITS=spec.mantissa_bits,
        GAUSSIAN=noise == "gaussian", SCALE=noise_scale(noise, noise_std), AMAX_GIVEN=block_size == TENSOR,
        OUT_BF16=out_dtype == torch.bfloat16,
        BLOCK_R=block_r, CHUNK=chunk, NVFP4=spec.two_level,
    )
    return out if axis == 1 else out.t().contiguous()
