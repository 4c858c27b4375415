"""InductorOps: the formula's ops interface (formula.SampleOps) over Inductor's `ops` handler.

Every method looks `ops` up at call time: it is a virtualized handler that Inductor swaps
while it generates code (C++ on CPU, Triton on GPU).

Two word types (formula.py NOTE [word types]):
- `InductorOps` holds the generator's words in int64, masked after each multiply
  (`formula.Int64Words`): Inductor's C++ code. torch 2.13's C++ backend vectorises no loop
  that holds a uint32 value (codegen/cpp.py, VECTORIZABLE_DTYPES), and an int32 multiply
  that overflows is undefined behaviour in C++, so the C++ code keeps this form.
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

from ...compat import inductor_lowering_api
from ...formula import Int64Words

ops = inductor_lowering_api().ops

__all__ = ["InductorOps", "Native32Ops"]


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

    def small(self, v: int) -> Any:
        return ops.constant(v, torch.int32)

    def small_of_word(self, a: Any) -> Any:
        return ops.to_dtype(a, torch.int32)  # the callers' words are below 2^31

    def f32_bits(self, a: Any) -> Any:
        return ops.to_dtype_bitcast(a, torch.int32, torch.float32)

    def bits_f32(self, a: Any) -> Any:
        return ops.to_dtype_bitcast(a, torch.float32, torch.int32)
