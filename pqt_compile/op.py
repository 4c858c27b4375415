"""The `pqt::sample` custom op (and its transposed twin `pqt::sample_t`): eager CPU/CUDA
implementation, fake impl, autograd.

Schema: sample(Tensor w, Tensor seed, Tensor key, int axis, str format, int block_size,
str noise, float noise_std, ScalarType out_dtype, int[]? index_strides=None, int index_offset=0,
Tensor? tensor_amax=None) -> Tensor. `seed` and `key` are int64
tensors with one element (runtime values: a new seed never recompiles a graph);
`block_size` is B > 0, 0 for "row", -1 for "tensor"; `noise` is "gaussian", "uniform",
"rounded_gaussian", or "rtn": no noise, round to nearest on the same grid (PQTConfig(mode="ste"),
the straight-through estimator; seed and noise_std unused). The output is contiguous, of w's shape,
in `out_dtype`. The gradient to `w` is the identity, cast to w's dtype. A negative `key`
switches the noise off (the compiled path's runtime switch; `sample()` refuses one).
`index_strides` / `index_offset` place a shard of a larger weight in it (sharding.py NOTE
[global index]): element l draws with index `index_offset + sum(l[d] * index_strides[d])`; None
means w is the whole weight (its own row-major strides, offset 0).
`tensor_amax` (format "nvfp4" only) is the whole weight's max |w|, a one-element float tensor, for
a shard whose weight is split across ranks (the compiled path feeds the all-reduced amax); None
computes it from w, which a shard therefore cannot leave out. The other formats ignore it. One
below w's own max |w| is refused eagerly; under torch.compile (no device read) the blocks above
it sample to NaN (formula_nvfp4.block_params).

`sample_t` takes the same arguments and a 2-D w [N, K]; it returns sample(...).t() laid out
[K, N] contiguous: the same values, in the layout a GEMM reads its B operand. Only the
compiler emits it (compiler/passes/template_layout.py), so that a Triton GEMM template can
compute the sample in its prologue; its gradient is the identity, transposed.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from .blocks import block_amax, check_sample_args
from .compat import has_triton
from .config import PQTConfig, config_or_default
from .formats import FormatSpec, parse_format
from .formula import TorchOps, check_draw_input, element_hash, sample_value, stream_words
from .formula_noise import check_noise, noise_from_hash
from .formula_nvfp4 import block_params as nvfp4_block_params
from .formula_nvfp4 import sample_from_params as nvfp4_sample_from_params
from .formula_nvfp4 import tensor_params as nvfp4_tensor_params
from .rounding import nvfp4_rtn_from_params, rtn_value

__all__ = ["sample", "sample_eager", "nvfp4_tensor_amax", "element_index", "RTN", "EAGER_CHUNK", "SAMPLE_SCHEMA"]

#: The op's `noise` for PQTConfig(mode="ste"): round to nearest (rounding.py), no draw.
RTN = "rtn"

# Elements per chunk of the eager formula: bounds the int64 temporaries (~100 B/element).
EAGER_CHUNK = 1 << 20


def sample_eager(
    w: torch.Tensor,
    seed: torch.Tensor,
    key: torch.Tensor,
    axis: int,
    format: str,
    block_size: int,
    noise: str,
    noise_std: float,
    out_dtype: torch.dtype,
    index_strides: Optional[list[int]] = None,
    index_offset: int = 0,
    tensor_amax: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The formula in eager torch, on any device; chunked to bound the int64 temporaries."""
    spec = parse_format(format)
    axis = check_sample_args(w, axis, spec, block_size, out_dtype, index_strides, index_offset)
    check_noise(noise, noise_std)
    o = TorchOps(w.device)
    seed_v = seed.reshape(()).to(device=w.device, dtype=torch.int64)
    key_v = key.reshape(()).to(device=w.device, dtype=torch.int64)
    w_flat = w.detach().contiguous().view(-1)
    amax_flat = block_amax(w, axis, block_size).view(-1)
    out = torch.empty(w.numel(), dtype=out_dtype, device=w.device)
    if spec.two_level:  # NVFP4: formula_nvfp4.py
        amax_t = nvfp4_tensor_amax(w, tensor_amax, index_strides, index_offset)
        tensor = nvfp4_tensor_params(o, amax_t, live=o.gt(key_v, o.i64(-1)))
        for start in range(0, w.numel(), EAGER_CHUNK):
            stop = min(start + EAGER_CHUNK, w.numel())
            w32 = w_flat[start:stop].float()
            params = nvfp4_block_params(o, amax_flat[start:stop], tensor)
            if noise == RTN:
                value = nvfp4_rtn_from_params(o, w32, params)
            else:
                index = element_index(w.shape, start, stop, index_strides, index_offset, w.device)
                s1, s2 = stream_words(o, seed_v, key_v)
                r = noise_from_hash(o, element_hash(o, index, s1, s2), noise, noise_std)
                value = nvfp4_sample_from_params(o, w32, params, r)
            out[start:stop] = value.to(out_dtype)
        return out.view(w.shape)
    for start in range(0, w.numel(), EAGER_CHUNK):
        stop = min(start + EAGER_CHUNK, w.numel())
        if noise == RTN:  # mode "ste": round to nearest, no draw (rounding.py)
            live = o.gt(key_v, o.i64(-1))
            out[start:stop] = rtn_value(o, w_flat[start:stop].float(), amax_flat[start:stop], spec, live).to(out_dtype)
            continue
        index = element_index(w.shape, start, stop, index_strides, index_offset, w.device)
        value = sample_value(
            o, w_flat[start:stop].float(), amax_flat[start:stop], index, seed_v, key_v, spec, noise, noise_std
        )
        out[start:stop] = value.to(out_dtype)
    return out.view(w.shape)


