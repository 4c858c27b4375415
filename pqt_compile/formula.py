"""The sampling formula of method.md, written once against a small ops interface.

The same function body computes a sampled weight for eager torch tensors (`TorchOps`) and
inside Inductor's generated code (`pqt_compile.lowering.inductor_ops.InductorOps`), so the
two cannot drift. docs/method.md states every constant and step in prose. The noise r from the
element's hash is formula_noise.py's; NVFP4's scales are formula_nvfp4.py's.

NOTE [integers]: the generator works on 32-bit words. The ops handler chooses how it holds
them (NOTE [word types]); in the default form (`Int64Words`: eager, Inductor's C++ code) they
are held in int64 and masked to 32 bits after every multiply. Every multiplier is below 2^31,
so a product of a 32-bit word and a multiplier stays below 2^63: no signed overflow (undefined
behaviour in the C++ that Inductor emits), and right shifts of non-negative int64 values are
logical on every backend.

NOTE [word types]: the formula never names an integer dtype. It asks the handler for words
(`word`, `to_word`, `mul_word`, `shr_word`: values in [0, 2^32), multiplies modulo 2^32,
logical right shifts by a constant) and for the
small signed integers of the exponent code (`small`, `small_of_word`, and the result of
`f32_bits`: |value| < 2^31). A handler picks the types per backend: `Int64Words` holds both
in int64 (masking after each multiply); Inductor's Triton code holds words in uint32 and
small integers in int32 (compiler/lowering/inductor_ops.py), which a GPU runs natively where
int64 multiplies are emulated. The values, hence the bits, are the same: a uint32 multiply is
the product modulo 2^32, a uint32 right shift is logical, and every small integer fits int32.

NOTE [floats]: the only float operations are the conversion of a small integer (exact), one
multiply by an fp32 constant (a single IEEE rounding, the same constant on every backend),
a multiply by a power of two (exact unless the result is an fp32 subnormal), the fp32 add
of the noise to the weight, and the final cast. So an FMA contraction of `w + Δ * r` gives
the same bits as two separate operations, and there is nothing to reassociate.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from .formats import FormatSpec
from .formula_noise import noise_from_hash

__all__ = [
    "SampleOps",
    "Int64Words",
    "TorchOps",
    "MASK32",
    "mix32",
    "stream_words",
    "element_hash",
    "check_draw_input",
    "floor_log2",
    "pow2",
    "step_log2",
    "sample_value",
    "sample_value_direct",
    "block_exponent",
    "block_params",
    "step_from_params",
    "sample_from_params",
    "BLOCK_SHIFT",
]

MASK32 = 0xFFFFFFFF
# Multipliers of the 32-bit mixer; both odd and below 2^31 (NOTE [integers]).
MIX_MUL_1 = 0x7FEB352D
MIX_MUL_2 = 0x21F0AAAD
# Constants that separate the stream words (any fixed odd-looking 32-bit values would do).
KEY_SALT = 0x9E3779B9
STREAM_SALT = 0x85EBCA6B
FLT_MAX = 3.4028234663852886e38
TWO_POW_64 = 18446744073709551616.0  # exact in fp32


class SampleOps(Protocol):
    """The operations the formula needs. Floats are float32; `i64` values are int64 (the seed
    and the key); words and small integers are of the handler's choosing (NOTE [word types])."""

    def i64(self, v: int) -> Any: ...
    def f32(self, v: float) -> Any: ...
    def word(self, v: int) -> Any: ...
    def to_word(self, a: Any) -> Any: ...
    def mul_word(self, a: Any, c: int) -> Any: ...
    def shr_word(self, a: Any, n: int) -> Any: ...
    def small(self, v: int) -> Any: ...
    def small_of_word(self, a: Any) -> Any: ...
    def add(self, a: Any, b: Any) -> Any: ...
    def sub(self, a: Any, b: Any) -> Any: ...
    def mul(self, a: Any, b: Any) -> Any: ...
    def div(self, a: Any, b: Any) -> Any: ...  # fp32 IEEE division, correctly rounded (NVFP4 only)
    def band(self, a: Any, b: Any) -> Any: ...
    def xor(self, a: Any, b: Any) -> Any: ...
    def shr(self, a: Any, b: Any) -> Any: ...
    def shl(self, a: Any, b: Any) -> Any: ...
    def lt(self, a: Any, b: Any) -> Any: ...
    def le(self, a: Any, b: Any) -> Any: ...
    def gt(self, a: Any, b: Any) -> Any: ...
    def ge(self, a: Any, b: Any) -> Any: ...
    def abs(self, a: Any) -> Any: ...
    def logical_and(self, a: Any, b: Any) -> Any: ...
    def where(self, c: Any, a: Any, b: Any) -> Any: ...
    def maximum(self, a: Any, b: Any) -> Any: ...
    def minimum(self, a: Any, b: Any) -> Any: ...
    def int_to_f32(self, a: Any) -> Any: ...
    def f32_bits(self, a: Any) -> Any: ...
    def bits_f32(self, a: Any) -> Any: ...


