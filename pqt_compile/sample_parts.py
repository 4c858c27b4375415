"""The sample in two parts, for a training graph whose backward regenerates it.

`pqt::sample` computes, for each weight and call, what depends on a block (its amax and the
values of formula.py NOTE [per-block step]), what depends on the call (the two stream words of
the seed and key) and the element's value. A training graph computes the sample in the forward
and regenerates it in the backward (compiler/passes/insert_sample.py NOTE [recompute]); on the
targets where the lowering takes the per-block form (compiler/targets.py `saves_block_values`),
the pass splits the op in these three, so the backward reads the forward's block values and
stream words and regenerates only the element part (NOTE [saved block values] there):

    words = pqt.stream_words(seed, [key_0, ..., key_{n-1}])                # int32[n, 2], once per graph
    values = pqt.block_values(w, key_i, axis, format, B, noise, tensor_amax)  # f32[P, *blocks]
    w_hat = pqt.sample_from_values(w, values, words[i], axis, format, B, noise, noise_std, out_dtype,
                                   index_strides, index_offset)

`sample_from_values(w, block_values(w, key, ...), stream_words(seed, [key])[0], ...)` equals
`sample(w, seed, key, ...)` bit for bit (tests/test_sample_parts.py); the bodies are formula.py's
functions, the ones the Inductor lowering composes. The words of all the graph's split weights
are one op (NOTE [one words op per graph] in compiler/passes/insert_sample.py).

Layouts. `values`: fp32 [P, *block shape], P the number of block values of the format and noise
(`num_block_values`), the block shape `blocks.block_shape` (w's shape with the axis replaced by
its number of blocks; no dims for block_size "tensor"). `words`: a key's two 32-bit words as int32
bit patterns (a word >= 2^31 held as w - 2^32), row i of `stream_words` for the i-th key; "rtn"
(mode "ste") draws nothing and takes none. Neither has a
gradient; `sample_from_values` passes the identity to w, as `sample` does.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .blocks import block_shape, check_sample_args, expand_blocks, per_block_amax
from .formats import FormatSpec, parse_format
from .formula import MASK32, SampleOps, TorchOps, block_params, check_draw_input, element_hash, sample_from_params
from .formula import stream_words as formula_stream_words
from .formula_noise import check_noise, noise_from_hash
from .formula_nvfp4 import block_params as nvfp4_block_params
from .formula_nvfp4 import sample_from_params as nvfp4_sample_from_params
from .formula_nvfp4 import tensor_params as nvfp4_tensor_params
from .op import EAGER_CHUNK, RTN, element_index, nvfp4_tensor_amax
from .rounding import nvfp4_rtn_from_params, rtn_from_params, rtn_params

__all__ = ["num_block_values", "block_values_of", "value_from_block_values", "SAMPLE_OPS"]


def num_block_values(spec: FormatSpec, noise: str) -> int:
    """P: the number of fp32 values per block (formula.block_params, rounding.rtn_params, or
    NVFP4's one block step)."""
    if spec.two_level:
        return 1
    return (1 if spec.is_int else 3) + (3 if noise == RTN else 0)


def block_values_of(o: SampleOps, spec: FormatSpec, noise: str, amax: Any, live: Any, amax_t: Any = None) -> tuple:
    """The block values of a block amax `amax` (NOTE [per-block step]; NVFP4: from the tensor's
    amax `amax_t` too): the one choice of formula function per format and noise, for the eager
    ops here and the Inductor lowering (compiler/lowering/forms.py)."""
    if spec.two_level:
        return nvfp4_block_params(o, amax, nvfp4_tensor_params(o, amax_t, live=live))
    return (rtn_params if noise == RTN else block_params)(o, amax, spec, live=live)


def value_from_block_values(o: SampleOps, spec: FormatSpec, noise: str, w32: Any, values: tuple, r: Any) -> Any:
    """An element's value (fp32, before the final cast) from its block's values and its draw r
    (None under "rtn": round to nearest); the counterpart of `block_values_of`."""
    if noise == RTN:
        return nvfp4_rtn_from_params(o, w32, values) if spec.two_level else rtn_from_params(o, w32, values, spec)
    if spec.two_level:
        return nvfp4_sample_from_params(o, w32, values, r)
    return sample_from_params(o, w32, values, r, spec)


@torch.library.custom_op("pqt::block_values", mutates_args=(), device_types=("cpu", "cuda"),  # int: op.SAMPLE_SCHEMA
                         schema="(Tensor w, Tensor key, int axis, str format, int block_size, str noise, "
                                "Tensor? tensor_amax=None) -> Tensor")
def _block_values_op(w: torch.Tensor, key: torch.Tensor, axis: int, format: str, block_size: int, noise: str,
                     tensor_amax: Optional[torch.Tensor] = None) -> torch.Tensor:
    spec = parse_format(format)
    axis = check_sample_args(w, axis, spec, block_size, torch.float32)
    check_draw_input(key, "key")
    o = TorchOps(w.device)
    live = o.gt(key.reshape(()).to(device=w.device, dtype=torch.int64), o.i64(-1))
    amax = per_block_amax(w, axis, block_size)
    amax_t = nvfp4_tensor_amax(w, tensor_amax) if spec.two_level else None
    return torch.stack(list(block_values_of(o, spec, noise, amax, live, amax_t))).to(torch.float32)


@_block_values_op.register_fake
def _block_values_fake(w, key, axis, format, block_size, noise, tensor_amax=None):
    spec = parse_format(format)
    axis = check_sample_args(w, axis, spec, block_size, torch.float32)
    check_draw_input(key, "key")
    return w.new_empty([num_block_values(spec, noise), *block_shape(w.shape, axis, block_size)], dtype=torch.float32)


@torch.library.custom_op("pqt::stream_words", mutates_args=(), device_types=("cpu", "cuda"))
def _stream_words_op(seed: torch.Tensor, keys: list[torch.Tensor]) -> torch.Tensor:
    _check_words_inputs(seed, keys)
    o = TorchOps(seed.device)
    key = torch.stack([k.reshape(()).to(device=seed.device, dtype=torch.int64) for k in keys])
    s1, s2 = formula_stream_words(o, seed.reshape(()).to(torch.int64), key)
    return torch.stack([s1, s2], dim=-1).to(torch.int32)  # the low 32 bits: the words' bit patterns


@_stream_words_op.register_fake
def _stream_words_fake(seed, keys):
    _check_words_inputs(seed, keys)
    return seed.new_empty([len(keys), 2], dtype=torch.int32)


def _check_words_inputs(seed: torch.Tensor, keys: list[torch.Tensor]) -> None:
    if not keys:
        raise ValueError("pqt.stream_words: keys must be one or more one-element integer tensors, got none")
    check_draw_input(seed, "seed")
    for i, k in enumerate(keys):
        check_draw_input(k, f"keys[{i}]")


@torch.library.custom_op("pqt::sample_from_values", mutates_args=(), device_types=("cpu", "cuda"),  # int: op.SAMPLE_SCHEMA
                         schema="(Tensor w, Tensor values, Tensor? words, int axis, str format, int block_size, "
                                "str noise, float noise_std, ScalarType out_dtype, int[]? index_strides=None, "
                                "int index_offset=0) -> Tensor")
def _sample_from_values_op(w: torch.Tensor, values: torch.Tensor, words: Optional[torch.Tensor], axis: int,
                           format: str, block_size: int, noise: str, noise_std: float, out_dtype: torch.dtype,
                           index_strides: Optional[list[int]] = None, index_offset: int = 0) -> torch.Tensor:
    spec = _check_parts(w, values, words, axis, format, block_size, noise, noise_std, out_dtype, index_strides,
                        index_offset)
    axis %= w.dim()
    o = TorchOps(w.device)
    # Each block's values over its elements, flattened as w is (P fp32 per element).
    per_elem = [expand_blocks(v, tuple(w.shape), axis, block_size).reshape(-1) for v in values.to(w.device)]
    s1 = s2 = None
    if noise != RTN:
        s1, s2 = (words.to(device=w.device, dtype=torch.int64) & MASK32).unbind()
    w_flat = w.detach().contiguous().view(-1)
    out = torch.empty(w.numel(), dtype=out_dtype, device=w.device)
    for start in range(0, w.numel(), EAGER_CHUNK):
        stop = min(start + EAGER_CHUNK, w.numel())
        w32 = w_flat[start:stop].float()
        r = None
        if noise != RTN:
            index = element_index(w.shape, start, stop, index_strides, index_offset, w.device)
            r = noise_from_hash(o, element_hash(o, index, s1, s2), noise, noise_std)
        value = value_from_block_values(o, spec, noise, w32, tuple(p[start:stop] for p in per_elem), r)
        out[start:stop] = value.to(out_dtype)
    return out.view(w.shape)


def _check_parts(w, values, words, axis, format, block_size, noise, noise_std, out_dtype, index_strides,
                 index_offset) -> FormatSpec:
    """Refuse values or words that do not fit w (what `block_values` / `stream_words` give)."""
    spec = parse_format(format)
    axis = check_sample_args(w, axis, spec, block_size, out_dtype, index_strides, index_offset)
    check_noise(noise, noise_std)
    want = [num_block_values(spec, noise), *block_shape(w.shape, axis, block_size)]
    if list(values.shape) != want or values.dtype != torch.float32:
        raise ValueError(f"pqt.sample_from_values: values must be float32 of shape {want} (pqt.block_values of this "
                         f"weight), got {values.dtype} of shape {list(values.shape)}")
    if noise != RTN and (words is None or list(words.shape) != [2] or words.dtype != torch.int32):
        got = None if words is None else f"{words.dtype} of shape {list(words.shape)}"
        raise ValueError(f"pqt.sample_from_values: noise {noise!r} needs words, int32 of shape [2] "
                         f"(this weight's row of pqt.stream_words), got {got}")
    return spec


@_sample_from_values_op.register_fake
def _sample_from_values_fake(w, values, words, axis, format, block_size, noise, noise_std, out_dtype,
                             index_strides=None, index_offset=0):
    _check_parts(w, values, words, axis, format, block_size, noise, noise_std, out_dtype, index_strides, index_offset)
    return torch.empty(w.shape, dtype=out_dtype, device=w.device)


def _setup_context(ctx, inputs, output) -> None:
    ctx.w_dtype = inputs[0].dtype


def _backward(ctx, grad: torch.Tensor):
    # d w_hat / d w = I, as for pqt.sample; the block values and words take no gradient.
    return grad.to(ctx.w_dtype), *([None] * 10)


def _no_gradient_context(ctx, inputs, output) -> None:
    ctx.mark_non_differentiable(output)


def _no_gradient(ctx, grad: torch.Tensor):
    # A block's values are piecewise constant in w (method.md: the scale takes no gradient).
    return (None,) * 7


def _no_gradient_words(ctx, grad: torch.Tensor):
    return None, None


_sample_from_values_op.register_autograd(_backward, setup_context=_setup_context)
_block_values_op.register_autograd(_no_gradient, setup_context=_no_gradient_context)
_stream_words_op.register_autograd(_no_gradient_words, setup_context=_no_gradient_context)

#: The compiler's ops whose output is a sampled weight (its first argument): what explain and the
#: tests look for in a graph. pqt.sample_t only where a GEMM template reads the sample.
SAMPLE_OPS = (torch.ops.pqt.sample.default, torch.ops.pqt.sample_t.default, torch.ops.pqt.sample_from_values.default)
