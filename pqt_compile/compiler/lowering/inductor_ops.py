"""InductorOps: the formula's ops interface (formula.SampleOps) over Inductor's `ops` handler.

Every method looks `ops` up at call time: it is a virtualized handler that Inductor swaps
while it generates code (C++ on CPU, Triton on GPU).
"""

from __future__ import annotations

from typing import Any

import torch

from ...compat import inductor_lowering_api

ops = inductor_lowering_api().ops

__all__ = ["InductorOps"]


class InductorOps:
    """formula.SampleOps for Inductor. Integers are int64, floats float32."""

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
