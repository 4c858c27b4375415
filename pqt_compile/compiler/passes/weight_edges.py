"""find_weight_edges: which weight Parameters feed which matmul operand, along which axis.

Works on aten-level FX graphs: the joint forward+backward graph that AOTAutograd builds,
and the forward graph that the eager reference traces with make_fx. One set of rules for
both, so the reference samples exactly the weights that the compiler samples.

A path runs from a weight placeholder through "transparent" ops (views, permutes,
transposes, expands, dtype casts, clones) to an operand of mm / addmm / bmm / baddbmm.
Along the path we track which weight axis each dim of the intermediate tensor comes from,
so that at the matmul we know which weight axis is contracted: the reduction axis of the
sample's blocks.

NOTE [expert paths]: MoE experts are 3-D Parameters [E, ., .]. An expert is picked by indexing
dim 0 (`W[expert_ids]` -> bmm, `W.select(0, e)`), or all experts are passed to a grouped matmul
whose dim 0 enumerates groups (matmul_ops.py NOTE [grouped matmuls]). Both are paths: the full
3-D Parameter is sampled once, with blocks along the expert's own reduction axis (never across
experts), and the path is re-applied to the sample, so a gathered expert reads the sample of the
full Parameter. The indexed or grouped axes are recorded as the edge's `expert_axes`. Indexing
is transparent only where it picks experts: a 2-D weight read through `W[idx]` (an embedding
written as indexing) is not a path, exactly as `aten.embedding` is not.

NOTE [opaque consumers]: a weight that no known matmul reads but that a custom op outside aten,
prims and pqt reads (a library's fused MoE kernel) is refused: pqt cannot see whether that op
multiplies by it, and sampling nothing would let it train clean.

NOTE [partly clean]: a weight that a matmul reads directly and that also reaches a matmul with
data through an op not followed (`F.linear(x, W)` and `F.linear(x, W * mask)`) is sampled on its
direct paths and read clean on the other: the edge keeps that op (`clean_via`) and the pass warns.
A weight whose direct matmuls multiply it by weights and buffers alone, while its product with
data goes through such an op (spectral_norm: the power iteration's `mv(W, v)`, then `W / sigma`
into the Linear), is not sampled at all, as a weight_norm weight is not: sampling only the power
iteration would move its buffers and leave the Linear clean.

NOTE [forward decides]: in a joint graph the backward reuses the weight in matmuls that
contract another axis (grad_input = grad_out @ W contracts N, not K). Only forward paths
decide the axis and the dtype; backward paths are rewired to the same sample so that one
step's forward and backward see one sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
import operator
from typing import Callable, Collection, Optional

import torch
from torch.fx import Graph, Node

from ...blocks import SUPPORTED_DTYPES
from ...selection import Reason, skip_reason
from .axis_tracking import INDEXING, expert_axis, passes_through, step_dims, unbinds_experts
from .matmul_ops import group_dims, is_recurrent_layer, matmul_operands, op_name
from .node_values import val as _val

__all__ = ["MatmulUse", "WeightEdge", "SkippedWeight", "find_weight_edges", "backward_nodes"]

log = logging.getLogger("pqt_compile.passes")

#: namespaces whose ops are not a library's opaque kernel (NOTE [opaque consumers]): torch's own
#: ops, collectives, higher-order ops, and ours
_KNOWN_NAMESPACES = ("aten", "prims", "pqt", "higher_order", "_c10d_functional", "c10d_functional", "c10d")


@dataclass
class MatmulUse:
    """One path from the weight to a matmul operand."""

    path: list[Node]  # the transparent nodes after the weight, in order
    matmul: Node
    operand: int
    axis: Optional[int]  # the weight axis the matmul contracts (None: not a single axis)
    dtype: torch.dtype  # dtype at the matmul operand
    is_backward: bool
    expert_axes: tuple[int, ...] = ()  # weight axes indexed or grouped on this path (NOTE [expert paths])


@dataclass
class WeightEdge:
    """A weight that the compiler samples, with its reduction axis and its uses."""

    node: Node
    name: str
    axis: int
    uses: list[MatmulUse] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    clean_via: Optional[str] = None  # an op through which it also reaches a matmul, clean (NOTE [partly clean])

    @property
    def expert_axes(self) -> tuple[int, ...]:
        """Weight axes that enumerate experts on a forward path (NOTE [expert paths])."""
        return tuple(sorted({a for u in self.uses if not u.is_backward for a in u.expert_axes}))

    @property
    def kinds(self) -> list[str]:
        """The matmul ops of the forward uses, in order: which (experts) implementation ran."""
        out: list[str] = []
        for u in self.uses:
            k = op_name(u.matmul.target) or str(u.matmul.target)
            if not u.is_backward and k not in out:
                out.append(k)
        return out

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
    """A Parameter that is not sampled, and why; `trains_clean`: the config admits it and a forward
    matmul reads it (a matrix: rule 4), so its user expects it sampled: the pass warns
    (sample_pass.not_followed_warnings)."""

    name: str
    reason: str
    trains_clean: bool = False


def backward_nodes(graph: Graph) -> set[Node]:
    """Nodes that depend on a tangent input: the backward half of a joint graph."""
    seen: set[Node] = set()
    for n in graph.nodes:  # topological order
        if n.op == "placeholder" and n.name.startswith("tangents"):
            seen.add(n)
        elif n.op != "placeholder" and any(isinstance(x, Node) and x in seen for x in n.all_input_nodes):
            seen.add(n)
    return seen


def _walk(weight: Node, bwd: set[Node], opaque: list[str], blocked: list[Node]) -> list[MatmulUse]:
    """Every path from `weight` through transparent ops to a matmul operand; appends to `opaque`
    the custom ops outside aten/prims/pqt that read it in the forward (NOTE [opaque consumers]),
    and to `blocked` the other forward ops that read it and are not followed."""
    nd = len(_val(weight).shape)
    uses: list[MatmulUse] = []
    stack: list[tuple[Node, list[Node], Optional[list], tuple]] = [(weight, [], list(range(nd)), ())]
    while stack:
        node, path, dims, experts = stack.pop()
        for user in node.users:
            operands = matmul_operands(user.target)
            if operands is not None:
                for pos, cdim in operands.items():
                    if len(user.args) > pos and user.args[pos] is node:
                        axis = dims[cdim] if cdim is not None and dims is not None and -len(dims) <= cdim < len(dims) else None
                        axis = axis if isinstance(axis, int) and axis >= 0 else None
                        grouped = experts
                        g = group_dims(user.target).get(pos)
                        if g is not None and dims is not None and len(dims) == 3 and isinstance(dims[g], int) and dims[g] >= 0:
                            grouped = (*experts, dims[g])
                        uses.append(MatmulUse(path, user, pos, axis, _val(node).dtype, user in bwd, grouped))
            elif unbinds_experts(user, node, dims):
                # `for w in W` / W.unbind(0) over experts: each item is W[e] (NOTE [expert paths])
                for item in user.users:
                    if item.target is operator.getitem:
                        stack.append((item, path + [user, item], dims[1:], (*experts, 0)))
            elif passes_through(user, node, dims):
                nxt = step_dims(user, dims) if dims is not None else None
                more = expert_axis(user) if user.target in INDEXING else ()
                stack.append((user, path + [user], nxt, (*experts, *more)))
            elif user not in bwd and (name := op_name(user.target)) and name.split("::")[0] not in _KNOWN_NAMESPACES:
                opaque.append(name)
            elif user not in bwd:
                blocked.append(user)
    return uses


def _weights_only(graph: Graph, weights: dict[Node, str], constants: Collection[Node]) -> set[Node]:
    """The nodes computed from weights and constants (buffers: a pruning mask, spectral_norm's
    vectors) alone: no other graph input (data, seeds, tangents) reaches them."""
    data: set[Node] = set()
    for n in graph.nodes:
        if (n.op == "placeholder" and n not in weights and n not in constants) or any(a in data for a in n.all_input_nodes):
            data.add(n)
    return {n for n in graph.nodes if n not in data and n.op != "output"}


def _matmul_behind(blocked: list[Node], weights_only: set[Node], bwd: set[Node]) -> Optional[str]:
    """NOTE [ops not followed]: the first op of `blocked` from which a computation on weights alone
    (a split or slice of a fused weight, a concatenation, a weight-norm parametrization) reaches a
    forward matmul as the weight operand of a product with data, by name; None if none does. The walk stops
    at data (an embedding's lookup feeds matmuls as activations) and at a product of weights alone
    (a learned query or latent through its own projection is an activation there, not a weight).
    A recurrent layer's op (matmul_ops.is_recurrent_layer), reached from the weight directly or
    through weights alone, counts as such a matmul and is named itself."""
    for start in blocked:
        if is_recurrent_layer(start.target):  # a recurrent layer's matmuls, inside one op
            return op_name(start.target)
        stack, seen = [start], {start}
        while stack:
            node = stack.pop()
            if node not in weights_only:
                continue
            for user in node.users:
                if user in bwd:  # the backward's matmuls read the weight against gradients
                    continue
                if is_recurrent_layer(user.target):
                    return op_name(user.target)
                operands = matmul_operands(user.target)
                mine = [p for p in operands or () if len(user.args) > p and user.args[p] is node]
                if mine:
                    others = [user.args[p] for p in operands if p not in mine and len(user.args) > p]
                    if any(isinstance(o, Node) and o not in weights_only for o in others):
                        return op_name(start.target) or str(start.target)
                    continue  # weights times weights: not followed further
                if user not in seen and len(seen) < 10000:
                    seen.add(user)
                    stack.append(user)
    return None


def _reads_data(use: MatmulUse, weights_only: set[Node]) -> bool:
    """Whether a matmul use multiplies the weight by something computed from data (an input that is
    not a weight or buffer), rather than by weights and buffers alone."""
    return any(isinstance(a, Node) and a not in weights_only
               for i, a in enumerate(use.matmul.args) if i != use.operand)


def find_weight_edges(
    graph: Graph,
    weights: dict[Node, str],
    admits: Callable[[str], bool] = lambda name: True,
    constants: Collection[Node] = (),
) -> tuple[list[WeightEdge], list[SkippedWeight]]:
    """Find the sampled weights of `graph`.

    Args:
        graph: an aten-level graph (joint, forward-only or inference).
        weights: weight Parameter placeholders -> qualified names.
        admits: the config's include/exclude filter over qualified names (selection.admits).
        constants: placeholders that hold no data (buffers), for NOTE [ops not followed].
    Returns:
        (edges, skipped): one WeightEdge per sampled weight; the rest with a reason
        (selection.skip_reason: the one rule of which weights are sampled).
    """
    bwd = backward_nodes(graph)
    edges: list[WeightEdge] = []
    skipped: list[SkippedWeight] = []
    weights_only: Optional[set[Node]] = None  # computed for the first weight that needs it
    for node, name in weights.items():
        val = _val(node)
        opaque: list[str] = []
        blocked: list[Node] = []
        # Walked in any floating dtype, so that a float64 matrix a matmul reads is told apart (and warned).
        uses = _walk(node, bwd, opaque, blocked) if val is not None and val.dtype.is_floating_point else []
        fwd = [u for u in uses if not u.is_backward]
        admitted = admits(name)
        if not fwd and opaque and val.dtype in SUPPORTED_DTYPES and val.dim() >= 2 and admitted:  # NOTE [opaque consumers]
            raise ValueError(
                f"pqt: weight {name!r} {tuple(val.shape)} is read by the custom op {sorted(set(opaque))[0]}, whose "
                "inside pqt cannot see, so it would train without noise. For transformers experts use "
                "experts_implementation='grouped_mm' or 'batched_mm'; if the op is a matmul, add its operands to "
                "pqt_compile/compiler/passes/matmul_ops.py (_NAMED_MATMULS); or exclude the weight in the PQTConfig."
            )
        axes = [u.axis for u in fwd if u.axis is not None]
        reason = skip_reason(
            dtype=getattr(val, "dtype", None), ndim=val.dim() if val is not None else 0, forward_matmul=bool(fwd),
            single_axis=bool(axes), admitted=admitted,
        )
        via = None
        if reason in (None, Reason.NOT_MATMUL) and blocked and val.dim() >= 2 and admitted:
            weights_only = _weights_only(graph, weights, set(constants)) if weights_only is None else weights_only
            via = _matmul_behind(blocked, weights_only, bwd)
            if via is not None and (reason is not None or not any(_reads_data(u, weights_only) for u in fwd)):
                # NOTE [partly clean]: its own matmuls multiply it by weights alone (spectral_norm's
                # power iteration); the product with data reads a computation of the clean weight.
                reason = Reason.NOT_FOLLOWED.format(op=via)
        if reason is not None:
            # Admitted (so not EXCLUDED), a matrix a forward matmul reads: DTYPE, MIXED_AXES or NOT_FOLLOWED.
            trains_clean = admitted and val.dim() >= 2 and (bool(fwd) or via is not None)
            skipped.append(SkippedWeight(name, reason, trains_clean=trains_clean))
            continue
        edge = WeightEdge(node, name, axes[0], uses, clean_via=via)
        if via is not None:  # NOTE [partly clean]; warned by sample_pass.not_followed_warnings
            edge.notes.append(f"also reaches a matmul through {via}, which pqt does not follow: that product reads "
                              "the clean weight")
        if edge.expert_axes:  # shown by explain and pqt-dump (NOTE [expert paths])
            edge.notes.append(f"experts along axis {edge.expert_axes[0]} (blocks per expert along axis {min(axes)}); "
                              f"implementation: {', '.join(edge.kinds)}")
        if set(axes) & set(edge.expert_axes):
            raise ValueError(
                f"pqt: weight {name!r}: a matmul contracts its expert axis {edge.expert_axes[0]}, which also picks "
                "experts; pqt knows no such layout. Exclude the weight in the PQTConfig, and report the model."
            )
        if len(set(axes)) > 1:
            # Blocks follow the lowest contracted axis (not the first use, whose order could
            # differ between the traced reference graph and the joint graph).
            edge.axis = min(axes)
            edge.notes.append(f"forward matmuls contract axes {sorted(set(axes))}; blocks follow axis {edge.axis}")
            log.warning("pqt: %s", f"{name}: {edge.notes[-1]}")
        edges.append(edge)
    return edges, skipped
