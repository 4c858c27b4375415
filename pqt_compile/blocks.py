"""The block math of method.md, written once: which elements share a scale.

A block is B consecutive elements along the reduction axis (the last block may be shorter),
for each index of the other axes; block_size "row" (code 0) is the whole axis and "tensor"
(code -1) one block for the whole tensor. Every implementation (the eager op, quantize and
pack, the Inductor lowering, the Triton kernels) takes its block length and block count from
here, so that they cannot disagree about where a block ends.

Also here: the validation of a (weight, axis, block, out dtype) request, shared by the op,
quantize and the kernels.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .formats import NVFP4_BLOCK, FormatSpec, check_resolution

__all__ = [
    "ROW",
    "TENSOR",
    "SUPPORTED_DTYPES",
    "block_code",
    "block_length",
    "num_blocks",
    "has_partial_block",
    "block_shape",
    "per_block_amax",
    "block_amax",
    "block_starts",
    "expand_blocks",
    "check_sample_args",
    "index_bound",
    "row_major_strides",
    "check_nvfp4_blocks",
]

#: Block-size codes as the op's schema carries them: B > 0, ROW for "row", TENSOR for "tensor".
ROW = 0
TENSOR = -1
#: Weight and output dtypes the formula supports.
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

Length = Union[int, Any]  # an int, or a sympy expression inside the Inductor lowering


def block_code(block_size: Union[int, str]) -> int:
    """The schema code of a PQTConfig block_size: B > 0, 0 for "row", -1 for "tensor"."""
    if block_size == "row":
        return ROW
    if block_size == "tensor":
        return TENSOR
    return int(block_size)


def block_length(axis_len: Length, code: int) -> Length:
    """Elements per block along the reduction axis of length `axis_len`.

    A block never exceeds the axis; "row" and "tensor" span the whole axis. `axis_len` may be
    a sympy expression (a dynamic shape in the lowering): then B itself, and the last block is
    treated as possibly partial.
    """
    if code in (ROW, TENSOR):
        return axis_len
    if isinstance(axis_len, int):
        return min(code, axis_len)
    import sympy

    if sympy.sympify(axis_len).is_number:
        return sympy.Integer(min(code, int(axis_len)))
    return sympy.Integer(code)


def num_blocks(axis_len: Length, code: int) -> Length:
    """Blocks along the axis (ceil(axis_len / block_length)); 1 for "row" and "tensor".

    An int, or a fake tensor's symbolic size (torch.SymInt): ceil(K / min(B, K)) = ceil(K / B)
    for K >= 1, which needs no comparison of K with B."""
    if isinstance(axis_len, (int, torch.SymInt)):
        return 1 if code in (ROW, TENSOR) else (axis_len + code - 1) // code
    b = block_length(axis_len, code)
    from .compat import floor_div  # the sympy path: the Inductor lowering only

    return floor_div()(axis_len + b - 1, b)


def has_partial_block(axis_len: Length, code: int) -> bool:
    """Whether the last block along the axis is shorter than the others (a symbolic length: yes,
    it may be)."""
    if code in (ROW, TENSOR):
        return False
    b = block_length(axis_len, code)
    if isinstance(axis_len, int):
        return axis_len % b != 0
    import sympy

    return not (sympy.sympify(axis_len) % b == 0)


def block_shape(shape: Sequence[Any], axis: int, code: int) -> list:
    """A weight's shape with the reduction axis replaced by its number of blocks (one value per
    block in this layout); [] for "tensor" (one block)."""
    if code == TENSOR:
        return []
    shape = list(shape)
    return [*shape[:axis], num_blocks(shape[axis], code), *shape[axis + 1:]]


def per_block_amax(w: torch.Tensor, axis: int, code: int) -> torch.Tensor:
    """Each block's max |w| (fp32), in `block_shape` (0-d for "tensor"). NaN propagates (torch's
    max reductions propagate NaN), so a block holding a NaN reports NaN."""
    a = w.detach().float().abs()
    if code == TENSOR:
        return a.amax()
    a = a.movedim(axis, -1)
    k = a.shape[-1]
    b = block_length(k, code)
    nb = num_blocks(k, code)
    padded = F.pad(a, (0, nb * b - k))  # zeros do not change a max of |w|
    return padded.reshape(*a.shape[:-1], nb, b).amax(dim=-1).movedim(-1, axis)


def block_amax(w: torch.Tensor, axis: int, code: int) -> torch.Tensor:
    """Per-element amax (fp32, contiguous, w's shape) of the block holding each element
    (`per_block_amax`, repeated over each block's elements)."""
    return expand_blocks(per_block_amax(w, axis, code), tuple(w.shape), axis, code).contiguous()


def block_starts(t: torch.Tensor, axis: int, code: int) -> torch.Tensor:
    """One value per block of `t` (w's shape), taken at each block's first element; the block
    axis shortened to the number of blocks (one element in all for "tensor")."""
    if code == TENSOR:
        return t.reshape(-1)[:1]
    k = t.shape[axis]
    return t.index_select(axis, torch.arange(0, k, block_length(k, code), device=t.device))


def expand_blocks(per_block: torch.Tensor, shape: tuple[int, ...], axis: int, code: int) -> torch.Tensor:
    """The inverse of `block_starts`: each block's value repeated over its elements."""
    if code == TENSOR:
        return per_block.reshape(()).expand(shape)
    k = shape[axis]
    return per_block.repeat_interleave(block_length(k, code), dim=axis).narrow(axis, 0, k)


def row_major_strides(shape: Sequence[Length]) -> list[Length]:
    """The strides of `shape` in row-major order (ints, or sympy expressions in the lowering)."""
    strides: list[Length] = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    return strides


def index_bound(shape: Sequence[Length], index_strides: Optional[Sequence[int]] = None, index_offset: int = 0) -> Length:
    """One past the largest draw index of a weight of `shape` (its numel; for a shard placed in a
    larger weight by `index_strides` / `index_offset`, sharding.py NOTE [global index], one past
    the index of its last element)."""
    if index_strides is None:
        return math.prod(shape)
    return index_offset + 1 + sum((n - 1) * s for n, s in zip(shape, index_strides))


def check_nvfp4_blocks(shape: Sequence[int], axis: int, code: int) -> None:
    """Refuse an NVFP4 request whose blocks are not 16 whole elements along the reduction axis."""
    if code != NVFP4_BLOCK:
        raise ValueError(f"pqt: nvfp4 takes block_size {NVFP4_BLOCK} only (code {code} given); leave PQTConfig.block_size unset")
    k = shape[axis]
    if k % NVFP4_BLOCK:
        raise ValueError(
            f"pqt: nvfp4 needs the reduction axis to be a multiple of {NVFP4_BLOCK} (every block is {NVFP4_BLOCK} "
            f"elements with one E4M3 scale), but axis {axis} of the weight of shape {tuple(shape)} has {k}: pad the "
            f"layer's input dimension to a multiple of {NVFP4_BLOCK}, keep this weight out of PQT (PQTConfig.exclude), "
            "or train fp4_e2m1, whose last block may be shorter"
        )


def check_sample_args(w: torch.Tensor, axis: int, spec: FormatSpec, code: int, out_dtype: torch.dtype,
                      index_strides: Optional[Sequence[int]] = None, index_offset: int = 0) -> int:
    """Validate the inputs of a sample, a quantize or a pack; return the axis made non-negative."""
    if w.is_complex() or not w.is_floating_point():
        raise TypeError(f"pqt: weight must be float32, bfloat16 or float16, got {w.dtype}")
    if w.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"pqt: weight dtype {w.dtype} is not supported: use float32, bfloat16 or float16")
    if out_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"pqt: out_dtype {out_dtype} is not supported: use float32, bfloat16 or float16")
    if w.dim() < 2:
        raise ValueError(
            f"pqt: weight must have at least 2 dims (a matmul weight), got shape {tuple(w.shape)}; "
            "for a vector, view it as (1, K)"
        )
    if not -w.dim() <= axis < w.dim():
        raise ValueError(f"pqt: axis {axis} is out of range for a weight of shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"pqt: weight of shape {tuple(w.shape)} is empty; there is nothing to sample")
    if index_strides is None and index_offset != 0:
        raise ValueError(f"pqt: index_offset {index_offset} needs index_strides (the full weight's strides)")
    if index_strides is not None and (len(index_strides) != w.dim() or index_offset < 0
                                      or any(s < 0 or s == 0 and n > 1 for s, n in zip(index_strides, w.shape))):
        raise ValueError(f"pqt: index_strides {list(index_strides)} / index_offset {index_offset} do not place a "
                         f"weight of shape {tuple(w.shape)}: one stride per dim, positive where the dim has more than "
                         "one element (two elements at one index would draw the same noise), offset >= 0")
    if index_bound(w.shape, index_strides, index_offset) > 2**32:
        raise ValueError(f"pqt: weight has {index_bound(w.shape, index_strides, index_offset)} elements; at most "
                         "2^32 are supported (the counter is 32-bit)")
    if code < TENSOR:
        raise ValueError(f"pqt: block_size code {code} is invalid (B > 0, 0 = row, -1 = tensor)")
    if spec.two_level:
        check_nvfp4_blocks(w.shape, axis % w.dim(), code)
    check_resolution(spec, out_dtype)
    return axis % w.dim()