class Int64Words:
    """Words and small integers held in int64 (NOTE [integers]): the form of the eager op and of
    Inductor's C++ code. A mixin over a handler's `i64`, `band` and `mul`."""

    def word(self, v: int) -> Any:
        return self.i64(v)  # type: ignore[attr-defined]

    def to_word(self, a: Any) -> Any:
        return self.band(a, self.i64(MASK32))  # type: ignore[attr-defined]

    def mul_word(self, a: Any, c: int) -> Any:
        return self.band(self.mul(a, self.i64(c)), self.i64(MASK32))  # type: ignore[attr-defined]

    def shr_word(self, a: Any, n: int) -> Any:
        return self.shr(a, self.i64(n))  # type: ignore[attr-defined]  # logical: a >= 0

    def small(self, v: int) -> Any:
        return self.i64(v)  # type: ignore[attr-defined]

    def small_of_word(self, a: Any) -> Any:
        return a  # already int64


class TorchOps(Int64Words):
    """`SampleOps` over torch tensors (eager). Constants are 0-d tensors of the exact dtype."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def i64(self, v: int) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.int64, device=self.device)

    def f32(self, v: float) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float32, device=self.device)

    add = staticmethod(torch.add)
    sub = staticmethod(torch.sub)
    mul = staticmethod(torch.mul)
    div = staticmethod(torch.div)  # true division: IEEE, correctly rounded, on CPU and CUDA
    band = staticmethod(torch.bitwise_and)
    xor = staticmethod(torch.bitwise_xor)
    shr = staticmethod(torch.bitwise_right_shift)
    shl = staticmethod(torch.bitwise_left_shift)
    lt = staticmethod(torch.lt)
    le = staticmethod(torch.le)
    gt = staticmethod(torch.gt)
    ge = staticmethod(torch.ge)
    abs = staticmethod(torch.abs)
    logical_and = staticmethod(torch.logical_and)
    where = staticmethod(torch.where)
    maximum = staticmethod(torch.maximum)
    minimum = staticmethod(torch.minimum)

    @staticmethod
    def int_to_f32(a: torch.Tensor) -> torch.Tensor:
        return a.to(torch.float32)

    @staticmethod
    def f32_bits(a: torch.Tensor) -> torch.Tensor:
        return a.contiguous().view(torch.int32).to(torch.int64)

    @staticmethod
    def bits_f32(a: torch.Tensor) -> torch.Tensor:
        return a.to(torch.int32).view(torch.float32)


def mix32(o: SampleOps, x: Any) -> Any:
    """A 32-bit integer mixer (xor-shift-multiply, two rounds), x a word."""
    x = o.xor(x, o.shr_word(x, 16))
    x = o.mul_word(x, MIX_MUL_1)
    x = o.xor(x, o.shr_word(x, 15))
    x = o.mul_word(x, MIX_MUL_2)
    return o.xor(x, o.shr_word(x, 16))


def stream_words(o: SampleOps, seed: Any, key: Any) -> tuple[Any, Any]:
    """Two 32-bit words that select the noise stream of (seed, key). Both inputs int64."""
    seed32 = o.to_word(o.xor(seed, o.shr(seed, o.i64(32))))
    key32 = o.to_word(key)
    s1 = mix32(o, o.xor(seed32, mix32(o, o.xor(key32, o.word(KEY_SALT)))))
    s2 = mix32(o, o.xor(s1, o.word(STREAM_SALT)))
    return s1, s2


def element_hash(o: SampleOps, index: Any, s1: Any, s2: Any) -> Any:
    """The 32-bit draw of element `index`: its logical row-major index (< 2^32), as a word."""
    return mix32(o, o.xor(mix32(o, o.xor(index, s1)), s2))


def check_draw_input(t: torch.Tensor, what: str) -> None:
    """Refuse a seed or key that the raw ops would misread: it must be an integer tensor with one
    element (a float one would be truncated to another stream, a bool one is no stream)."""
    if t.numel() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"pqt: {what} must be an integer tensor with one element (pqt.sample makes an int64 0-d "
                         f"tensor from an int), got dtype {t.dtype} and shape {list(t.shape)}")


def floor_log2(o: SampleOps, x: Any) -> Any:
    """floor(log2(x)) for finite fp32 x >= 0, read from the exponent field (x = 0 gives -191).

    Subnormals are scaled by 2^64 first (exact) so that their exponent field is normal.
    """
    sub = o.lt(x, o.f32(2.0**-126))
    xs = o.where(sub, o.mul(x, o.f32(TWO_POW_64)), x)
    # The bits of xs >= 0 are below 2^31: the shift is the same arithmetic or logical.
    field = o.band(o.shr(o.f32_bits(xs), o.small(23)), o.small(255))
    return o.sub(field, o.where(sub, o.small(127 + 64), o.small(127)))


def pow2(o: SampleOps, n: Any) -> Any:
    """2^n as fp32 for a small integer n: normal, subnormal, or 0 below 2^-149 (n <= 127 by
    construction, so the normal bits (n + 127) << 23 stay below 2^31)."""
    normal = o.shl(o.maximum(o.add(n, o.small(127)), o.small(1)), o.small(23))
    subnormal = o.shl(o.small(1), o.minimum(o.maximum(o.add(n, o.small(149)), o.small(0)), o.small(22)))
    tiny = o.where(o.lt(n, o.small(-149)), o.small(0), subnormal)
    bits = o.where(o.gt(n, o.small(-127)), normal, tiny)
    return o.bits_f32(bits)


def _refuse_two_level(spec: FormatSpec) -> None:
    # Every power-of-two path (the op's, quantize's, the lowering's) passes through step_log2 or
    # block_exponent: NVFP4 must not fall into one and come out sampled on MXFP4's grid.
    if spec.two_level:
        raise ValueError(f"format {spec.name!r} has E4M3 block scales under a tensor scale, not 2^k_b: "
                         "its numerics are formula_nvfp4.py's")


def step_log2(o: SampleOps, absw: Any, amax: Any, spec: FormatSpec) -> Any:
    """log2 of the step Δ of each element (a small integer), given |w| and its block's amax (fp32)."""
    _refuse_two_level(spec)
    k = o.sub(floor_log2(o, amax), o.small(spec.emax))
    if spec.is_int:
        return k
    e = o.maximum(floor_log2(o, absw), o.add(k, o.small(spec.emin)))
    return o.sub(e, o.small(spec.mantissa_bits))


