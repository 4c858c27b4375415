"""The registry of private symbols and `require`, which resolves one or names what is missing."""

from __future__ import annotations

import importlib
from typing import Any

import torch

__all__ = [
    "TORCH_CHECKED",
    "SYMBOLS",
    "CompatError",
    "require",
]


#: torch releases this package's symbols were checked on.
TORCH_CHECKED = ("2.13", "2.14", "2.15")

#: (module, attribute, what needs it): every private symbol resolved through `require`.
SYMBOLS: tuple[tuple[str, str, str], ...] = (
    ("torch._dynamo.symbolic_convert", "InstructionTranslator", "naming weights after the compiled module"),
    ("torch._inductor.config", "_config", "telling Inductor options from unknown ones"),
    ("torch._inductor.compile_fx", "compile_fx", "the pqt backend (Inductor's entry point)"),
    ("torch._inductor.compile_fx", "compile_fx_inner", "the pqt backend"),
    ("torch._inductor.decomposition", "select_decomp_table", "keeping small matmuls sampled"),
    ("torch._inductor.codegen.wrapper", "PythonWrapperCodegen",
     "fewer input checks per call (NOTE [0-d input asserts])"),
    ("torch._inductor.custom_graph_pass", "CustomGraphPass", "the cache-safe joint-graph pass"),
    ("torch._inductor.runtime.cache_dir_utils", "cache_dir", "the pass's warnings on a cache hit"),
    ("torch._functorch.config", "enable_autograd_cache", "the pass's warnings on a cache hit"),
    ("torch._inductor.lowering", "register_lowering", "the Inductor lowering of pqt.sample"),
    ("torch._inductor.ir", "Reduction", "the Inductor lowering of pqt.sample"),
    ("torch._inductor.ir", "Pointwise", "the Inductor lowering of pqt.sample"),
    ("torch._inductor.virtualized", "ops", "the Inductor lowering of pqt.sample"),
    ("torch._inductor.ir", "ComputedBuffer", "the Inductor lowering of pqt.sample (a realized index buffer)"),
    ("torch._inductor.ops_handler", "OpsHandler", "IEEE division in the NVFP4 lowering (div_rn; truediv on 2.11)"),
    ("torch._inductor.cpu_vec_isa", "pick_vec_isa", "int32 words where the C++ backend vectorises"),
    ("torch._inductor.virtualized", "V", "the sample as a GEMM-template prologue (V.graph.invoke_quant_ops)"),
    ("torch.utils._sympy.functions", "FloorDiv", "block indices in the Inductor lowering"),
    ("torch.utils._triton", "has_triton", "the Triton kernel of the eager op on CUDA"),
    ("torch._C", "_current_graph_task_id", "the seed rule (a recompute inside a backward)"),
    ("torch._C", "_current_autograd_node", "the seed rule (a recompute draws its forward's seed)"),
    ("torch.autograd.function", "BackwardCFunction", "the seed rule (watching a backward)"),
    ("torch._dynamo.compiled_autograd", "compiled_autograd_enabled", "refusing compiled autograd (the seed rule)"),
    ("torch.utils.checkpoint", "CheckpointFunction",
     "refusing a PQT graph called in a reentrant checkpoint's no_grad forward"),
    ("torch.utils._pytree", "tree_flatten", "the eager reference and explain"),
    ("torch._logging", "trace_structured", "pass graphs in TORCH_TRACE"),
    ("torch._inductor", "list_mode_options", "mode= with pqt_compile.compile"),
    ("torch._dynamo.utils", "counters", "explain (graph breaks)"),
    ("torch._inductor.graph", "GraphLowering", "explain (the output code)"),
    ("torch.distributed.tensor._utils", "compute_local_shape_and_global_offset",
     "tensor-parallel weights (a shard's place in the full weight)"),
    ("torch._inductor.ir", "ReinterpretView", "the one-kernel sample on Triton (its output viewed as the weight's shape)"),
    ("torch._inductor.ir", "FixedLayout", "the one-kernel sample on Triton (its output viewed as the weight's shape)"),
    ("torch._inductor.ir", "TensorBox", "the one-kernel sample on Triton (its output viewed as the weight's shape)"),
)


class CompatError(RuntimeError):
    """A private torch API that pqt_compile needs is missing from this torch release."""


#: (module, attr) -> the symbol, once resolved: some accessors run in every training step (the
#: seed rule's graph-task id), where an import_module per call costs microseconds of host time.
_resolved: dict[tuple[str, str], Any] = {}


def require(module: str, attr: str, needed_for: str) -> Any:
    """`module.attr`, or a CompatError naming the torch version, the symbol and what needs it."""
    hit = _resolved.get((module, attr), _resolved)
    if hit is not _resolved:
        return hit
    try:
        symbol = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise CompatError(
            f"pqt_compile: {needed_for} needs {module}.{attr}, which torch {torch.__version__} does not have "
            f"({type(e).__name__}: {e}); pqt_compile was checked on torch {', '.join(TORCH_CHECKED)}"
        ) from None
    _resolved[(module, attr)] = symbol
    return symbol
