"""The two forms of a weight's sample in Inductor IR, and the pieces they are built from.

`SampleForm` holds what the lowering of one sample needs (the format, the blocks along the
axis, the word types of the code target, the formula's bodies) and builds either form:

- the one-kernel form (`one_kernel`): block amax, block values, stream words and the element in
  one kernel per weight (NOTE [one kernel per weight], [one kernel per weight in C++]);
- the per-block form: the block values once per block (`block_values`), the stream words once
  per call (`stream_words_buffer`), then one Pointwise per element (`from_values`), which reads
  them. pqt.sample builds the three in one lowering; a training graph's split sample
  (sample_parts.py) lowers them one op each, so the backward reads the forward's values.

The bodies are formula.py's (NOTE [per-block step]); sample.py says what the IR looks like.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import sympy
import torch

from ...blocks import (SUPPORTED_DTYPES, TENSOR, block_length, has_partial_block, index_bound, num_blocks,
                       row_major_strides)
from ...compat import inductor_lowering_api, mark_prologue_candidate, triton_divides_exactly
from ...formats import parse_format
from ...formula import element_hash, stream_words
from ...formula_noise import noise_from_hash
from ...op import RTN
from ...sample_parts import block_values_of, num_block_values, value_from_block_values
from ..targets import cpp_vectorised, gemm_templates, sample_plan, triton_codegen
from .inductor_ops import InductorOps, Int32WordOps, Native32Ops

__all__ = ["SampleForm", "stream_words_buffer", "stream_words_rows", "scalar_loader"]

_api = inductor_lowering_api()
ir, ops, FloorDiv = _api.ir, _api.ops, _api.FloorDiv

Loader = Callable[..., Any]


def _abs_f32(x):
    return ops.abs(ops.to_dtype(x, torch.float32))


class SampleForm:
    """One weight's sample as Inductor IR (see the module docstring).

    w: the weight (an IR value); the other arguments are the op's (op.py). out_dtype is unused
    by `block_values`; tensor_amax: NVFP4's whole-weight amax, or None (a Reduction over w).
    """

    def __init__(self, w, axis: int, format: str, block_size: int, noise: str, noise_std: float,
                 out_dtype: torch.dtype, index_strides: Optional[list], index_offset: int, tensor_amax,
                 transposed: bool) -> None:
        spec = parse_format(format)
        if w.get_dtype() not in SUPPORTED_DTYPES or out_dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"pqt.sample lowering: unsupported dtypes {w.get_dtype()} -> {out_dtype}")
        self.spec, self.noise, self.noise_std, self.out_dtype = spec, noise, noise_std, out_dtype
        self.device = w.get_device()
        self.size = size = list(w.get_size())
        nd = len(size)
        if transposed and nd != 2:
            raise ValueError(f"pqt.sample_t lowering: a 2-D weight is required, got {nd} dimensions")
        self.transposed = transposed
        self.load_w = w.make_loader()
        self.geometry = _BlockGeometry(size, axis % nd, block_size)
        numel = sympy.sympify(math.prod(size))
        self.plan = sample_plan(self.device, ragged=self.geometry.ragged, transposed=transposed,
                                numel=int(numel) if numel.is_number else None)
        # The draw index's strides: w's own row-major ones, or the full weight's for a shard
        # (sharding.py NOTE [global index]), whose offset then starts every index.
        self.strides = [sympy.sympify(s) for s in (row_major_strides(size) if index_strides is None else index_strides)]
        self.offset = sympy.Integer(index_offset)
        # The word types per code target (formula.py NOTE [word types]), for the per-element part
        # and the per-block values alike (NOTE [32-bit block values]); the per-call stream words
        # are computed in int64 (`stream_words_buffer`: scalar code, where an int32 multiply that
        # wraps is undefined behaviour).
        index_end = sympy.sympify(index_bound(size, index_strides, index_offset))
        if triton_codegen(self.device):
            self.wo = Native32Ops()
            self.word_dtype = torch.uint32
        elif bool(index_end.is_number and int(index_end) < 2**31) and cpp_vectorised(self.device):
            self.wo = Int32WordOps()  # NOTE [int32 words]
            self.word_dtype = torch.int32
        else:
            self.wo = InductorOps()
            self.word_dtype = torch.int64
        self.rtn = noise == RTN  # PQTConfig(mode="ste"): round to nearest (rounding.py), no draw
        if spec.two_level and triton_codegen(self.device) and not triton_divides_exactly():
            raise RuntimeError(
                f"pqt.sample lowering: format {format!r} divides, and this torch ({torch.__version__}) has no "
                "ops.div_rn, so Inductor's Triton code would divide approximately and change the sample's bits. "
                "Compile through backend='pqt' (it sets the option), or set Inductor's "
                "eager_numerics.division_rounding=True (TORCHINDUCTOR_EMULATE_DIVISION_ROUNDING=1)."
            )
        if spec.two_level:
            # NVFP4 (formula_nvfp4.py): the block's one value S = s_b s_t, from its amax and the tensor
            # scale; the tensor's amax is the op's input (the pass computes it once per step, NOTE
            # [NVFP4 tensor amax] in passes/insert_sample.py) or, for a bare op, a Reduction here,
            # made with the block amax (`block_amax`): the element part (`from_values`) needs no
            # tensor scale, and IR is made before any body runs, never inside one.
            self._make_amax_t = lambda: _tensor_amax_loader(w, self.load_w, tensor_amax, size, self.device)
        self.num_params = num_block_values(spec, noise)

    def _params_of(self, o, amax_b, live) -> tuple:
        """The block values of a block of amax `amax_b` (sample_parts.block_values_of)."""
        amax_t = self._load_amax_t() if self.spec.two_level else None
        return block_values_of(o, self.spec, self.noise, amax_b, live, amax_t)

    @staticmethod
    def live(o, key):
        """Whether the noise is on: a negative key switches it off (graph_abi.DISABLED_KEY)."""
        return o.gt(key, o.i64(-1))

    def _draw(self, o, idx, s1, s2, first=None):
        """r of the element at w's index `idx` (first: the index's last-dim part, as a word)."""
        if first is None:
            index = o.index_word(sum((i * s for i, s in zip(idx, self.strides)), self.offset))
        else:
            index = ops.add(first, o.index_word(sum((i * s for i, s in zip(idx[:-1], self.strides[:-1])), self.offset)))
        return noise_from_hash(o, element_hash(o, index, s1, s2), self.noise, self.noise_std)

    def _block_index(self, idx):
        return self.geometry.block_of_element(idx, indirect=self.plan.indirect_ragged_block)

    def block_amax(self) -> Loader:
        """The block amax Reduction (realized), as a loader over the block ranges."""
        g, load_w = self.geometry, self.load_w
        amax = ir.Reduction.create(
            device=self.device, dst_dtype=torch.float32, src_dtype=torch.float32,
            inner_fn=lambda index, rindex: _abs_f32(load_w(g.element_of_block(index, rindex))),
            ranges=g.block_ranges, reduction_ranges=g.reduction_ranges, reduction_type="max",
        )
        amax.realize()
        if self.spec.two_level:
            self._load_amax_t = self._make_amax_t()
        return amax.make_loader()

    def one_kernel(self, load_seed: Loader, load_key: Loader):
        """The one-kernel form (the plan's `fused_block_kernel`): the sample, as w's shape."""
        load_amax = self.block_amax()

        def value(idx, bidx):
            """The sample of w's element `idx` in block `bidx`: the block values from the reduced
            amax, the stream words from the seed and key (scalar loads), the index an expression."""
            wo, seed_v, key_v = self.wo, load_seed(), load_key()
            w32 = ops.to_dtype(self.load_w(idx), torch.float32)
            params = self._params_of(wo, load_amax(bidx), self.live(wo, key_v))
            r = None if self.rtn else self._draw(wo, idx, *self._scalar_words(seed_v, key_v))
            return ops.to_dtype(value_from_block_values(wo, self.spec, self.noise, w32, params, r), self.out_dtype)

        g, device, out_dtype, size = self.geometry, self.device, self.out_dtype, self.size
        if self.plan.fused_over_blocks:
            # NOTE [one kernel per weight]: the sample iterates the block's elements innermost, the
            # ranges of the amax Reduction followed by its reduction range; it reads amax at the index
            # the Reduction writes, so Inductor's scheduler fuses the two into one persistent
            # reduction kernel (the read and write MemoryDeps match, as for softmax), and the two loads
            # of w at one index become one. The output is stored in w's row-major order (a fill order
            # over the fused ranges) and returned as w's shape: no copy, no other kernel.
            out = ir.Pointwise.create(device=device, dtype=out_dtype, ranges=g.fused_ranges,
                                      inner_fn=lambda fidx: value(g.element_of_fused(fidx), g.block_of_fused(fidx)))
            out.realize()
            buffer = out.data.data
            buffer.freeze_layout_with_fill_order(g.fused_fill_order)
            return ir.TensorBox(ir.ReinterpretView(
                data=buffer, layout=ir.FixedLayout(device, out_dtype, size, row_major_strides(size))))
        # NOTE [one kernel per weight in C++]: the same values over w's own ranges, reading amax at
        # the element's block (x // B). The C++ scheduler splits that loop at B (its loop split)
        # and writes it with the Reduction into one C++ kernel: one loop nest where a row is one
        # block, two where it has more (the amax, then the sample; w is read by each, as in the
        # block-major form's two inner loops). The buffer is w's shape: the wrapper passes it to
        # the GEMM and reuses it without a view (reinterpret_tensor, about 0.8 us of host time
        # each, several per weight per step over the fused ranges).
        out = ir.Pointwise.create(device=device, dtype=out_dtype, ranges=size,
                                  inner_fn=lambda idx: value(idx, self._block_index(idx)))
        out.realize()
        return out

    def _scalar_words(self, seed_v: Any, key_v: Any) -> tuple[Any, Any]:
        """The stream words from the scalar seed and key, in the element part's word type. Where
        that is C++'s int32 they are computed in int64 and cut to their low 32 bits (as
        `stream_words_buffer` does): they depend on no index, so the C++ code computes them as
        scalars, where an int32 product that wraps is undefined behaviour (NOTE [int32 words]); g++
        used it on a uint8 key, whose range it knows, and the bits differed from the eager op's."""
        if isinstance(self.wo, Int32WordOps):
            return tuple(self.wo.to_word(v) for v in stream_words(InductorOps(), seed_v, key_v))  # type: ignore[return-value]
        return stream_words(self.wo, seed_v, key_v)

    def block_values(self, load_key: Loader):
        """NOTE [per-block step]: the block's values (formula.block_params) once per block, in one
        buffer [number of values, *block ranges] (one allocation per call, not one per value: host
        time, wrapper.py NOTE [host time per call]), instead of an exponent computation per
        element. The key's switch (a negative key: no noise) is folded in here. Realized.

        NOTE [32-bit block values]: the values are computed with the element part's handler, in
        vectorised C++ Int32WordOps: the exponent code's small integers in int32 vectors (one
        AVX-512 register per 16 blocks) instead of int64 (a pair of registers, and template code
        that g++ compiles slowly: the 17 weights' values of a 4-layer GPT-2 forward took about
        0.75 s of g++ more in int64, docs/results.md session 16). The bits are the same: every
        small integer fits int32 (formula.py NOTE [word types]), and the block values multiply
        floats only, so no int32 product wraps, vectorised or in a scalar tail; the one-kernel
        form has always computed them so."""
        load_amax = self.block_amax()
        wo = self.wo

        def params_fn(pidx):
            values = self._params_of(wo, load_amax(pidx[1:]), self.live(wo, load_key()))
            return _select_by_index(pidx[0], values)

        buf = ir.Pointwise.create(device=self.device, dtype=torch.float32, inner_fn=params_fn,
                                  ranges=[self.num_params, *self.geometry.block_ranges])
        buf.realize()
        return buf

    def from_values(self, values, words: Optional[Callable[[], tuple]]):
        """The per-element Pointwise of the per-block form: w's element from its block's values
        (an IR value [P, *block ranges]) and the call's two stream words (`words()` gives them
        as `wo` words; None under "rtn"). A GEMM-prologue candidate where a template may read it."""
        load_values = values.make_loader()
        loads = [lambda bidx, j=j: load_values([j, *bidx]) for j in range(self.num_params)]
        wo, transposed = self.wo, self.transposed

        if self.rtn:

            def rtn_fn(out_idx):
                idx = list(reversed(out_idx)) if transposed else out_idx
                w32 = ops.to_dtype(self.load_w(idx), torch.float32)
                bidx = self._block_index(idx)
                params = tuple(load(bidx) for load in loads)
                value = value_from_block_values(wo, self.spec, self.noise, w32, params, None)
                return ops.to_dtype(value, self.out_dtype)

            return self._pointwise(rtn_fn)

        load_iota = None
        if self.plan.index_iota:
            # NOTE [index iota]: the element's logical index as iota[k] + (the other dims' part), with
            # iota a realized buffer over the last dim: the vectorised C++ loop reads the varying part
            # with one vector load, where `index_expr` of the whole index prints
            # Vectorized<int32_t>::arange(base, 1), which g++ 12 builds lane by lane.
            stride = self.strides[-1]
            iota = ir.Pointwise.create(device=self.device, dtype=self.word_dtype, ranges=[self.size[-1]],
                                       inner_fn=lambda i: wo.index_word(i[0] * stride))
            iota.realize()
            with _api.force_realize():  # a buffer that reads nothing is otherwise inlined back
                load_iota = iota.make_loader()

        def sample_fn(out_idx):
            idx = list(reversed(out_idx)) if transposed else out_idx  # the weight's own index
            bidx = self._block_index(idx)
            r = self._draw(wo, idx, *words(), first=None if load_iota is None else load_iota([idx[-1]]))
            w32 = ops.to_dtype(self.load_w(idx), torch.float32)
            value = value_from_block_values(wo, self.spec, self.noise, w32, tuple(load(bidx) for load in loads), r)
            return ops.to_dtype(value, self.out_dtype)

        return self._pointwise(sample_fn)

    def words_of(self, load_words: Loader, dtype: torch.dtype) -> Callable[[], tuple]:
        """`words()` for `from_values` from a 2-word buffer of `dtype`: as loaded where it holds the
        per-element handler's words, else each word's low 32 bits made a word of that handler."""
        if dtype == self.word_dtype:
            return lambda: (load_words([0]), load_words([1]))
        wo = self.wo
        return lambda: tuple(wo.to_word(ops.to_dtype(load_words([j]), torch.int64)) for j in (0, 1))

    def _pointwise(self, inner_fn):
        """The output: one Pointwise over w's ranges (transposed for sample_t), a GEMM prologue
        candidate where a Triton GEMM template may read it."""
        out = ir.Pointwise.create(device=self.device, dtype=self.out_dtype, inner_fn=inner_fn,
                                  ranges=list(reversed(self.size)) if self.transposed else self.size)
        if gemm_templates(self.device):
            mark_prologue_candidate(out)
        return out


