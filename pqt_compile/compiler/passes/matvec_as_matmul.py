"""MatVecAsMatmulPass: every matrix-vector product as a one-column matrix product.

A pqt compile keeps aten.mv and addmv out of Inductor's decomposition table, so that the
SamplePass sees the weight of `W @ v` (compiler/backend.py NOTE [matmuls stay matmuls]). Inductor
has no lowering of either: left in the graph, each would become an implicit fallback to the
ATen kernel, which Inductor refuses with an AssertionError whenever the environment variable CI
is set ("make_fallback(aten.mv.default): a decomposition exists"), as GitHub Actions and most
CI services set it. This pass runs after the SamplePass and rewrites them into the matrix
products Inductor lowers (an extern GEMM call, or a template on a GPU):

    before:  y = aten.mv(W, v)                      # W [N, K], v [K]
             y = aten.addmv(b, W, v, beta, alpha)   # b broadcasts to [N]
    after:   y = aten.squeeze.dim(aten.mm(W, aten.unsqueeze(v, 1)), 1)
             y = aten.squeeze.dim(aten.addmm(aten.unsqueeze(b, -1), W, aten.unsqueeze(v, 1), beta, alpha), 1)

NOTE [one product, one column]: the product is the same sum of the same terms, but another
kernel (a GEMM for a GEMV) may add them in another order; the result is equal within fp
rounding, not bit for bit, as every compiled matmul is to eager. The sample feeding it is not
touched: it stays bit-exact. Every rewritten node keeps the meta of the product it replaces
(activation-checkpoint tags, stack trace), with its own fake value and no stale tensor_meta.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.fx import Graph, Node

from .base import PQTPass
from .node_values import fake_mode_of, set_val

__all__ = ["MatVecAsMatmulPass", "matvec_as_matmul"]

aten = torch.ops.aten


def matvec_as_matmul(graph: Graph) -> int:
    """Rewrite every aten.mv and addmv node of `graph` (module docstring). Returns how many."""
    count, fake_mode = 0, fake_mode_of(graph)
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.mv.default, aten.addmv.default):
            continue
        with graph.inserting_before(node):
            if node.target is aten.mv.default:
                mat, vec = node.args
                column = _like(graph, fake_mode, node, aten.unsqueeze.default, (vec, 1))
                product = _like(graph, fake_mode, node, aten.mm.default, (mat, column))
            else:
                bias, mat, vec = node.args[:3]
                column = _like(graph, fake_mode, node, aten.unsqueeze.default, (vec, 1))
                bias_column = _like(graph, fake_mode, node, aten.unsqueeze.default, (bias, -1))
                product = _like(graph, fake_mode, node, aten.addmm.default, (bias_column, mat, column), dict(node.kwargs))
            result = _like(graph, fake_mode, node, aten.squeeze.dim, (product, 1))
        node.replace_all_uses_with(result)
        graph.erase_node(node)
        count += 1
    return count


def _like(graph: Graph, fake_mode: Any, original: Node, target: Any, args: tuple, kwargs: Optional[dict] = None) -> Node:
    """A new node with `original`'s meta and its own fake value (where the graph carries them)."""
    new = graph.call_function(target, args, kwargs or {})
    new.meta.update({k: v for k, v in original.meta.items() if k not in ("val", "tensor_meta")})  # its own shapes
    set_val(new, fake_mode)
    return new


class MatVecAsMatmulPass(PQTPass):
    """matvec_as_matmul as a joint-graph pass, after the SamplePass."""

    name = "pqt_matvec_as_matmul"

    def run(self, graph: Graph) -> None:
        matvec_as_matmul(graph)
