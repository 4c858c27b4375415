"""find_weight_edges: which weight Parameters feed which matmul operand, along which axis.

Works on aten-level FX graphs: the joint forward+backward graph that AOTAutograd builds,
and the forward graph that the eager reference traces with make_fx. One set of rules for
both, so the reference samples exactly the weights that the compiler samples.

A path runs from a weight placeholder through "transparent" ops (views, permutes,
transposes, expands, dtype casts, clones) to an operand of mm / addmm / bmm / baddbmm.
Along the path we track which weight axis each dim of the intermediate tensor comes from,
so that at the matmul we know which weight axis is contracted: the reduction axis of the
sample's blocks.

NOTE [forward decides]: in a joint graph the backward reuses the weight in matmuls that
contract another axis (grad_input = grad_out @ W contracts N, not K). Only forward paths
decide the axis and the dtype; backward paths are rewired to the same sample so that one
step's forward and backward see one sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
from typing import Callable, Optional

import torch
from torch.fx import Graph, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ...blocks import SUPPORTED_DTYPES
from ...selection import skip_reason

__all__ = ["MatmulUse", "WeightEdge", "SkippedWeight", "find_weight_edges", "backward_nodes", "MATMUL_OPERANDS"]

log = logging.getLogger("pqt_compile.passes")
aten = torch.ops.aten
prims = torch.ops.prims

#: matmul op -> {operand position: contracted dim of that operand}
MATMUL_OPERANDS: dict = {
    aten.mm.default: {0: 1, 1: 0},
    aten.addmm.default: {1: 1, 2: 0},
    aten.bmm.default: {0: 2, 1: 1},
    aten.baddbmm.default: {1: 2, 2: 1},
}
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


@dataclass
class MatmulUse:
    """One path from the weight to a matmul operand."""

    path: list[Node]  # the transparent nodes after the weight, in order
    matmul: Node
    operand: int
    axis: Optional[int]  # the weight axis the matmul contracts (None: not a single axis)
    dtype: torch.dtype  # dtype at the matmul operand
    is_backward: bool


@dataclass
class WeightEdge:
    """A weight that the compiler samples, with its reduction axis and its uses."""

    node: Node
    name: str
    axis: int
    uses: list[MatmulUse] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def dtypes(self) -> list[torch.dtype]:
        """The distinct operand dtypes of the forward uses (one sample per dtype), in order."""
        out: list[torch.dtype] = []
        for u in self.uses:
            if not u.is_backward and u.dtype not in out:
                out.append(u.dtype)
        return out


@dataclass
class SkippedWeight:
    """A Parameter that is not sampled, and why."""

    name: str
    reason: str


def _val(n: object):
    return n.meta.get("val") if isinstance(n, Node) else None


def _is_dtype_cast(n: Node) -> bool:
    if n.target is prims.convert_element_type.default:
        return True
    if n.target is aten._to_copy.default:
        src, dst = _val(n.args[0]), _val(n)
        return set(n.kwargs) <= {"dtype", "layout", "device", "memory_format"} and (
            src is None or dst is None or src.device == dst.device
        )
    return False


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


def _step_dims(n: Node, dims: list) -> Optional[list]:
    """Per-dim weight axes of `n`'s output, given those of its input (None: cannot track)."""
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
        shape = list(_val(a[0]).shape)
        which = range(nd) if t is aten.squeeze.default else ([a[1]] if t is aten.squeeze.dim else a[1])
        drop = {w % nd for w in which if _same(shape[w % nd], 1)}
        return [d for k, d in enumerate(dims) if k not in drop]
    if t is aten.expand.default:
        return [None] * (len(a[1]) - nd) + list(dims)
    if t in _VIEWS:
        return _view_dims(dims, list(_val(a[0]).shape), list(_val(n).shape))
    return None


def backward_nodes(graph: Graph) -> set[Node]:
    """Nodes that depend on a tangent input: the backward half of a joint graph."""
    seen: set[Node] = set()
    for n in graph.nodes:  # topological order
        if n.op == "placeholder" and n.name.startswith("tangents"):
            seen.add(n)
        elif n.op != "placeholder" and any(isinstance(x, Node) and x in seen for x in n.all_input_nodes):
            seen.add(n)
    return seen


def _walk(weight: Node, bwd: set[Node]) -> list[MatmulUse]:
    nd = len(_val(weight).shape)
    uses: list[MatmulUse] = []
    stack: list[tuple[Node, list[Node], Optional[list]]] = [(weight, [], list(range(nd)))]
    while stack:
        node, path, dims = stack.pop()
        for user in node.users:
            if user.target in MATMUL_OPERANDS:
                for pos, cdim in MATMUL_OPERANDS[user.target].items():
                    if len(user.args) > pos and user.args[pos] is node:
                        axis = dims[cdim] if dims is not None and cdim < len(dims) else None
                        axis = axis if isinstance(axis, int) and axis >= 0 else None
                        uses.append(MatmulUse(path, user, pos, axis, _val(node).dtype, user in bwd))
            elif (user.target in _VIEWS or user.target in _IDENTITY or user.target in _OTHER or _is_dtype_cast(user)) and user.args[0] is node:
                stack.append((user, path + [user], _step_dims(user, dims) if dims is not None else None))
    return uses


def find_weight_edges(
    graph: Graph,
    weights: dict[Node, str],
    admits: Callable[[str], bool] = lambda name: True,
) -> tuple[list[WeightEdge], list[SkippedWeight]]:
    """Find the sampled weights of `graph`.

    Args:
        graph: an aten-level graph (joint, forward-only or inference).
        weights: weight Parameter placeholders -> qualified names.
        admits: the config's include/exclude filter over qualified names (selection.admits).
    Returns:
        (edges, skipped): one WeightEdge per sampled weight; the rest with a reason
        (selection.skip_reason: the one rule of which weights are sampled).
    """
    bwd = backward_nodes(graph)
    edges: list[WeightEdge] = []
    skipped: list[SkippedWeight] = []
    for node, name in weights.items():
        val = _val(node)
        uses = _walk(node, bwd) if val is not None and val.dtype in SUPPORTED_DTYPES else []
        fwd = [u for u in uses if not u.is_backward]
        axes = [u.axis for u in fwd if u.axis is not None]
        reason = skip_reason(
            dtype=getattr(val, "dtype", None), ndim=val.dim() if val is not None else 0, forward_matmul=bool(fwd),
            single_axis=bool(axes), admitted=admits(name),
        )
        if reason is not None:
            skipped.append(SkippedWeight(name, reason))
            continue
        edge = WeightEdge(node, name, axes[0], uses)
        if len(set(axes)) > 1:
            # Blocks follow the lowest contracted axis (not the first use, whose order could
            # differ between the traced reference graph and the joint graph).
            edge.axis = min(axes)
            edge.notes.append(f"forward matmuls contract axes {sorted(set(axes))}; blocks follow axis {edge.axis}")
            log.warning("pqt: %s", f"{name}: {edge.notes[-1]}")
        edges.append(edge)
    return edges, skipped
