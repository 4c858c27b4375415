"""Inductor: its entry point, config, lowering API, prologue marking and output code."""

from __future__ import annotations

import contextlib
import importlib
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

import torch

from .registry import CompatError, require

__all__ = [
    "inductor_config_options",
    "compile_fx",
    "custom_graph_pass_base",
    "inductor_lowering_api",
    "cpu_vector_isa",
    "mark_prologue_candidate",
    "floor_div",
    "has_triton",
    "trace_artifact",
    "mode_options",
    "capture_output_code",
]


# ---- Inductor -------------------------------------------------------------------------------

def inductor_config_options() -> set[str]:
    """The names of Inductor's config options (to refuse an unknown torch.compile option)."""
    return set(require("torch._inductor.config", "_config", "telling Inductor options from unknown ones"))


def compile_fx(gm: torch.fx.GraphModule, example_inputs: list, config_patches: Optional[dict]) -> Callable:
    """Inductor's `compile_fx` (torch 2.13), with config patches applied to this compile only."""
    fn = require("torch._inductor.compile_fx", "compile_fx", "the pqt backend")
    return fn(gm, example_inputs, config_patches=config_patches or None)


def custom_graph_pass_base() -> type:
    """Inductor's CustomGraphPass (a pass with a uuid() for its caches; torch 2.13)."""
    return require("torch._inductor.custom_graph_pass", "CustomGraphPass", "the cache-safe joint-graph pass")


def inductor_lowering_api() -> SimpleNamespace:
    """What the lowering of pqt.sample uses: register_lowering, ir (Reduction.create,
    Pointwise.create, make_loader, realize), the virtualized `ops` handler and FloorDiv
    (signatures as in torch 2.13)."""
    need = "the Inductor lowering of pqt.sample"
    return SimpleNamespace(
        register_lowering=require("torch._inductor.lowering", "register_lowering", need),
        ir=importlib.import_module("torch._inductor.ir"),
        Reduction=require("torch._inductor.ir", "Reduction", need),
        Pointwise=require("torch._inductor.ir", "Pointwise", need),
        ops=require("torch._inductor.virtualized", "ops", need),
        FloorDiv=floor_div(),
        # ComputedBuffer.force_realize(): a context in which a buffer that reads nothing (an
        # iota) stays realized instead of being inlined back into its readers (torch 2.13-2.15).
        force_realize=require("torch._inductor.ir", "ComputedBuffer", need).force_realize,
    )


def cpu_vector_isa() -> bool:
    """Whether Inductor's C++ backend has a vector ISA on this machine (pick_vec_isa, torch 2.13)."""
    return bool(require("torch._inductor.cpu_vec_isa", "pick_vec_isa", "int32 words where the C++ backend vectorises")())
def mark_prologue_candidate(value: Any) -> bool:
    """Realise an Inductor IR value and list its operation as Inductor's own `invoke_quant`
    lowering does for its outputs (torch 2.13: lowering.py `invoke_quant_tracer` adds to
    `V.graph.invoke_quant_ops`). The scheduler then skips, for that operation only, its
    heuristics that refuse a GEMM-template prologue before timing it
    (`Scheduler.check_prologue_fusion_heuristics_fusable`: bytes read <= 1.1 x bytes written,
    no fp32 math inside a bf16 template); a block-scaled sample fails both. Inductor's legality
    checks still apply, and with several template choices it still times the fused kernel
    against the separate one (`benchmark_epilogue_fusion`).

    Returns False, having only realised the value, where this torch has no such set: the
    sample then stays a separate kernel (same values, no prologue).
    """
    value.realize()
    graph = getattr(require("torch._inductor.virtualized", "V", "the sample as a GEMM-template prologue"), "graph", None)
    listed = getattr(graph, "invoke_quant_ops", None)
    if listed is None:
        return False
    listed.add(value.get_operation_name())
    return True


def floor_div() -> Any:
    """torch's sympy FloorDiv (block indices of dynamic shapes; torch 2.13)."""
    return require("torch.utils._sympy.functions", "FloorDiv", "block indices in the Inductor lowering")


def mode_options(mode: str) -> dict:
    """The Inductor options of torch.compile's `mode` (torch 2.13: torch._inductor.list_mode_options)."""
    return dict(require("torch._inductor", "list_mode_options", "mode= with pqt_compile.compile")(mode))


def trace_artifact(name: str, payload: Callable[[], str]) -> None:
    """A structured-trace artifact (free unless TORCH_TRACE is set; tlparse shows it)."""
    require("torch._logging", "trace_structured", "pass graphs in TORCH_TRACE")(
        "artifact", metadata_fn=lambda: {"name": name, "encoding": "string"}, payload_fn=payload
    )


def has_triton() -> bool:
    """Whether Triton can run here (torch.utils._triton.has_triton, torch 2.13)."""
    try:
        return bool(require("torch.utils._triton", "has_triton", "the Triton kernel of the eager op")())
    except CompatError:
        return False


@contextlib.contextmanager
def capture_output_code() -> Iterator[list[str]]:
    """Collect the source of every module Inductor writes inside the block.

    Replaces `GraphLowering.save_output_code` (a hook Inductor calls with each module's source,
    torch 2.13) for the block. Not `torch._inductor.utils.run_and_get_code`: that one calls
    `torch._dynamo.reset()` first, which would drop every other compiled model's code.
    """
    lowering = require("torch._inductor.graph", "GraphLowering", "explain (the output code)")
    codes: list[str] = []
    had = "save_output_code" in lowering.__dict__
    previous = lowering.__dict__.get("save_output_code")
    lowering.save_output_code = staticmethod(codes.append)
    try:
        yield codes
    finally:
        if had:
            lowering.save_output_code = previous
        else:
            del lowering.save_output_code