def sample_value(
    o: SampleOps,
    w32: Any,
    amax: Any,
    index: Any,
    seed: Any,
    key: Any,
    spec: FormatSpec,
    noise: str,
    noise_std: float,
) -> Any:
    """w_hat in fp32 before the final cast: w + Δ r where the block is finite and non-zero, else w.

    w32: the weight in fp32; amax: its block's max |w| in fp32 (NaN or Inf if the block holds
    one); index: the element's logical row-major index (< 2^32) as a word of `o`; seed, key:
    int64 (key in [0, 2^32), or negative: no noise). The per-block form (NOTE [per-block step])
    with the block values computed per element; the Inductor lowering computes them once per
    block and the stream words once per call instead, from the same functions.
    """
    s1, s2 = stream_words(o, seed, key)
    r = noise_from_hash(o, element_hash(o, index, s1, s2), noise, noise_std)
    # A negative key switches the weight's sample off (w_hat = w, cast): the compiled path's
    # runtime switch for eval mode and excluded weights (compiler/graph_abi.py, DISABLED_KEY).
    params = block_params(o, amax, spec, live=o.gt(key, o.i64(-1)))
    return sample_from_params(o, w32, params, r, spec)


def sample_value_direct(
    o: SampleOps,
    w32: Any,
    amax: Any,
    index: Any,
    seed: Any,
    key: Any,
    spec: FormatSpec,
    noise: str,
    noise_std: float,
) -> Any:
    """method.md step by step, per element: the reference that `sample_value` (the per-block form,
    NOTE [per-block step]) is tested against bit for bit (tests/test_formula_forms.py).

    w32: the weight in fp32; amax: its block's max |w| in fp32 (NaN or Inf if the block holds
    one); index: the element's logical row-major index (< 2^32) as a word of `o`; seed, key:
    int64 (key in [0, 2^32), or negative: no noise).
    """
    absw = o.where(o.lt(w32, o.f32(0.0)), o.sub(o.f32(0.0), w32), w32)
    valid = o.logical_and(o.gt(amax, o.f32(0.0)), o.le(amax, o.f32(FLT_MAX)))
    # Where the block is not valid, feed the exponent code a harmless 1.0 (the result is unused).
    safe_amax = o.where(valid, amax, o.f32(1.0))
    safe_absw = o.where(o.le(absw, o.f32(FLT_MAX)), absw, o.f32(0.0))
    delta = pow2(o, step_log2(o, safe_absw, safe_amax, spec))
    s1, s2 = stream_words(o, seed, key)
    r = noise_from_hash(o, element_hash(o, index, s1, s2), noise, noise_std)
    # A negative key switches the weight's sample off (w_hat = w, cast): the compiled path's
    # runtime switch for eval mode and excluded weights (compiler/graph_abi.py, DISABLED_KEY).
    valid = o.logical_and(valid, o.gt(key, o.i64(-1)))
    return o.where(valid, o.add(w32, o.mul(delta, r)), w32)


