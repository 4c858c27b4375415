"""The Inductor lowering of pqt.sample: a block-amax Reduction, per-block and per-call values, and one Pointwise.

Before (post-grad graph)::

    w_hat = pqt.sample(w, seed, key, axis=1, "fp6_e3m2", 32, "gaussian", 0.2887, bf16)
    mm = aten.mm(x, aten.t(w_hat))

After (IR)::

    amax = Reduction(max, |float32(w[n, 32 b + r])|, ranges=[N, ceil(K / 32)], reduction=[32])
    s, T, S = Pointwise(formula.block_params(amax[n, b], key)), ranges=[N, ceil(K / 32)]  (int: D)
    s1, s2 = Pointwise(formula.stream_words(seed, key)), ranges=[]      (once per call)
    iota = Pointwise(k), ranges=[K]                                     (NOTE [index iota])
    w_hat = Pointwise(formula.sample_from_params(w[n, k], (s, T, S)[n, k // 32],
                      noise_from_hash(element_hash(iota[k] + n K, s1, s2))))

With noise "rtn" (PQTConfig(mode="ste")) the block buffers hold rounding.rtn_params and the
Pointwise computes rounding.rtn_from_params(w[n, k], ...): no stream words, iota or hash.

The bodies are formula.py's, the functions that `formula.sample_value` (the eager op) composes
per element, so the generated code computes the eager op's bits (NOTE [per-block step] gives the
identities; tests/test_formula_forms.py checks them against method.md's step-by-step form).
Inductor fuses the block values into the amax kernel and the sample into its consumer: on CPU a
vectorised C++ kernel whose words are int32 vectors (inductor_ops.py NOTE [int32 words]); on GPU
a Triton kernel with uint32 words (or a GEMM prologue). Costs: docs/results.md (issue 14).

`pqt.sample_t` (emitted by compiler/passes/template_layout.py where a Triton GEMM template
reads the transpose of a sample) lowers to the same Pointwise iterated over the transposed
ranges [K, N]: the same values, written in the order the template reads them. Where a Triton
GEMM template may read the sample (compiler/targets.py `gemm_templates`), the Pointwise is
realised on its own, apart from the amax Reduction (a prologue must be pointwise), and listed
as a prologue candidate (compat.mark_prologue_candidate).

NOTE [partial block]: the last block along the axis may be shorter than B; its reduction
index is clamped to the last element (Min(pos, K - 1)), which repeats an element of the same
block and so leaves its max unchanged.
"""

from __future__ import annotations

import math

import sympy
import torch

from ...blocks import SUPPORTED_DTYPES, TENSOR, block_length, index_bound, num_blocks, row_major_strides
from ...compat import inductor_lowering_api, mark_prologue_candidate, triton_divides_exactly
from ...formats import parse_format
from ...formula import block_params, element_hash, noise_from_hash, sample_from_params, stream_words
from ...formula_nvfp4 import block_params as nvfp4_block_params
from ...formula_nvfp4 import sample_from_params as nvfp4_sample_from_params
from ...formula_nvfp4 import tensor_params as nvfp4_tensor_params
from ...op import RTN
from ...rounding import nvfp4_rtn_from_params, rtn_from_params, rtn_params
from ..targets import cpp_vectorised, gemm_templates, sample_plan, triton_codegen
from .inductor_ops import InductorOps, Int32WordOps, Native32Ops

__all__ = ["lower_sample", "lower_sample_t"]

_api = inductor_lowering_api()
ir, ops, FloorDiv = _api.ir, _api.ops, _api.FloorDiv


def _abs_f32(x):
    return ops.abs(ops.to_dtype(x, torch.float32))


@_api.register_lowering(torch.ops.pqt.sample.default, type_promotion_kind=None)
def lower_sample(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides=None,
                 index_offset=0, tensor_amax=None):
    """Lower one pqt.sample call (see the module docstring)."""
    return _lower(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides, index_offset,
                  tensor_amax, transposed=False)


