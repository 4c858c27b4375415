"""Which ops a weight-to-matmul path passes through, and where each moves the weight's axes.

weight_edges.py walks from a weight placeholder to the matmuls that read it. Along the way every
dim of the intermediate tensor is tracked as the weight axis it comes from (an int), a dim that
holds no weight axis (None: added by unsqueeze, expand, or a picked expert) or several (MIXED),
so that at the matmul the contracted dim names the weight's reduction axis.

The ops a path passes through ("transparent"): views and reshapes, identities (alias, clone,
detach, contiguous), dtype casts on one device, transposes and permutes, expand, (un)squeeze, and,
for a weight of 3 or more dims, the indexing that picks experts (weight_edges.py NOTE [expert
paths]). Any other op ends the path.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .node_values import val

__all__ = ["MIXED", "INDEXING", "is_dtype_cast", "passes_through", "step_dims", "picks_experts", "unbinds_experts",
           "expert_axis"]

aten = torch.ops.aten
prims = torch.ops.prims

#: indexing that may pick experts out of a weight of 3 or more dims (weight_edges.py NOTE [expert paths])
INDEXING = {aten.index.Tensor, aten.select.int, aten.index_select.default, aten.slice.Tensor}
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_IDENTITY = {aten.alias.default, aten.clone.default, aten.detach.default, aten.contiguous.default}
_CASTS = {aten._to_copy.default, prims.convert_element_type.default}
_OTHER = {
    aten.t.default,
    aten.transpose.int,
    aten.permute.default,
    aten.expand.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
}
MIXED = -2  # a dim made of several weight axes (or a piece of one): not a clean reduction axis


def is_dtype_cast(n: Node) -> bool:
    """Whether `n` changes only the dtype of its input (a cast across devices is not one)."""
    if n.target is prims.convert_element_type.default:
        return True
    if n.target is aten._to_copy.default:
        src, dst = val(n.args[0]), val(n)
        return set(n.kwargs) <= {"dtype", "layout", "device", "memory_format"} and (
            src is None or dst is None or src.device == dst.device
        )
    return False


def passes_through(user: Node, node: Node, dims: Optional[list]) -> bool:
    """Whether a path at `node` (its dims `dims`) goes on through its user `user`."""
    return bool(user.args) and user.args[0] is node and (
        user.target in _VIEWS or user.target in _IDENTITY or user.target in _OTHER or is_dtype_cast(user)
        or picks_experts(user, dims)
    )


def _same(a, b) -> bool:
    return statically_known_true(a == b)


def _view_dims(dims: list, src: list, dst: list) -> Optional[list]:
    """Map per-dim weight axes through a view from sizes `src` to `dst` (None if unknown)."""
    if len(src) == len(dst) and all(_same(a, b) for a, b in zip(src, dst)):
        return list(dims)
    out: list = []
    i = j = 0
    while i < len(src) or j < len(dst):
        # size-1 dims carry no elements: drop them on the input side, mark them None on output
        if i < len(src) and _same(src[i], 1) and not (j < len(dst) and _same(dst[j], 1)):
            i += 1
            continue
        if j < len(dst) and _same(dst[j], 1) and not (i < len(src) and _same(src[i], 1)):
            out.append(None)
            j += 1
            continue
        if i >= len(src) or j >= len(dst):
            return None
        i0, j0 = i, j
        ps, pd = src[i], dst[j]
        i, j = i + 1, j + 1
        while not _same(ps, pd):
            if i < len(src) and (j >= len(dst) or statically_known_true(ps < pd)):
                ps, i = ps * src[i], i + 1
            elif j < len(dst):
                pd, j = pd * dst[j], j + 1
            else:
                return None
        group = [d for d in dims[i0:i] if d is not None]
        if j - j0 == 1:
            out.append(group[0] if len(group) == 1 and i - i0 == 1 else (None if not group else MIXED))
        else:  # one input dim split into several output dims
            out.extend([MIXED if group else None] * (j - j0))
    return out


def step_dims(n: Node, dims: list) -> Optional[list]:
    """Per-dim weight axes of `n`'s output, given those of its input (None: cannot track).
    Precondition: `passes_through(n, n.args[0], dims)`."""
    t, a = n.target, n.args
    nd = len(dims)
    if t in _IDENTITY or t in _CASTS:
        return list(dims)
    if t is aten.t.default:
        return list(reversed(dims))
    if t is aten.transpose.int:
        d0, d1 = a[1] % nd, a[2] % nd
        out = list(dims)
        out[d0], out[d1] = out[d1], out[d0]
        return out
    if t is aten.permute.default:
        return [dims[p % nd] for p in a[1]]
    if t is aten.unsqueeze.default:
        out = list(dims)
        out.insert(a[1] % (nd + 1), None)
        return out
    if t in (aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default):
        shape = list(val(a[0]).shape)
        which = range(nd) if t is aten.squeeze.default else ([a[1]] if t is aten.squeeze.dim else a[1])
        drop = {w % nd for w in which if _same(shape[w % nd], 1)}
        return [d for k, d in enumerate(dims) if k not in drop]
    if t is aten.expand.default:
        return [None] * (len(a[1]) - nd) + list(dims)
    if t in _VIEWS:
        return _view_dims(dims, list(val(a[0]).shape), list(val(n).shape))
    # Picking experts (weight_edges.py NOTE [expert paths]; only reached where picks_experts holds): the picked
    # dim becomes a batch dim (None) or is dropped; the other axes carry through.
    if t is aten.select.int:
        d = a[1] % nd
        return dims[:d] + dims[d + 1 :]
    if t is aten.index_select.default:
        out = list(dims)
        out[a[1] % nd] = None
        return out
    if t is aten.slice.Tensor:
        return list(dims)  # a range of experts: the sample is still the full weight's
    if t is aten.index.Tensor:
        return [None] * val(a[1][0]).dim() + list(dims[1:])
    return None


def picks_experts(n: Node, dims: Optional[list]) -> bool:
    """Whether an indexing node picks experts: dim 0 of a weight of 3 or more dims, still holding
    the weight's axis 0, by an integer index (weight_edges.py NOTE [expert paths])."""
    if n.target not in INDEXING or dims is None or len(dims) < 3 or dims[0] != 0:
        return False
    if n.target is aten.index.Tensor:
        idx = list(n.args[1])
        first = val(idx[0]) if idx else None
        return [k for k, i in enumerate(idx) if i is not None] == [0] and first is not None and first.dtype != torch.bool
    return n.args[1] % len(dims) == 0


def unbinds_experts(n: Node, weight: Node, dims: Optional[list]) -> bool:
    """Whether `n` unbinds a weight of 3 or more dims along its axis 0 (experts), which Dynamo
    records for `for w in W` and make_fx as aten.unbind: the items are W[0], W[1], ..."""
    if n.target is not aten.unbind.int or not n.args or n.args[0] is not weight or dims is None or len(dims) < 3:
        return False
    return (n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)) % len(dims) == 0 and dims[0] == 0


def expert_axis(n: Node) -> tuple[int, ...]:
    """The weight axis an indexing node picks experts from (axis 0; not for a slice)."""
    return () if n.target is aten.slice.Tensor else (0,)
