"""The matmul ops the pass recognises: which operand is contracted along which dim, and which
dim of an operand enumerates groups (MoE experts).

NOTE [grouped matmuls]: a grouped matmul multiplies the rows of group g of mat_a by mat_b[g]:
`aten._grouped_mm(mat_a [S, K] or [G, S, K], mat_b [G, K, N] or [K, N], offs)`. Its mat_b is the
*logical* [G, K, N]: the kernel wants it column-major, which is a transposed view of an [G, N, K]
Parameter, and the path tracking sees the transpose. Its dim 0 enumerates experts: never a
reduction axis, and the sample's blocks never cross it. transformers' fallback for the same
computation (`transformers::grouped_mm_fallback`, run under torch.compile for non-bf16 weights)
takes the weight [E, K, N]; its backward reads the weight for grad_input = grad @ W[e]^T. Ops of
other libraries are held by qualified name, so that the library may be imported after pqt.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["MATMUL_OPERANDS", "matmul_operands", "group_dims", "op_name", "is_recurrent_layer"]

aten = torch.ops.aten

#: matmul op -> {operand position: contracted dim of that operand (negative: from the end), or None
#: where the op contracts several dims of it at once (no single block axis: read, never sampled,
#: and warned as selection.Reason.MIXED_AXES)}
MATMUL_OPERANDS: dict = {
    aten.mm.default: {0: 1, 1: 0},
    aten.addmm.default: {1: 1, 2: 0},
    aten.mv.default: {0: 1, 1: 0},  # W @ v with a 1-D v (torch.matmul, torch.mv)
    aten.addmv.default: {1: 1, 2: 0},
    aten.bmm.default: {0: 2, 1: 1},
    aten.baddbmm.default: {1: 2, 2: 1},
    aten.addbmm.default: {1: 2, 2: 1},
    aten._grouped_mm.default: {0: -1, 1: -2},  # NOTE [grouped matmuls]
    aten._trilinear.default: {1: None},  # F.bilinear / nn.Bilinear: its weight [O, I1, I2] contracted along I1 and I2
}
#: op -> {operand position: the dim of a 3-D operand that enumerates groups (experts)}
_GROUP_DIMS: dict = {aten._grouped_mm.default: {1: 0}}
#: qualified op name -> (operands as in MATMUL_OPERANDS, group dims as in _GROUP_DIMS)
_NAMED_MATMULS: dict[str, tuple[dict, dict]] = {
    "transformers::grouped_mm_fallback": ({1: -2}, {1: 0}),
    "transformers::grouped_mm_fallback_backward": ({1: -1}, {1: 0}),
}

#: ops that run a whole recurrent layer (torch.nn.RNN, GRU, LSTM and their cells' fused kernels),
#: their matmuls inside: the pass cannot sample their weights, so it reads them clean, and warns
#: (weight_edges.py NOTE [ops not followed]). Dynamo traces the modules only with
#: torch._dynamo.config.allow_rnn (guards.py names the default, eager, case).
_RECURRENT_LAYERS = frozenset({
    "aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu", "aten::mkldnn_rnn_layer", "aten::mkldnn_rnn",
    "aten::_cudnn_rnn", "aten::miopen_rnn", "aten::_thnn_fused_lstm_cell", "aten::_thnn_fused_gru_cell",
})


def op_name(target: Any) -> Optional[str]:
    """"namespace::name" of an op overload, None for anything else."""
    if hasattr(target, "namespace") and callable(getattr(target, "name", None)):  # an OpOverload
        return target.name()
    return None


def matmul_operands(target: Any) -> Optional[dict]:
    """{operand position: contracted dim} if `target` is a matmul the pass knows, else None."""
    if target in MATMUL_OPERANDS:
        return MATMUL_OPERANDS[target]
    named = _NAMED_MATMULS.get(op_name(target) or "")
    return named[0] if named else None


def group_dims(target: Any) -> dict:
    """{operand position: the dim that enumerates experts} of a grouped matmul ({} otherwise)."""
    if target in _GROUP_DIMS:
        return _GROUP_DIMS[target]
    named = _NAMED_MATMULS.get(op_name(target) or "")
    return named[1] if named else {}


def is_recurrent_layer(target: Any) -> bool:
    """Whether `target` runs a whole recurrent layer (an op pqt cannot sample the weights of)."""
    return (op_name(target) or "").split(".")[0] in _RECURRENT_LAYERS