@_api.register_lowering(torch.ops.pqt.sample_t.default, type_promotion_kind=None)
def lower_sample_t(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides=None,
                   index_offset=0, tensor_amax=None):
    """Lower one pqt.sample_t call: pqt.sample of a 2-D w, written transposed ([K, N] contiguous)."""
    return _lower(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides, index_offset,
                  tensor_amax, transposed=True)


def _lower(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides, index_offset,
           tensor_amax, transposed: bool):
    spec = parse_format(format)
    if w.get_dtype() not in SUPPORTED_DTYPES or out_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"pqt.sample lowering: unsupported dtypes {w.get_dtype()} -> {out_dtype}")
    device = w.get_device()
    size = list(w.get_size())
    nd = len(size)
    if transposed and nd != 2:
        raise ValueError(f"pqt.sample_t lowering: a 2-D weight is required, got {nd} dimensions")
    axis %= nd
    load_w = w.make_loader()
    geometry = _BlockGeometry(size, axis, block_size)
    numel = sympy.sympify(math.prod(size))
    plan = sample_plan(device, ragged=geometry.ragged, transposed=transposed,
                       numel=int(numel) if numel.is_number else None)

    amax = ir.Reduction.create(
        device=device, dst_dtype=torch.float32, src_dtype=torch.float32,
        inner_fn=lambda index, rindex: _abs_f32(load_w(geometry.element_of_block(index, rindex))),
        ranges=geometry.block_ranges, reduction_ranges=geometry.reduction_ranges, reduction_type="max",
    )
    amax.realize()
    load_amax = amax.make_loader()
    load_seed, load_key = seed.make_loader(), key.make_loader()
    # The draw index's strides: w's own row-major ones, or the full weight's for a shard
    # (sharding.py NOTE [global index]), whose offset then starts every index.
    strides = [sympy.sympify(s) for s in (row_major_strides(size) if index_strides is None else index_strides)]
    offset = sympy.Integer(index_offset)

    def seed_and_key():
        return (ops.to_dtype(load_seed([0] * len(seed.get_size())), torch.int64),
                ops.to_dtype(load_key([0] * len(key.get_size())), torch.int64))

    # The word types per code target (formula.py NOTE [word types]): `wo` for the per-element
    # part, `bo` for the per-block values and the per-call stream words.
    index_end = sympy.sympify(index_bound(size, index_strides, index_offset))
    if triton_codegen(device):
        wo = bo = Native32Ops()
        word_dtype = torch.uint32
    elif bool(index_end.is_number and int(index_end) < 2**31) and cpp_vectorised(device):
        wo, bo, word_dtype = Int32WordOps(), InductorOps(), torch.int32  # NOTE [int32 words]
    else:
        wo = bo = InductorOps()
        word_dtype = torch.int64

    rtn = noise == RTN  # PQTConfig(mode="ste"): round to nearest (rounding.py), no draw
    if spec.two_level and triton_codegen(device) and not triton_divides_exactly():
        raise RuntimeError(
            f"pqt.sample lowering: format {format!r} divides, and this torch ({torch.__version__}) has no "
            "ops.div_rn, so Inductor's Triton code would divide approximately and change the sample's bits. "
            "Compile through backend='pqt' (it sets the option), or set Inductor's "
            "eager_numerics.division_rounding=True (TORCHINDUCTOR_EMULATE_DIVISION_ROUNDING=1)."
        )
    if spec.two_level:
        # NVFP4 (formula_nvfp4.py): the block's one value S = s_b s_t, from its amax and the tensor
        # scale; the tensor's amax is the op's input (the pass computes it once per step, NOTE
        # [NVFP4 tensor amax] in passes/insert_sample.py) or, for a bare op, a Reduction here.
        load_amax_t = _tensor_amax_loader(w, load_w, tensor_amax, size, device)
        num_params = 1

        def params_of(o, amax_b, _spec, live):
            return nvfp4_block_params(o, amax_b, nvfp4_tensor_params(o, load_amax_t(), live=live))

        def sample_from(o, w32, params, r, _spec):
            return nvfp4_sample_from_params(o, w32, params, r)

        def rtn_from(o, w32, params, _spec):
            return nvfp4_rtn_from_params(o, w32, params)
    else:
        num_params = (1 if spec.is_int else 3) + (3 if rtn else 0)
        params_of = rtn_params if rtn else block_params
        sample_from, rtn_from = sample_from_params, rtn_from_params

    def live(o, k):  # a negative key switches the noise off (graph_abi.DISABLED_KEY)
        return o.gt(k, o.i64(-1))

    def draw(o, idx, s1, s2, first=None):
        """r of the element at w's index `idx` (first: the index's last-dim part, as a word)."""
        if first is None:
            index = o.index_word(sum((i * s for i, s in zip(idx, strides)), offset))
        else:
            index = ops.add(first, o.index_word(sum((i * s for i, s in zip(idx[:-1], strides[:-1])), offset)))
        return noise_from_hash(o, element_hash(o, index, s1, s2), noise, noise_std)

    def block_index(idx):
        return geometry.block_of_element(idx, indirect=plan.indirect_ragged_block)

    def one_kernel_value(idx, bidx):
        """The sample of w's element `idx` in block `bidx`, in the one-kernel form: the block values
        from the reduced amax, the stream words from the seed and key (scalar loads), the element
        index an index expression."""
        seed_v, key_v = seed_and_key()
        w32 = ops.to_dtype(load_w(idx), torch.float32)
        params = params_of(wo, load_amax(bidx), spec, live=live(wo, key_v))
        if rtn:
            value = rtn_from(wo, w32, params, spec)
        else:
            value = sample_from(wo, w32, params, draw(wo, idx, *stream_words(wo, seed_v, key_v)), spec)
        return ops.to_dtype(value, out_dtype)

    if plan.fused_block_kernel and plan.fused_over_blocks:
        # NOTE [one kernel per weight]: the sample iterates the block's elements innermost, the
        # ranges of the amax Reduction followed by its reduction range; it reads amax at the index
        # the Reduction writes, so Inductor's scheduler fuses the two into one persistent
        # reduction kernel (the read and write MemoryDeps match, as for softmax), and the two loads
        # of w at one index become one. The output is stored in w's row-major order (a fill order
        # over the fused ranges) and returned as w's shape: no copy, no other kernel.
        def fused_fn(fidx):
            return one_kernel_value(geometry.element_of_fused(fidx), geometry.block_of_fused(fidx))

        out = ir.Pointwise.create(device=device, dtype=out_dtype, inner_fn=fused_fn, ranges=geometry.fused_ranges)
        out.realize()
        buffer = out.data.data
        buffer.freeze_layout_with_fill_order(geometry.fused_fill_order)
        return ir.TensorBox(ir.ReinterpretView(
            data=buffer, layout=ir.FixedLayout(device, out_dtype, size, row_major_strides(size))))
    if plan.fused_block_kernel:
        # NOTE [one kernel per weight in C++]: the same values over w's own ranges, reading amax at
        # the element's block (x // B). The C++ scheduler splits that loop at B (its loop split)
        # and writes it with the Reduction into one C++ kernel: one loop nest where a row is one
        # block, two where it has more (the amax, then the sample; w is read by each, as in the
        # block-major form's two inner loops). The buffer is w's shape: the wrapper passes it to
        # the GEMM and reuses it without a view (reinterpret_tensor, about 0.8 us of host time
        # each, several per weight per step over the fused ranges).
        out = ir.Pointwise.create(device=device, dtype=out_dtype, ranges=size,
                                  inner_fn=lambda idx: one_kernel_value(idx, block_index(idx)))
        out.realize()
        return out

    # NOTE [per-block step]: the block's values (formula.block_params) once per block, in one
    # buffer [number of values, *block ranges] (one allocation per call, not one per value: host
    # time, wrapper.py NOTE [host time per call]), instead of an exponent computation per element.
    # The key's switch (a negative key: no noise) is folded in here.

    def params_fn(pidx):
        _, k = seed_and_key()
        values = params_of(bo, load_amax(pidx[1:]), spec, live=live(bo, k))
        return _select_by_index(pidx[0], values)

    params_buf = ir.Pointwise.create(device=device, dtype=torch.float32, inner_fn=params_fn,
                                     ranges=[num_params, *geometry.block_ranges])
    params_buf.realize()
    load_params_buf = params_buf.make_loader()
    load_params = [lambda bidx, j=j: load_params_buf([j, *bidx]) for j in range(num_params)]

    if rtn:

        def rtn_fn(out_idx):
            idx = list(reversed(out_idx)) if transposed else out_idx
            w32 = ops.to_dtype(load_w(idx), torch.float32)
            value = rtn_from(wo, w32, tuple(load(block_index(idx)) for load in load_params), spec)
            return ops.to_dtype(value, out_dtype)

        return _pointwise(device, out_dtype, rtn_fn, size, transposed)

    if plan.per_call_word_buffers:
        # The two stream words once per call (0-d buffers), stored as words: the vectorised C++ loop
        # would otherwise recompute them per element (it cannot hoist loads past its stores). In
        # C++ they are computed in int64 (a 0-d loop is scalar code, where an int32 multiply could
        # overflow: NOTE [int32 words]).
        def words_fn(widx):
            return _select_by_index(widx[0], [ops.to_dtype(v, word_dtype) for v in stream_words(bo, *seed_and_key())])

        words_buf = ir.Pointwise.create(device=device, dtype=word_dtype, inner_fn=words_fn, ranges=[2])
        words_buf.realize()
        load_words = words_buf.make_loader()

        def words():
            return load_words([0]), load_words([1])
    else:

        def words():  # Triton: from two scalar loads, once per program (no kernel of their own)
            return stream_words(wo, *seed_and_key())

    load_iota = None
    if plan.index_iota:
        # NOTE [index iota]: the element's logical index as iota[k] + (the other dims' part), with
        # iota a realized buffer over the last dim: the vectorised C++ loop reads the varying part
        # with one vector load, where `index_expr` of the whole index prints
        # Vectorized<int32_t>::arange(base, 1), which g++ 12 builds lane by lane.
        iota = ir.Pointwise.create(
            device=device, dtype=word_dtype, inner_fn=lambda i: wo.index_word(i[0] * strides[-1]), ranges=[size[-1]]
        )
        iota.realize()
        with _api.force_realize():  # a buffer that reads nothing is otherwise inlined back
            load_iota = iota.make_loader()

    def sample_fn(out_idx):
        idx = list(reversed(out_idx)) if transposed else out_idx  # the weight's own index
        bidx = block_index(idx)
        r = draw(wo, idx, *words(), first=None if load_iota is None else load_iota([idx[-1]]))
        w32 = ops.to_dtype(load_w(idx), torch.float32)
        value = sample_from(wo, w32, tuple(load(bidx) for load in load_params), r, spec)
        return ops.to_dtype(value, out_dtype)

    return _pointwise(device, out_dtype, sample_fn, size, transposed)


