"""InductorOps: the formula's ops interface (formula.SampleOps) over Inductor's `ops` handler.

Every method looks `ops` up at call time: it is a virtualized handler that Inductor swaps
while it generates code (C++ on CPU, Triton on GPU).

Two word types (formula.py NOTE [word types]):
- `InductorOps` holds the generator's words in int64, masked after each multiply
  (`formula.Int64Words`): Inductor's C++ code where it is not vectorised, and the per-block
  and per-call values of the lowering.
- `Int32WordOps` holds words as int32 bit patterns (NOTE [int32 words]): the per-element part
  of Inductor's vectorised C++ code.
- `Native32Ops` holds words in uint32 and the exponent code in int32: Inductor's Triton code
  (GPU, or CPU with cpu_backend="triton"). A GPU has no 64-bit integer multiplier; each int64
  multiply, shift or compare becomes two or three 32-bit instructions. Triton's uint32
  multiply wraps modulo 2^32 and its uint32 right shift is logical, so no mask is needed.
  Inductor's dtype propagation keeps an expression uint32 only if every operand is: every
  constant combined with a word must itself be a uint32 constant (`word`), or the expression
  is promoted back to int64.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch

from ...compat import ieee_division, inductor_lowering_api
from ...formula import Int64Words

ops = inductor_lowering_api().ops

__all__ = ["InductorOps", "Native32Ops", "Int32WordOps"]


class InductorOps(Int64Words):
    """formula.SampleOps for Inductor's C++ code: words and small integers in int64, floats float32."""

    def index_word(self, index: sympy.Expr) -> Any:
        """An element's logical index (< 2^32, a sympy expression) as a word."""
        return ops.index_expr(index, torch.int64)

    def i64(self, v: int) -> Any:
        return ops.constant(v, torch.int64)

    def f32(self, v: float) -> Any:
        # `v` is already an fp32 value; Inductor prints it as a double literal that casts back
        # to exactly that fp32 value.
        return ops.constant(v, torch.float32)

    def add(self, a: Any, b: Any) -> Any:
        return ops.add(a, b)

    def sub(self, a: Any, b: Any) -> Any:
        return ops.sub(a, b)

    def mul(self, a: Any, b: Any) -> Any:
        return ops.mul(a, b)

    def div(self, a: Any, b: Any) -> Any:
        # IEEE division, correctly rounded (NVFP4's block scale): Triton's `/` is an approximation
        # (div.full.f32), its div_rn is not; C++ divides exactly either way. torch 2.11 has no
        # ops.div_rn: compat NOTE [division on torch 2.11].
        return ieee_division(a, b)

    def band(self, a: Any, b: Any) -> Any:
        return ops.bitwise_and(a, b)

    def xor(self, a: Any, b: Any) -> Any:
        return ops.bitwise_xor(a, b)

    def shr(self, a: Any, b: Any) -> Any:
        return ops.bitwise_right_shift(a, b)

    def shl(self, a: Any, b: Any) -> Any:
        return ops.bitwise_left_shift(a, b)

    def lt(self, a: Any, b: Any) -> Any:
        return ops.lt(a, b)

    def le(self, a: Any, b: Any) -> Any:
        return ops.le(a, b)

    def gt(self, a: Any, b: Any) -> Any:
        return ops.gt(a, b)

    def ge(self, a: Any, b: Any) -> Any:
        return ops.ge(a, b)

    def abs(self, a: Any) -> Any:
        return ops.abs(a)

    def logical_and(self, a: Any, b: Any) -> Any:
        return ops.logical_and(a, b)

    def where(self, c: Any, a: Any, b: Any) -> Any:
        return ops.where(c, a, b)

    def maximum(self, a: Any, b: Any) -> Any:
        return ops.maximum(a, b)

    def minimum(self, a: Any, b: Any) -> Any:
        return ops.minimum(a, b)

    def int_to_f32(self, a: Any) -> Any:
        return ops.to_dtype(a, torch.float32)

    def f32_bits(self, a: Any) -> Any:
        return ops.to_dtype(ops.to_dtype_bitcast(a, torch.int32, torch.float32), torch.int64)

    def bits_f32(self, a: Any) -> Any:
        return ops.to_dtype_bitcast(ops.to_dtype(a, torch.int32), torch.float32, torch.int32)


