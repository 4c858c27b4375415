"""NVFP4's scales and its sample, written once against formula.py's ops interface (SampleOps).

NVFP4 (NVIDIA) stores E2M1 elements in blocks of 16 along the reduction axis, each block with an
FP8 E4M3 scale s_b, the whole tensor with one FP32 scale s_t; an element's value is
e2m1 * s_b * s_t. docs/method.md ("NVFP4") states the rule in prose; here it is split, as
formula.py NOTE [per-block step] splits the MX rule, into what the Inductor lowering computes
once per tensor, once per block and once per element:

    per tensor   tensor_params(amax_t)           -> (s_t, 1/s_t)    from the whole weight's amax
    per block    block_params(amax_b, tensor)     -> (S,)            S = s_b * s_t, < 0: no noise
    per element  sample_from_params(w, (S,), r)  -> w + Δ r
                 rounding.nvfp4_rtn_from_params(w, (S,)) -> the deployed value (mode "ste")

NOTE [power-of-two tensor scale]: s_t = 2^k_t, the smallest power of two with 2688 s_t >= amax_t
(2688 = 448 * 6: the largest block then scales its amax to at most E4M3's 448 * E2M1's 6, as in
NVIDIA's s_t = amax_t / 2688, rounded up to a power of two). With it every product of the format
is exact: S = s_b s_t (s_b has 4 significant bits), a deployed value e2m1 * S (6 bits: exact in
bf16 too), the grid's mid-points (7 bits), and an engine that multiplies by s_t after its matmul
(llama.cpp) computes what a pre-scaled weight would. NVIDIA's unrounded amax_t / 2688 would give
24-bit products, which compressed-tensors (decodes to bf16), GGUF (no tensor scale in the block)
and torchao (another order of roundings) cannot all reproduce. The E4M3 scales keep their full
precision either way (a power of two only moves them between binades); docs/design.md "NVFP4".

NOTE [exact products]: where the step is no longer a power of two, w + Δ r is not exact in its
product, and a fused multiply-add (Triton contracts a * b + c by default) would round once where
two separate operations round twice. The noise is therefore computed as p * (S * r): S * r is
rounded once and feeds a multiply, not an add; p (0.5, 1 or 2: E2M1's step in units of S) is a
power of two, so the product that meets the add is exact and a contraction of it gives the same
bits. Every other float operation is exact (products of powers of two, of 4- and 2-bit values)
or a single IEEE operation with no add after it: the division amax_b 2^-k_t / 6 (the E4M3
rounding below) and, for round to nearest, |w| / S. Divisions are IEEE (correctly rounded):
Triton's `/` is an approximation (div.full.f32), so Triton code uses div_rn (`SampleOps.div`).
"""

from __future__ import annotations

from typing import Any

from .formula import SampleOps, floor_log2, pow2

__all__ = [
    "TENSOR_AMAX_RANGE",
    "E4M3_MIN",
    "E4M3_MAX",
    "TENSOR_SCALE_DIVISOR",
    "E2M1_MAX",
    "tensor_exponent",
    "tensor_params",
    "e4m3_round",
    "block_scale",
    "block_params",
    "step_units",
    "sample_from_params",
]

#: A tensor gets NVFP4 scales where lo <= amax_t < hi; outside (0, NaN, Inf, subnormal-sized or
#: astronomically large weights) it is left as it is: no noise, quantize returns it, pack refuses.
#: The range keeps every S = s_b 2^k_t and every grid point a normal fp32 number.
TENSOR_AMAX_RANGE = (2.0**-100, 2.0**100)
#: The smallest positive E4M3 value (a subnormal): the floor of a non-zero block's scale.
E4M3_MIN = 2.0**-9
#: The largest E4M3 value.
E4M3_MAX = 448.0
#: amax_t / s_t is at most this: E4M3's largest value times E2M1's.
TENSOR_SCALE_DIVISOR = 2688.0  # 448 * 6
#: E2M1's largest value.
E2M1_MAX = 6.0
# 2688 = 1.3125 * 2^11: amax_t <= 2688 * 2^(e - 11) exactly when amax_t <= 1.3125 * 2^e.
_DIVISOR_MANTISSA = 1.3125


def tensor_exponent(o: SampleOps, amax_t: Any) -> tuple[Any, Any]:
    """(valid, k_t): whether the tensor gets scales (TENSOR_AMAX_RANGE), and the smallest k_t with
    2688 * 2^k_t >= amax_t (a small integer; unused where not valid). No division, no log: with
    e = floor_log2(amax_t), k_t = e - 10, or e - 11 where amax_t <= 1.3125 * 2^e (an exact product)."""
    lo, hi = TENSOR_AMAX_RANGE
    valid = o.logical_and(o.ge(amax_t, o.f32(lo)), o.lt(amax_t, o.f32(hi)))  # false for NaN
    safe = o.where(valid, amax_t, o.f32(1.0))
    e = floor_log2(o, safe)
    low = o.le(safe, o.mul(pow2(o, e), o.f32(_DIVISOR_MANTISSA)))
    return valid, o.sub(o.sub(e, o.small(10)), o.where(low, o.small(1), o.small(0)))