def nvfp4_tensor_amax(w: torch.Tensor, tensor_amax: Optional[torch.Tensor], index_strides: Optional[list[int]] = None,
                      index_offset: int = 0) -> torch.Tensor:
    """The whole weight's max |w| (0-d fp32, NaN if it holds one) for NVFP4's tensor scale: computed
    from w, or the given `tensor_amax` (a shard's all-reduced amax), checked to cover w's own."""
    own = w.detach().float().abs().amax()  # propagates NaN
    if tensor_amax is None:
        if index_strides is not None and not _is_whole(w.shape, index_strides, index_offset):
            raise ValueError(
                "pqt: an nvfp4 shard (index_strides / index_offset place it in a larger weight) needs tensor_amax, the "
                "whole weight's max |w| (all-reduced over the ranks that split it): its own amax would give it "
                "another tensor scale than the other shards"
            )
        return own
    if not isinstance(tensor_amax, torch.Tensor) or tensor_amax.numel() != 1 or not tensor_amax.is_floating_point():
        raise ValueError(f"pqt: tensor_amax must be a floating tensor with one element, got {tensor_amax!r}")
    given = tensor_amax.detach().reshape(()).to(device=w.device, dtype=torch.float32)
    if bool(given < own):  # NaN compares false: a NaN in either leaves the tensor without scales
        raise ValueError(f"pqt: tensor_amax {float(given)} is below the weight's own max |w| {float(own)}: pass the "
                         "max of |w| over the whole weight (all its shards)")
    return given


