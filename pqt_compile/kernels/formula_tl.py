"""formula.py in Triton: the device functions that the sample kernel and the GEMM prologue share.

The 32-bit words are uint32 here (wrapping multiplies, logical shifts): the same words as the
int64-masked arithmetic of formula.py. Held to it by tests/kernels (bit for bit).

NVFP4 (formula_nvfp4.py): `nvfp4_tensor`, `nvfp4_block`, `nvfp4_sample_tile`. Its one division
is tl.div_rn (IEEE; Triton's `/` is an approximation); the noise is p * (S * r) with p a power of
two, so Triton's contraction of it and w into a fused multiply-add cannot change the bits
(formula_nvfp4.py NOTE [exact products]).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["mix32", "floor_log2", "pow2", "bf16_rne", "stream_words", "sample_tile", "noise_tile", "nvfp4_tensor",
           "e4m3_round", "nvfp4_block", "nvfp4_sample_tile"]


@triton.jit
def mix32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x21F0AAAD
    return x ^ (x >> 16)


@triton.jit
def floor_log2(x):
    sub = x < 1.1754943508222875e-38
    xs = tl.where(sub, x * 18446744073709551616.0, x)
    field = (xs.to(tl.int32, bitcast=True) >> 23) & 255
    return field - tl.where(sub, 191, 127)


@triton.jit
def pow2(n):
    normal = tl.maximum(n + 127, 1) << 23
    sub = 1 << tl.minimum(tl.maximum(n + 149, 0), 22)
    bits = tl.where(n > -127, normal, tl.where(n < -149, 0, sub))
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def bf16_rne(x):
    """fp32 -> bf16 bits (uint16), round to nearest even; NaN -> 0x7FC0 as torch's scalar cast.

    Workaround: Triton 3.6's interpreter casts fp32 to bf16 by truncation (its cast_impl passes
    no rounding mode); integer rounding is exact on every backend, so the GPU uses it too.
    """
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return tl.where(x != x, 0x7FC0, rounded).to(tl.uint16)


@triton.jit
def stream_words(seed_ptr, key_ptr):
    """formula.stream_words from the int64 seed and key in memory, and whether the key switches
    the noise on (a negative key: off, as in formula.sample_value)."""
    seed = tl.load(seed_ptr)
    key = tl.load(key_ptr)
    seed32 = (seed ^ (seed >> 32)).to(tl.uint32)
    s1 = mix32(seed32 ^ mix32(key.to(tl.uint32) ^ 0x9E3779B9))
    s2 = mix32(s1 ^ 0x85EBCA6B)
    return s1, s2, key >= 0


@triton.jit
def sample_tile(w, amax, idx, s1, s2, on, IS_INT: tl.constexpr, EMAX: tl.constexpr, EMIN: tl.constexpr,
                MBITS: tl.constexpr, GAUSSIAN: tl.constexpr, SCALE: tl.constexpr):
    """formula.sample_value on a tile: w (fp32), its blocks' amax (fp32, same shape), idx (uint32);
    `on` from stream_words."""
    valid = (amax > 0.0) & (amax <= 3.4028234663852886e38) & on  # false for 0, Inf and NaN
    k = floor_log2(tl.where(valid, amax, 1.0)) - EMAX
    if IS_INT:
        n = k
    else:
        a = tl.abs(w)
        a = tl.where(a <= 3.4028234663852886e38, a, 0.0)
        n = tl.maximum(floor_log2(a), k + EMIN) - MBITS
    delta = pow2(n)
    r = noise_tile(idx, s1, s2, GAUSSIAN, SCALE)
    return tl.where(valid, w + delta * r, w)


@triton.jit
def noise_tile(idx, s1, s2, GAUSSIAN: tl.constexpr, SCALE: tl.constexpr):
    """formula_noise.noise_from_hash(formula.element_hash(idx, s1, s2)) for "gaussian" and "uniform"."""
    h = mix32(mix32(idx ^ s1) ^ s2)
    if GAUSSIAN:
        z = ((h & 255) + ((h >> 8) & 255) + ((h >> 16) & 255) + (h >> 24)).to(tl.int32) - 510
    else:
        z = ((h >> 8) * 2).to(tl.int32) - 16777215
    return z.to(tl.float32) * SCALE


@triton.jit
def nvfp4_tensor(amax_t, on):
    """formula_nvfp4.tensor_params: (s_t, s_t_inv) = (2^k_t, 2^-k_t), s_t = -1 where the tensor
    gets no scales (amax_t outside [2^-100, 2^100), NaN) or `on` is false."""
    valid = (amax_t >= 7.888609052210118e-31) & (amax_t < 1.2676506002282294e30) & on
    safe = tl.where(valid, amax_t, 1.0)
    e = floor_log2(safe)
    k = e - 10 - tl.where(safe <= pow2(e) * 1.3125, 1, 0)
    return tl.where(valid, pow2(k), -1.0), pow2(0 - k)


@triton.jit
def e4m3_round(x):
    """formula_nvfp4.e4m3_round: x in [0, 448] to the nearest E4M3 value, ties to even."""
    c = pow2(tl.maximum(floor_log2(x), -6) + 20)
    return (x + c) - c


@triton.jit
def nvfp4_block(amax_b, s_t, s_t_inv):
    """formula_nvfp4.block_params: S = s_b s_t, or -1 where the block gets no noise."""
    x = tl.div_rn(amax_b * s_t_inv, 6.0)
    safe = tl.where(x <= 448.0, x, 0.0)
    s_b = tl.maximum(e4m3_round(safe), 0.001953125)
    return tl.where(amax_b > 0.0, tl.where(s_t > 0.0, s_b * s_t, -1.0), -1.0)


@triton.jit
def nvfp4_sample_tile(w, scale, idx, s1, s2, GAUSSIAN: tl.constexpr, SCALE: tl.constexpr):
    """formula_nvfp4.sample_from_params on a tile: w (fp32), its blocks' S (same shape), idx (uint32)."""
    r = noise_tile(idx, s1, s2, GAUSSIAN, SCALE)
    a = tl.abs(w)
    p = tl.where(a < scale * 2.0, 0.5, tl.where(a < scale * 4.0, 1.0, 2.0))
    return tl.where(scale > 0.0, w + p * (scale * r), w)