# NOTE [per-block step]: the same Δ r as `sample_value_direct`, split into what depends only on
# the block (`block_params`: computed once per block by the lowering) and a per-element part
# with no exponent arithmetic (`sample_from_params`). Exact, by these identities (x, T > 0 fp32):
#   max(floor_log2(x), c) = floor_log2(max(x, 2^c))        (floor_log2 is monotone)
#   2^floor_log2(a) = bits_f32(bits(a) & 0x7F800000)         (a normal: clear the mantissa)
#   2^(e - M) as fp32 = fl(2^e * 2^-M)                       (exact down to 2^-149; 2^-150 and
#                                                            below round to +0 under RNE, as pow2)
# Where the block's lowest exponent c = k + emin is below -126 (a block of tiny weights), |w|
# and 2^c are first scaled by 2^BLOCK_SHIFT (exact) so that max(|w| s, T) is normal; S =
# 2^(-M - shift) undoes it. Every format has emax - emin <= 30, so c + 64 >= -149 - 30 + 64 >
# -126. An invalid block (zero, NaN, Inf, or switched off by a negative key) gets S = -1 (int
# formats: D = -1): the per-element part tests the sign of Δ instead of reloading amax.
BLOCK_SHIFT = 64
_EXP_MASK = 0x7F800000


def block_exponent(o: SampleOps, amax: Any, spec: FormatSpec, live: Any = None) -> tuple[Any, Any]:
    """(valid, k_b): whether the block gets a step (amax finite and > 0, and `live`), and its
    scale exponent k_b = floor(log2 amax) - emax (a small integer; unused where not valid)."""
    _refuse_two_level(spec)
    valid = o.logical_and(o.gt(amax, o.f32(0.0)), o.le(amax, o.f32(FLT_MAX)))
    if live is not None:
        valid = o.logical_and(valid, live)
    return valid, o.sub(floor_log2(o, o.where(valid, amax, o.f32(1.0))), o.small(spec.emax))


def block_params(o: SampleOps, amax: Any, spec: FormatSpec, live: Any = None) -> tuple:
    """Per-block values of NOTE [per-block step], from the block's amax (fp32).

    float formats: (s, T, S), all fp32: |w| scale, floor, step scale (S < 0: no noise).
    int formats: (D,): the step 2^k itself (D < 0: no noise).
    live: an optional boolean that switches the noise off like an invalid block (a negative key).
    """
    assert spec.is_int or spec.emax - spec.emin <= 30
    valid, k = block_exponent(o, amax, spec, live)
    if spec.is_int:
        return (o.where(valid, pow2(o, k), o.f32(-1.0)),)
    c = o.add(k, o.small(spec.emin))
    tiny = o.lt(c, o.small(-126))
    shift = o.where(tiny, o.small(BLOCK_SHIFT), o.small(0))
    scale = o.where(tiny, o.f32(2.0**BLOCK_SHIFT), o.f32(1.0))
    floor = pow2(o, o.add(c, shift))
    step = o.where(tiny, o.f32(2.0 ** (-spec.mantissa_bits - BLOCK_SHIFT)), o.f32(2.0**-spec.mantissa_bits))
    return scale, floor, o.where(valid, step, o.f32(-1.0))


def step_from_params(o: SampleOps, absw: Any, params: tuple, spec: FormatSpec) -> Any:
    """Δ of an element (|w| given) from its block's `block_params`: < 0 (or NaN) where the block
    is not valid. With the step scale S replaced by c S, the product is c Δ (c a power of two)."""
    if spec.is_int:
        return params[0]
    scale, floor, step = params
    # max(|w| s, T) on the bits: both are >= +0, where the integer order of the bits is the
    # float order (one integer max; a NaN |w| only occurs in an invalid block, S < 0).
    a = o.maximum(o.f32_bits(o.mul(absw, scale)), o.f32_bits(floor))
    return o.mul(o.bits_f32(o.band(a, o.small(_EXP_MASK))), step)


def sample_from_params(o: SampleOps, w32: Any, params: tuple, r: Any, spec: FormatSpec) -> Any:
    """w_hat in fp32 before the final cast, from the block's `block_params` and the noise r."""
    delta = step_from_params(o, o.abs(w32), params, spec)
    # Δ >= +0 exactly in a valid block (D > 0, or S > 0); an invalid one has S = -1 and D >=
    # 2^-126 (or Inf), so Δ < 0 (or NaN, for a NaN |w|: the comparison is false).
    return o.where(o.ge(delta, o.f32(0.0)), o.add(w32, o.mul(delta, r)), w32)