def _tensor_amax_loader(w, load_w, tensor_amax, size, device):
    """A loader of the whole weight's max |w| (fp32, 0-d): the op's `tensor_amax` input, or a
    Reduction over w (a bare pqt.sample call; the pass always gives the input)."""
    if tensor_amax is not None:
        load = tensor_amax.make_loader()
        zeros = [0] * len(tensor_amax.get_size())
        return lambda: ops.to_dtype(load(zeros), torch.float32)
    red = ir.Reduction.create(device=device, dst_dtype=torch.float32, src_dtype=torch.float32,
                              inner_fn=lambda index, rindex: _abs_f32(load_w(rindex)), ranges=[],
                              reduction_ranges=size, reduction_type="max")
    red.realize()
    load = red.make_loader()
    return lambda: load([])


def _select_by_index(i, values):
    """values[i] for a loop index i (several values computed, one stored per position)."""
    out = values[-1]
    for j in range(len(values) - 2, -1, -1):
        out = ops.where(ops.eq(ops.index_expr(i, torch.int64), ops.constant(j, torch.int64)), values[j], out)
    return out


class _BlockGeometry:
    """The blocks of a weight along its reduction axis, as index maps for the lowering.

    Block ranges: w's shape with the axis replaced by the number of blocks (the amax Reduction's
    ranges; its reduction range is the block length). Fused ranges (exact blocks only): the block
    ranges followed by the block length, the iteration of the one-kernel form (NOTE [one kernel
    per weight]). "tensor" blocks: one block, no block ranges.
    """

    def __init__(self, size: list, axis: int, block_size: int) -> None:
        self.size, self.axis, self.tensor = size, axis, block_size == TENSOR
        if self.tensor:
            self.block_ranges, self.reduction_ranges, self.ragged = [], list(size), False
            self.fused_ranges = list(size)
            self.fused_fill_order = list(reversed(range(len(size))))
            return
        k = sympy.sympify(size[axis])
        self.b = sympy.sympify(block_length(k, block_size))  # blocks.py: never longer than the axis
        self.k, self.nb = k, num_blocks(k, block_size)
        self.ragged = not (k % self.b == 0)
        self.block_ranges = [*size[:axis], self.nb, *size[axis + 1:]]
        self.reduction_ranges = [self.b]
        nd = len(size)
        self.fused_ranges = [*self.block_ranges, self.b]
        # w's row-major order over the fused dims, fastest first: the dims after the axis (last
        # first), the element within its block, the block, the dims before the axis.
        self.fused_fill_order = [*range(nd - 1, axis, -1), nd, axis, *range(axis - 1, -1, -1)]

    def element_of_block(self, index, rindex):
        """w's index of element `rindex` of the block at block index `index` (the Reduction's body)."""
        if self.tensor:
            return rindex
        pos = index[self.axis] * self.b + rindex[0]
        if self.ragged:
            pos = sympy.Min(pos, self.k - 1)  # NOTE [partial block]
        return [*index[:self.axis], pos, *index[self.axis + 1:]]

    def element_of_fused(self, fidx):
        if self.tensor:
            return fidx
        return self.element_of_block(fidx[:-1], fidx[-1:])

    def block_of_fused(self, fidx):
        return [] if self.tensor else fidx[:-1]

    def block_of_element(self, idx, indirect: bool):
        """The block index of w's element `idx`."""
        if self.tensor:
            return []
        axis = self.axis
        if indirect and self.ragged:
            # NOTE [ragged split]: workaround for torch 2.13's C++ loop split
            # (CppScheduling.try_loop_split), which rewrites a loop indexed by x // B into
            # (x // B, x % B) with range K // B, dropping the last K % B elements when B
            # does not divide K. Computing the block with integer ops and indexing
            # indirectly leaves no FloorDiv in the index for it to split on. The `| 0`
            # comes first: IndexPropagation does not model bitwise ops, so the division
            # acts on a value and is not folded back into an index_expr(x // B).
            pos = ops.bitwise_or(ops.index_expr(idx[axis], torch.int64), ops.constant(0, torch.int64))
            blk = ops.floordiv(pos, ops.constant(int(self.b), torch.int64))
            return [*idx[:axis], ops.indirect_indexing(blk, self.nb, check=False), *idx[axis + 1:]]
        return [*idx[:axis], FloorDiv(idx[axis], self.b), *idx[axis + 1:]]


def _pointwise(device, out_dtype, inner_fn, size, transposed: bool):
    """The op's output: one Pointwise over w's ranges (transposed for sample_t), a GEMM prologue
    candidate where a Triton template may read it."""
    out = ir.Pointwise.create(device=device, dtype=out_dtype, inner_fn=inner_fn,
                              ranges=list(reversed(size)) if transposed else size)
    if gemm_templates(device):
        mark_prologue_candidate(out)
    return out
