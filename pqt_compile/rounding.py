"""Round to nearest on the sampler's grid, written once against the formula's ops interface.

The same function body gives `quantize` (eager, what the deployed model holds) and the forward
of `PQTConfig(mode="ste")` inside Inductor's generated code (the straight-through estimator:
the matmul reads the rounded weight, the gradient reaches w unchanged), so the two cannot
drift. The grid is the sampler's: the same blocks, k_b and per-element Δ (formula.py NOTE
[per-block step]); values beyond the format's largest magnitude max_F 2^k_b saturate.

NOTE [rounding by a magic number]: RNE(|w| / Δ) Δ is computed as (|w| + c) - c with c = 2^23 Δ:
|w| + c lies in [2^23 Δ, 2^24 Δ), where the fp32 spacing is exactly Δ, so the one IEEE rounding
of the add is round-half-even to a multiple of Δ, and the subtraction is exact. It needs |w| /
Δ < 2^23 (it is below 2^(M+1), or 2^(emax+1) for integers) and c finite: where the block's
largest step exceeds 2^64 (weights near 2^100), |w| and c are first scaled by 2^-64 (exact for
every |w| >= Δ / 2; smaller ones round to 0 either way) and the result by 2^64. Only adds,
multiplies by powers of two, integer max/and and compares: no division (an approximate one on
GPUs) and no rounding op, and no reassociation is allowed by Inductor's C++ flags
(-fno-unsafe-math-optimizations) or by Triton. Where Δ underflows fp32 (a block of tiny
weights), w lies on the finer grid of fp32 subnormals and is its own nearest value: that is
tested on c (c >= 2^-126 exactly where Δ >= 2^-149, both being powers of two). The sign is put back after rounding the magnitude, so a weight
that rounds to zero gives +0 (one zero, as the packed codes hold it).
"""

from __future__ import annotations

from typing import Any

from .formats import FormatSpec
from .formula import SampleOps, block_exponent, block_params, pow2, step_from_params
from .formula_nvfp4 import E2M1_MAX

__all__ = ["rtn_params", "rtn_from_params", "rtn_value", "nvfp4_units", "nvfp4_rtn_from_params"]

_BIG_STEP = 2.0**64
_MAGIC = 2.0**23
_MIN_C = 2.0**-126  # c of the smallest fp32 step, 2^-149


def rtn_params(o: SampleOps, amax: Any, spec: FormatSpec, live: Any = None) -> tuple:
    """Per-block values of round-to-nearest, from the block's amax (fp32).

    (*p, limit, pre, post): `p` is formula.block_params with its step scaled by 2^23 pre (so that
    formula.step_from_params gives c = 2^23 Δ pre directly; < 0 where the block is not valid);
    limit = max_F 2^k_b pre (the saturation bound, in the scaled domain); pre and post = 1 / pre
    are 2^-64 and 2^64 where the block's largest step exceeds 2^64, else 1 (NOTE [rounding by a
    magic number]).
    """
    params = block_params(o, amax, spec, live)
    valid, k = block_exponent(o, amax, spec, live)
    two_k = pow2(o, k)
    top_step = two_k if spec.is_int else o.mul(two_k, o.f32(2.0 ** (spec.emax - spec.mantissa_bits)))
    big = o.logical_and(valid, o.gt(top_step, o.f32(_BIG_STEP)))
    pre = o.where(big, o.f32(1.0 / _BIG_STEP), o.f32(1.0))
    post = o.where(big, o.f32(_BIG_STEP), o.f32(1.0))
    limit = o.mul(o.mul(o.f32(spec.max_value), two_k), pre)
    step_scale = o.mul(pre, o.f32(_MAGIC))
    scaled = (*params[:-1], o.mul(params[-1], step_scale))  # the sign (valid or not) is kept
    return (*scaled, limit, pre, post)


def rtn_from_params(o: SampleOps, w32: Any, params: tuple, spec: FormatSpec) -> Any:
    """The round-to-nearest value of w (fp32) from its block's `rtn_params`; w itself where the
    block is not valid (zero, NaN or Inf) or switched off, and where Δ underflows fp32, its zeros
    as +0 (`_plus_zero`)."""
    *p, limit, pre, post = params
    absw = o.abs(w32)
    c = step_from_params(o, absw, tuple(p), spec)  # 2^23 Δ pre, < 0 (or NaN) if not valid
    x = o.mul(absw, pre)
    q = o.mul(o.minimum(o.sub(o.add(x, c), c), limit), post)
    signed = o.where(o.logical_and(o.lt(w32, o.f32(0.0)), o.gt(q, o.f32(0.0))), o.sub(o.f32(0.0), q), q)
    # Δ >= 2^-149 (not underflowed) exactly where c = 2^23 Δ pre >= 2^-126: both are powers of two.
    return o.where(o.ge(c, o.f32(_MIN_C)), signed, _plus_zero(o, w32))


def _plus_zero(o: SampleOps, w32: Any) -> Any:
    """w with -0 as +0: every zero a rounding gives is +0 (method.md), the zeros of a block it
    leaves as they are (an all-zero one) too, as the packed form stores them. A select, not w + 0,
    which a compiler allowed to ignore the sign of zero may fold away."""
    return o.where(o.le(o.abs(w32), o.f32(0.0)), o.f32(0.0), w32)  # |w| <= 0: a zero of either sign, not NaN


def rtn_value(o: SampleOps, w32: Any, amax: Any, spec: FormatSpec, live: Any = None) -> Any:
    """`rtn_from_params` with the block values computed per element (the eager form)."""
    return rtn_from_params(o, w32, rtn_params(o, amax, spec, live), spec)


def nvfp4_units(o: SampleOps, absw: Any, scale: Any) -> Any:
    """NVFP4's E2M1 magnitude of |w| (fp32) in a block of scale S > 0 (formula_nvfp4.block_params):
    |w| / S (one IEEE division) rounded to E2M1's grid, ties to even, saturated at 6. The grid's
    step at u = |w| / S is 0.5 below 2, 1 below 4, 2 above, so (u + c) - c with c = 2^23 times that
    step rounds it (NOTE [rounding by a magic number]); u never exceeds ~6.4, c is small. The
    division cannot create or break a tie: the nearest E2M1 point of the exact quotient is found
    (docs/method.md "NVFP4")."""
    u = o.div(absw, scale)
    c = o.where(o.lt(u, o.f32(2.0)), o.f32(2.0**22), o.where(o.lt(u, o.f32(4.0)), o.f32(2.0**23), o.f32(2.0**24)))
    return o.minimum(o.sub(o.add(u, c), c), o.f32(E2M1_MAX))


def nvfp4_rtn_from_params(o: SampleOps, w32: Any, params: tuple) -> Any:
    """NVFP4's round-to-nearest value of w (fp32) from its block's formula_nvfp4.block_params:
    sign(w) * q * S with q = nvfp4_units (an exact product: q has 2 significant bits, S 4); w
    itself where the block gets no scale (S < 0), its zeros as +0. A weight that rounds to zero gives +0."""
    (scale,) = params
    valid = o.gt(scale, o.f32(0.0))
    absw = o.abs(w32)
    q = o.mul(nvfp4_units(o, absw, o.where(valid, scale, o.f32(1.0))), scale)
    signed = o.where(o.logical_and(o.lt(w32, o.f32(0.0)), o.gt(q, o.f32(0.0))), o.sub(o.f32(0.0), q), q)
    return o.where(o.lt(scale, o.f32(0.0)), _plus_zero(o, w32), signed)  # S NaN (block_params): NaN
