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

The split of a training graph's sample (sample_parts.py; passes/insert_sample.py NOTE [saved
block values]) lowers to the same IR, one op each: `pqt.block_values` to the amax Reduction and
the block-values Pointwise, `pqt.stream_words` to one Pointwise [n, 2] of the n keys' words
(int32 bit patterns; passes/insert_sample.py NOTE [one words op per graph]), and
`pqt.sample_from_values` to the element Pointwise reading them. The forms are built in forms.py.

NOTE [partial block]: the last block along the axis may be shorter than B; its reduction
index is clamped to the last element (Min(pos, K - 1)), which repeats an element of the same
block and so leaves its max unchanged.
"""

from __future__ import annotations

import torch

from ... import sample_parts  # noqa: F401  (registers the split ops lowered here)
from ...compat import inductor_lowering_api
from ...formula import stream_words
from ...op import RTN
from .forms import SampleForm, scalar_loader, stream_words_buffer, stream_words_rows

__all__ = ["lower_sample", "lower_sample_t", "lower_block_values", "lower_stream_words", "lower_sample_from_values"]

_api = inductor_lowering_api()


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
    form = SampleForm(w, axis, format, block_size, noise, noise_std, out_dtype, index_strides, index_offset,
                      tensor_amax, transposed)
    load_seed, load_key = scalar_loader(seed), scalar_loader(key)
    if form.plan.fused_block_kernel:
        return form.one_kernel(load_seed, load_key)
    values = form.block_values(load_key)
    if noise == RTN:
        return form.from_values(values, None)
    if form.plan.per_call_word_buffers:
        # The two stream words once per call (0-d buffers), stored as words: the vectorised C++ loop
        # would otherwise recompute them per element (it cannot hoist loads past its stores). In
        # C++ they are computed in int64 (a 0-d loop is scalar code, where an int32 multiply could
        # overflow: NOTE [int32 words]).
        words_buf = stream_words_buffer(form.device, load_seed, load_key, form.word_dtype)
        words = form.words_of(words_buf.make_loader(), form.word_dtype)
    else:
        def words():  # Triton: from two scalar loads, once per program (no kernel of their own)
            return stream_words(form.wo, load_seed(), load_key())
    return form.from_values(values, words)


@_api.register_lowering(torch.ops.pqt.block_values.default, type_promotion_kind=None)
def lower_block_values(w, key, axis, format, block_size, noise, tensor_amax=None):
    """pqt.block_values: the per-block form's values buffer alone (sample_parts.py)."""
    form = SampleForm(w, axis, format, block_size, noise, 1.0, torch.float32, None, 0, tensor_amax, transposed=False)
    return form.block_values(scalar_loader(key))


@_api.register_lowering(torch.ops.pqt.stream_words.default, type_promotion_kind=None)
def lower_stream_words(seed, keys):
    """pqt.stream_words: each key's two words as int32 bit patterns, [n, 2] (sample_parts.py)."""
    return stream_words_rows(seed.get_device(), scalar_loader(seed), [scalar_loader(k) for k in keys])


@_api.register_lowering(torch.ops.pqt.sample_from_values.default, type_promotion_kind=None)
def lower_sample_from_values(w, values, words, axis, format, block_size, noise, noise_std, out_dtype,
                             index_strides=None, index_offset=0):
    """pqt.sample_from_values: the per-block form's element Pointwise over given values and words."""
    form = SampleForm(w, axis, format, block_size, noise, noise_std, out_dtype, index_strides, index_offset, None,
                      transposed=False)
    return form.from_values(values, None if words is None else form.words_of(words.make_loader(), torch.int32))