def tensor_params(o: SampleOps, amax_t: Any, live: Any = None) -> tuple[Any, Any]:
    """Per-tensor values, from the whole weight's amax (fp32; NaN or Inf if it holds one):
    (s_t, s_t_inv) = (2^k_t, 2^-k_t), with s_t = -1 where the tensor gets no scales (out of
    TENSOR_AMAX_RANGE) or `live` is false (a negative key: the noise switched off)."""
    valid, k = tensor_exponent(o, amax_t)
    if live is not None:
        valid = o.logical_and(valid, live)
    return o.where(valid, pow2(o, k), o.f32(-1.0)), pow2(o, o.sub(o.small(0), k))


def e4m3_round(o: SampleOps, x: Any) -> Any:
    """x (fp32, 0 <= x <= 448) rounded to the nearest E4M3 value, ties to even, subnormals
    included (0 for x <= 2^-10): (x + c) - c with c = 2^23 times the E4M3 step at x (rounding.py
    NOTE [rounding by a magic number]). Exact: no division, no rounding op."""
    e = o.maximum(floor_log2(o, x), o.small(-6))  # E4M3's smallest normal exponent; x = 0 gives -6
    c = pow2(o, o.add(e, o.small(23 - 3)))  # 2^23 * 2^(e - 3)
    return o.sub(o.add(x, c), c)


def block_scale(o: SampleOps, amax_b: Any, s_t_inv: Any) -> Any:
    """s_b, the block's E4M3 scale: amax_b / (6 s_t) rounded to E4M3 (ties to even), at least
    E4M3_MIN. amax_b 2^-k_t is exact (a power of two; a product that would be subnormal belongs to
    a block far below E4M3's range, whose scale is E4M3_MIN either way); the division by 6 is one
    IEEE division, never a false tie for the E4M3 rounding after it (docs/method.md). It never
    exceeds 448: amax_b 2^-k_t <= amax_t 2^-k_t <= 2688."""
    x = o.div(o.mul(amax_b, s_t_inv), o.f32(E2M1_MAX))
    safe = o.where(o.le(x, o.f32(E4M3_MAX)), x, o.f32(0.0))  # NaN / Inf of an unused block: harmless
    return o.maximum(e4m3_round(o, safe), o.f32(E4M3_MIN))


def block_params(o: SampleOps, amax_b: Any, tensor: tuple[Any, Any]) -> tuple[Any]:
    """Per-block value, from the block's amax (fp32) and `tensor_params`: (S,), the block's whole
    scale s_b s_t (exact), or -1 where the block gets no noise (a zero block, or a tensor without
    scales or switched off).

    NaN where the block's amax exceeds 2688 s_t: a tensor amax given by the caller (a shard's
    all-reduced one) below the block's own, which no valid input gives (amax_b <= amax_t <= 2688
    s_t). The eager op refuses such an amax; compiled code cannot without reading a device value,
    so the block samples to NaN there, loudly, where it would have sampled almost clean."""
    s_t, s_t_inv = tensor
    valid = o.logical_and(o.gt(amax_b, o.f32(0.0)), o.gt(s_t, o.f32(0.0)))
    scale = o.mul(block_scale(o, amax_b, s_t_inv), s_t)
    over = o.gt(o.mul(amax_b, s_t_inv), o.f32(TENSOR_SCALE_DIVISOR))  # exact: s_t_inv is a power of two
    return (o.where(valid, o.where(over, o.f32(float("nan")), scale), o.f32(-1.0)),)


def step_units(o: SampleOps, absw: Any, scale: Any) -> Any:
    """E2M1's step at |w| / S, in units of S: 0.5 below 2, 1 below 4, 2 above (the top binade,
    saturated values included). Compared exactly: 2 S and 4 S are exact products."""
    below2 = o.lt(absw, o.mul(scale, o.f32(2.0)))
    below4 = o.lt(absw, o.mul(scale, o.f32(4.0)))
    return o.where(below2, o.f32(0.5), o.where(below4, o.f32(1.0), o.f32(2.0)))


def sample_from_params(o: SampleOps, w32: Any, params: tuple[Any], r: Any) -> Any:
    """w_hat in fp32 before the final cast: w + p (S r), where p = step_units(|w|, S) and
    Δ = p S is E2M1's step at w times the block's two scales (NOTE [exact products]); w where the
    block gets no noise (S < 0)."""
    (scale,) = params
    noise = o.mul(step_units(o, o.abs(w32), scale), o.mul(scale, r))
    return o.where(o.lt(scale, o.f32(0.0)), w32, o.add(w32, noise))  # S NaN (block_params): NaN
