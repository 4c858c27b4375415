"""emit_template_layouts: give each GEMM the sample in the layout that a Triton GEMM template reads.

Why: Inductor fuses a pointwise producer into a GEMM template's prologue only where the
template's read index of that input equals the index the producer writes (torch 2.13,
Scheduler prologue checks; loops are never reordered for templates). nn.Linear computes
`mm(x, t(w_hat))`: the template reads B = w_hat^T [K, N] at `n*K + k`, while the sample writes
w_hat [N, K] row-major, so the indices differ and the sample stays a separate kernel.
`pqt.sample_t` (op.py) computes the same values written [K, N] contiguous: a matmul operand
that is a transpose of a sample reads `sample_t` instead, and one that reads the sample
untransposed (`x @ W`, HF Conv1D's forward, nn.Linear's grad-input GEMM `mm(g, t(t(w_hat)))`)
reads the plain sample.

Before (joint graph of nn.Linear)::

    s = pqt.sample(w, ...);  t = aten.t(s);  mm = aten.mm(x, t)          # forward
    t_1 = aten.t(t);  mm_1 = aten.mm(g, t_1)                            # backward, grad input

After::

    s_t = pqt.sample_t(w, ...);  mm = aten.mm(x, s_t)
    s = pqt.sample(w, ...);      mm_1 = aten.mm(g, s)

`sample_t` carries the sample's tags (MUST_RECOMPUTE, the weight's name): the partitioner
keeps one layout in the forward graph and regenerates the other in the backward, so each
graph holds one sample, each readable by its GEMM's template.

When (template_layout_pass.py, with compiler/targets.py `gemm_templates`): only where Inductor may compile the GEMM to a
Triton template (Triton code and max-autotune for GEMMs). Elsewhere (the default mode on GPU,
which calls cuBLAS, and the C++ backend) the graph is left exactly as it was. The eager
reference (reference.py) applies the same rule, so it computes with the same ops.

Not handled: a weight whose sample feeds two GEMMs in one graph in the same layout (Inductor
fuses a prologue only into a producer's single user); 3-D operands (bmm).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.fx import Graph, Node

from .node_values import fake_mode_of, set_val

__all__ = ["emit_template_layouts", "GEMM_OPERANDS"]

aten = torch.ops.aten
#: 2-D matmuls that Inductor can compile to a Triton GEMM template, and their operand positions.
GEMM_OPERANDS = {aten.mm.default: (0, 1), aten.addmm.default: (1, 2)}
_NO_OP = {aten.alias.default, aten.detach.default}
_SAMPLE = torch.ops.pqt.sample.default


def _transposes(n: Node) -> Optional[bool]:
    """For a node on a path from a 2-D tensor (so every node on it is 2-D): True if it
    transposes its input, False if it passes it through, None if it is anything else.
    Decided from the op and its arguments alone: the eager reference's new nodes carry no
    fake values."""
    if n.op != "call_function":
        return None
    if n.target in _NO_OP:
        return False
    if n.target is aten.t.default:
        return True
    if n.target is aten.transpose.int:
        return n.args[1] % 2 != n.args[2] % 2
    if n.target is aten.permute.default:
        return [d % 2 for d in n.args[1]] == [1, 0]
    return None


def _source_sample(operand: Node) -> tuple[Optional[Node], bool]:
    """The sample of a 2-D weight that `operand` reads through transposes and no-ops, and
    whether it reads it transposed; (None, False) if it reads something else."""
    node, flipped = operand, False
    while isinstance(node, Node) and node.target is not _SAMPLE:
        step = _transposes(node)
        if step is None:
            return None, False
        flipped ^= step
        node = node.args[0]
    weight = node.args[0].meta.get("val") if isinstance(node, Node) else None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None, False
    return node, flipped


def _sample_t_of(graph: Graph, sample: Node, fake_mode) -> Node:
    with graph.inserting_after(sample):
        st = graph.call_function(torch.ops.pqt.sample_t.default, sample.args, dict(sample.kwargs))
    st.meta.update({k: v for k, v in sample.meta.items() if k not in ("val", "tensor_meta")})
    set_val(st, fake_mode)
    return st


def emit_template_layouts(graph: Graph, wanted: Callable[[torch.device], bool] = lambda device: True) -> int:
    """Rewire every GEMM operand that reads a 2-D sample to the sample in the GEMM's layout.

    Args:
        graph: an aten-level graph holding pqt.sample nodes (rewritten in place).
        wanted: whether to do it for a sample of a weight on this device (None: unknown device).
    Returns:
        how many operands now read pqt.sample_t or the sample directly.
    """
    fake_mode = fake_mode_of(graph)
    transposed: dict[Node, Node] = {}
    moved = 0
    for mm in list(graph.nodes):
        if mm.op != "call_function" or mm.target not in GEMM_OPERANDS:
            continue
        for pos in GEMM_OPERANDS[mm.target]:
            operand = mm.args[pos]
            sample, flipped = _source_sample(operand) if isinstance(operand, Node) else (None, False)
            if sample is None or not wanted(sample.args[0].meta["val"].device):
                continue
            if flipped and sample not in transposed:
                transposed[sample] = _sample_t_of(graph, sample, fake_mode)
            source = transposed[sample] if flipped else sample
            if operand is not source:
                mm.replace_input_with(operand, source)
                moved += 1
    graph.eliminate_dead_code()
    return moved

