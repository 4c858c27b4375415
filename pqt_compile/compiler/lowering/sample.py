"""The Inductor lowering of pqt.sample: a block-amax Reduction and one Pointwise.

Before (post-grad graph)::

    w_hat = pqt.sample(w, seed, key, axis=1, "fp6_e3m2", 32, "gaussian", 0.2887, bf16)
    mm = aten.mm(x, aten.t(w_hat))

After (IR)::

    amax = Reduction(max, |float32(w[n, 32 b + r])|, ranges=[N, ceil(K / 32)], reduction=[32])
    w_hat = Pointwise(formula.sample_value(InductorOps, w[n, k], amax[n, k // 32], n K + k, ...))

The Pointwise body is `formula.sample_value`, the same function the eager op runs, so the
generated code computes the eager op's bits. Inductor is then free to fuse it: on CPU into
a C++ kernel before the GEMM; on GPU into a Triton kernel (or a GEMM prologue).

NOTE [partial block]: the last block along the axis may be shorter than B; its reduction
index is clamped to the last element (Min(pos, K - 1)), which repeats an element of the same
block and so leaves its max unchanged.
"""

from __future__ import annotations

import sympy
import torch

from ...blocks import SUPPORTED_DTYPES, TENSOR, block_length, num_blocks
from ...compat import inductor_lowering_api
from ...formats import parse_format
from ...formula import sample_value
from ..targets import cpp_backend, triton_codegen
from .inductor_ops import InductorOps, Native32Ops

__all__ = ["lower_sample"]

_api = inductor_lowering_api()
ir, ops, FloorDiv = _api.ir, _api.ops, _api.FloorDiv


def _abs_f32(x):
    return ops.abs(ops.to_dtype(x, torch.float32))


@_api.register_lowering(torch.ops.pqt.sample.default, type_promotion_kind=None)
def lower_sample(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype):
    """Lower one pqt.sample call (see the module docstring)."""
    spec = parse_format(format)
    if w.get_dtype() not in SUPPORTED_DTYPES or out_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"pqt.sample lowering: unsupported dtypes {w.get_dtype()} -> {out_dtype}")
    device = w.get_device()
    size = list(w.get_size())
    nd = len(size)
    axis %= nd
    load_w = w.make_loader()

    if block_size == TENSOR:  # one block: the whole tensor

        def amax_fn(index, rindex):
            return _abs_f32(load_w(rindex))

        amax = ir.Reduction.create(
            device=device, dst_dtype=torch.float32, src_dtype=torch.float32, inner_fn=amax_fn,
            ranges=[], reduction_ranges=size, reduction_type="max",
        )
        block_index = lambda idx: []  # noqa: E731
    else:
        k = sympy.sympify(size[axis])
        b = sympy.sympify(block_length(k, block_size))  # blocks.py: never longer than the axis
        nb = num_blocks(k, block_size)
        ragged = not (k % b == 0)

        def amax_fn(index, rindex):
            pos = index[axis] * b + rindex[0]
            if ragged:
                pos = sympy.Min(pos, k - 1)  # NOTE [partial block]
            return _abs_f32(load_w([*index[:axis], pos, *index[axis + 1 :]]))

        amax = ir.Reduction.create(
            device=device, dst_dtype=torch.float32, src_dtype=torch.float32, inner_fn=amax_fn,
            ranges=[*size[:axis], nb, *size[axis + 1 :]], reduction_ranges=[b], reduction_type="max",
        )

        def block_index(idx):
            if ragged and cpp_backend(device):
                # NOTE [ragged split]: workaround for torch 2.13's C++ loop split
                # (CppScheduling.try_loop_split), which rewrites a loop indexed by x // B into
                # (x // B, x % B) with range K // B, dropping the last K % B elements when B
                # does not divide K. Computing the block with integer ops and indexing
                # indirectly leaves no FloorDiv in the index for it to split on. The `| 0`
                # comes first: IndexPropagation does not model bitwise ops, so the division
                # acts on a value and is not folded back into an index_expr(x // B).
                pos = ops.bitwise_or(ops.index_expr(idx[axis], torch.int64), ops.constant(0, torch.int64))
                blk = ops.floordiv(pos, ops.constant(int(b), torch.int64))
                return [*idx[:axis], ops.indirect_indexing(blk, nb, check=False), *idx[axis + 1 :]]
            return [*idx[:axis], FloorDiv(idx[axis], b), *idx[axis + 1 :]]

    amax.realize()
    load_amax = amax.make_loader()
    load_seed, load_key = seed.make_loader(), key.make_loader()
    strides = [sympy.Integer(1)] * nd
    for d in range(nd - 2, -1, -1):
        strides[d] = strides[d + 1] * size[d + 1]
    # The generator's word type per backend (formula.py NOTE [word types]).
    o = Native32Ops() if triton_codegen(device) else InductorOps()

    def sample_fn(idx):
        linear = sum((i * s for i, s in zip(idx, strides)), sympy.Integer(0))
        value = sample_value(
            o,
            ops.to_dtype(load_w(idx), torch.float32),
            load_amax(block_index(idx)),
            o.index_word(linear),
            ops.to_dtype(load_seed([0] * len(seed.get_size())), torch.int64),
            ops.to_dtype(load_key([0] * len(key.get_size())), torch.int64),
            spec,
            noise,
            noise_std,
        )
        return ops.to_dtype(value, out_dtype)

    return ir.Pointwise.create(device=device, dtype=out_dtype, inner_fn=sample_fn, ranges=size)