class Native32Ops(InductorOps):
    """formula.SampleOps for Inductor's Triton code: words in uint32, small integers in int32."""

    def index_word(self, index: sympy.Expr) -> Any:
        return ops.to_dtype(super().index_word(index), torch.uint32)

    def word(self, v: int) -> Any:
        return ops.constant(v, torch.uint32)

    def to_word(self, a: Any) -> Any:
        # int64 -> uint32 keeps the low 32 bits (a truncating conversion): a mod 2^32.
        return ops.to_dtype(a, torch.uint32)

    def mul_word(self, a: Any, c: int) -> Any:
        return ops.mul(a, ops.constant(c, torch.uint32))  # wraps modulo 2^32

    def shr_word(self, a: Any, n: int) -> Any:
        return ops.bitwise_right_shift(a, self.word(n))  # logical on uint32

    def small(self, v: int) -> Any:
        return ops.constant(v, torch.int32)

    def small_of_word(self, a: Any) -> Any:
        return ops.to_dtype(a, torch.int32)  # the callers' words are below 2^31

    def f32_bits(self, a: Any) -> Any:
        return ops.to_dtype_bitcast(a, torch.int32, torch.float32)

    def bits_f32(self, a: Any) -> Any:
        return ops.to_dtype_bitcast(a, torch.float32, torch.int32)


class Int32WordOps(InductorOps):
    """formula.SampleOps for Inductor's vectorised C++ code: words as int32 bit patterns (a word
    w >= 2^31 is held as w - 2^32), small integers in int32.

    NOTE [int32 words]: torch 2.13's C++ backend vectorises int32 (at::vec::Vectorized<int32_t>,
    16 lanes per AVX-512 register against 8 for int64) but no loop that holds a uint32 value
    (codegen/cpp.py, VECTORIZABLE_DTYPES). Its vector multiply and shifts are the wrapping
    machine instructions (vpmulld, vpsrad), so the product is the word product modulo 2^32 with
    no undefined behaviour; xor and and are the same bits; a logical right shift by n is the
    arithmetic one masked to its low 32 - n bits. The one construct with undefined behaviour is
    a *scalar* int32 multiply that overflows, so the lowering uses this handler only where the
    C++ backend vectorises (lowering/sample.py, `_int32_words`), int64 words elsewhere; and even
    there a word that depends on no index (the stream words from the scalar seed and key) is
    computed in int64 and cut to int32 (forms.SampleForm._scalar_words): the C++ code computes it
    as a scalar, and g++ used the undefined wrap on a uint8 key (session 18).
    """

    def index_word(self, index: sympy.Expr) -> Any:
        return ops.index_expr(index, torch.int32)  # callers guarantee index < 2^31

    def word(self, v: int) -> Any:
        return ops.constant(v - (1 << 32) if v >= 1 << 31 else v, torch.int32)

    def to_word(self, a: Any) -> Any:
        return ops.to_dtype(a, torch.int32)  # the low 32 bits

    def mul_word(self, a: Any, c: int) -> Any:
        return ops.mul(a, ops.constant(c, torch.int32))  # c < 2^31; the vector multiply wraps

    def shr_word(self, a: Any, n: int) -> Any:
        shifted = ops.bitwise_right_shift(a, ops.constant(n, torch.int32))
        return ops.bitwise_and(shifted, ops.constant((1 << (32 - n)) - 1, torch.int32))

    def small(self, v: int) -> Any:
        return ops.constant(v, torch.int32)

    def small_of_word(self, a: Any) -> Any:
        return a  # the callers' words are below 2^31: the same int32

    def f32_bits(self, a: Any) -> Any:
        return ops.to_dtype_bitcast(a, torch.int32, torch.float32)

    def bits_f32(self, a: Any) -> Any:
        return ops.to_dtype_bitcast(a, torch.float32, torch.int32)