def _is_whole(shape: torch.Size, index_strides: list[int], index_offset: int) -> bool:
    """Whether a placement is the identity: w is the whole weight, in its own row-major order."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return index_offset == 0 and list(index_strides) == strides[::-1]


def element_index(shape: torch.Size, start: int, stop: int, index_strides: Optional[list[int]], index_offset: int,
                  device: torch.device) -> torch.Tensor:
    """The draw index (int64) of the elements start..stop-1 of a weight of `shape`, in row-major
    order: the element's own linear index, or its index in the full weight (sharding.py NOTE
    [global index])."""
    flat = torch.arange(start, stop, dtype=torch.int64, device=device)
    if index_strides is None:
        return flat
    index = torch.full_like(flat, index_offset)
    for size, stride in zip(reversed(shape), reversed(index_strides)):
        index += (flat % size) * stride
        flat = flat // size
    return index


def _sample_impl(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides=None,
                 index_offset=0, tensor_amax=None) -> torch.Tensor:
    check_draw_input(seed, "seed")
    check_draw_input(key, "key")
    whole = index_strides is None and index_offset == 0  # the Triton kernel knows only whole weights
    if whole and w.is_cuda and w.dim() == 2 and noise in ("gaussian", "uniform") and has_triton():
        check_noise(noise, noise_std)  # (sample_eager checks its own)
        # The Triton kernel: one read of w, one write of w_hat (held to sample_eager bit for bit).
        from .kernels.sample import sample_triton

        if tensor_amax is not None:
            tensor_amax = nvfp4_tensor_amax(w, tensor_amax) if parse_format(format).two_level else None
        return sample_triton(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, tensor_amax=tensor_amax)
    return sample_eager(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides,
                        index_offset, tensor_amax)


#: The ops' schema, written out: `int` where type hints would give SymInt. axis, block_size and the
#: placement are compile-time constants of the code the lowering writes; as SymInts (Dynamo makes an int
#: argument that changed between calls one) they reached the lowering as sympy expressions and crashed
#: it. Declared int, Dynamo specialises them: another value compiles another graph.
SAMPLE_SCHEMA = ("(Tensor w, Tensor seed, Tensor key, int axis, str format, int block_size, str noise, float noise_std, "
                 "ScalarType out_dtype, int[]? index_strides=None, int index_offset=0, Tensor? tensor_amax=None) -> Tensor")


@torch.library.custom_op("pqt::sample", mutates_args=(), device_types=("cpu", "cuda"), schema=SAMPLE_SCHEMA)
def _sample_op(
    w: torch.Tensor,
    seed: torch.Tensor,
    key: torch.Tensor,
    axis: int,
    format: str,
    block_size: int,
    noise: str,
    noise_std: float,
    out_dtype: torch.dtype,
    index_strides: Optional[list[int]] = None,
    index_offset: int = 0,
    tensor_amax: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return _sample_impl(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides,
                        index_offset, tensor_amax)


def _check_fake(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides, index_offset,
                tensor_amax) -> FormatSpec:
    check_draw_input(seed, "seed")
    check_draw_input(key, "key")
    spec = parse_format(format)
    check_sample_args(w, axis, spec, block_size, out_dtype, index_strides, index_offset)
    check_noise(noise, noise_std)
    if tensor_amax is not None and (tensor_amax.numel() != 1 or not tensor_amax.is_floating_point()):
        raise ValueError(f"pqt: tensor_amax must be a floating tensor with one element, got shape "
                         f"{tuple(tensor_amax.shape)} and dtype {tensor_amax.dtype}")
    return spec


@_sample_op.register_fake
def _sample_fake(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides=None,
                 index_offset=0, tensor_amax=None):
    _check_fake(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides, index_offset,
                tensor_amax)
    return torch.empty(w.shape, dtype=out_dtype, device=w.device)


@torch.library.custom_op("pqt::sample_t", mutates_args=(), device_types=("cpu", "cuda"), schema=SAMPLE_SCHEMA)
def _sample_t_op(
    w: torch.Tensor,
    seed: torch.Tensor,
    key: torch.Tensor,
    axis: int,
    format: str,
    block_size: int,
    noise: str,
    noise_std: float,
    out_dtype: torch.dtype,
    index_strides: Optional[list[int]] = None,
    index_offset: int = 0,
    tensor_amax: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    _check_2d(w)
    return _sample_impl(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides,
                        index_offset, tensor_amax).t().contiguous()


def _check_2d(w: torch.Tensor) -> None:
    if w.dim() != 2:
        raise ValueError(f"pqt.sample_t: a 2-D weight is required, got shape {tuple(w.shape)}")


@_sample_t_op.register_fake
def _sample_t_fake(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides=None,
                   index_offset=0, tensor_amax=None):
    _check_fake(w, seed, key, axis, format, block_size, noise, noise_std, out_dtype, index_strides, index_offset,
                tensor_amax)
    _check_2d(w)
    return torch.empty((w.shape[1], w.shape[0]), dtype=out_dtype, device=w.device)


def _setup_context(ctx, inputs, output) -> None:
    ctx.w_dtype = inputs[0].dtype


def _backward(ctx, grad: torch.Tensor):
    # d w_hat / d w = I: the gradient passes through, in the weight's dtype.
    return grad.to(ctx.w_dtype), *([None] * 11)


def _backward_t(ctx, grad: torch.Tensor):
    # w_hat^T: the identity, transposed back to w's layout.
    return grad.t().to(ctx.w_dtype), *([None] * 11)


_sample_op.register_autograd(_backward, setup_context=_setup_context)
_sample_t_op.register_autograd(_backward_t, setup_context=_setup_context)


def _as_int64_tensor(v: Union[int, torch.Tensor], name: str, device: torch.device, low: int, high: int) -> torch.Tensor:
    """`v` as a 0-d int64 tensor on `device`, refused unless low <= v < high. A tensor whose dtype
    holds only such values is not read (no device sync; under torch.compile, no data-dependent guard:
    the seed stays a run-time value, with fullgraph=True too)."""
    if isinstance(v, torch.Tensor):
        check_draw_input(v, name)
        t = v.reshape(()).to(device=device, dtype=torch.int64)
        info = torch.iinfo(v.dtype)
        within = low <= info.min and info.max < high
        value = int(t) if t.device.type == "cpu" and not within else None  # no device sync to check a GPU value
    else:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"pqt: {name} must be an int or an integer tensor, got {v!r}")
        value, t = v, None
    if value is not None and not low <= value < high:
        raise ValueError(f"pqt: {name} {value} is out of range: it must be in [{low}, {high})")
    return t if t is not None else torch.tensor(v, dtype=torch.int64, device=device)


def sample(
    w: torch.Tensor,
    *,
    seed: Union[int, torch.Tensor],
    key: Union[int, torch.Tensor] = 0,
    axis: int = -1,
    config: Optional[PQTConfig] = None,
    out_dtype: Optional[torch.dtype] = None,
    tensor_amax: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Sample a weight: w + Δ r per method.md (or, with `PQTConfig(mode="ste")`, its
    round-to-nearest value), differentiable (identity gradient).

    Args:
        w: the weight (float32, bfloat16 or float16, at least 2-D).
        seed: the step's seed (int or one-element integer tensor).
        key: the weight's 32-bit key, 0 <= key < 2^32 (see `pqt_compile.key_for_name`).
        axis: the reduction axis of the consuming matmul (1 for nn.Linear's [N, K] weight).
        config: format, block size and noise (default `PQTConfig()`).
        out_dtype: dtype of the result (default: w's dtype).
        tensor_amax: format "nvfp4" only: the max |w| that sets the tensor scale, when it is not w's
            own (a tensor-scale group's: pqt_compile.scale_groups.group_tensor_amax); at least w's own.
    """
    config = config_or_default(config, "pqt_compile.sample")
    return torch.ops.pqt.sample(
        w,
        _as_int64_tensor(seed, "seed", w.device, -(2**63), 2**63),
        _as_int64_tensor(key, "key", w.device, 0, 2**32),
        axis,
        config.format,
        config.block_code,
        config.op_noise,
        config.op_noise_std,
        out_dtype or w.dtype,
        None,
        0,
        given_tensor_amax(tensor_amax, config, "pqt_compile.sample"),
    )


def given_tensor_amax(tensor_amax: Optional[torch.Tensor], config: PQTConfig, where: str) -> Optional[torch.Tensor]:
    """A caller's `tensor_amax`: refused for a format without a tensor scale (it would be ignored)."""
    if tensor_amax is not None and not config.spec.two_level:
        raise ValueError(f"{where}: tensor_amax applies to format 'nvfp4' only (format {config.format!r} has no "
                         "tensor scale)")
    return tensor_amax