def stream_words_buffer(device: torch.device, load_seed: Loader, load_key: Loader, dtype: torch.dtype):
    """The call's two stream words (formula.stream_words, computed in int64) in a realized buffer
    [2] of `dtype` (the low 32 bits where dtype is int32)."""

    def words_fn(widx):
        words = stream_words(InductorOps(), load_seed(), load_key())
        return _select_by_index(widx[0], [ops.to_dtype(v, dtype) for v in words])

    buf = ir.Pointwise.create(device=device, dtype=dtype, inner_fn=words_fn, ranges=[2])
    buf.realize()
    return buf


def stream_words_rows(device: torch.device, load_seed: Loader, key_loaders: list) -> Any:
    """Row i: the two stream words of the i-th key (formula.stream_words, computed in int64), as
    int32 bit patterns, in one realized buffer [n, 2]: one loop, its body generated and compiled
    once for all n keys (NOTE [one words op per graph] in passes/insert_sample.py). The row picks
    its key by index from the n one-element inputs (scalar loads)."""

    def words_fn(widx):
        key = _select_by_index(widx[0], [load() for load in key_loaders])
        words = stream_words(InductorOps(), load_seed(), key)
        return _select_by_index(widx[1], [ops.to_dtype(v, torch.int32) for v in words])

    buf = ir.Pointwise.create(device=device, dtype=torch.int32, inner_fn=words_fn, ranges=[len(key_loaders), 2])
    buf.realize()
    return buf


def scalar_loader(value) -> Loader:
    """A loader of a one-element IR value (the seed, a key) as int64."""
    load, zeros = value.make_loader(), [0] * len(value.get_size())
    return lambda: ops.to_dtype(load(zeros), torch.int64)


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
    """values[i] for a loop index i (several values computed, one stored per position). The
    index is compared as int32 (i < len(values)): one native vector in Inductor's C++ code, where
    an int64 index is a pair of vectors."""
    out = values[-1]
    for j in range(len(values) - 2, -1, -1):
        out = ops.where(ops.eq(ops.index_expr(i, torch.int32), ops.constant(j, torch.int32)), values[j], out)
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
        self.ragged = has_partial_block(k, block_size)
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
