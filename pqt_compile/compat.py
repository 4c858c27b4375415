"""Every private PyTorch API that pqt_compile uses, in one place, with the versions checked.

NOTE [private API]: torch.compile gives a backend a graph and example inputs and nothing else;
doing more (naming weights after the module being compiled, a custom Inductor lowering,
observing the end of a backward pass) needs internals that move between releases. Each one is
resolved here, lazily (importing pqt_compile imports none of them), through `require`, which
fails with `CompatError` naming the torch version, the symbol and the feature that needs it,
rather than with an AttributeError deep in a compile. Where a feature can degrade instead
(names from Dynamo sources when the compiled module cannot be read), the accessor says so and
returns a neutral value.

Checked on: torch 2.13.0 (CPU build) with triton 3.9.0, torch 2.14.1 with triton 3.8.0 and
torch 2.15.0 with triton 3.9.0 (the registry's CUDA builds, run on the CPU). `TORCH_CHECKED`
lists those releases; `tests/test_compat.py` resolves every symbol listed in `SYMBOLS`, and CI
reruns it with every other `private_api` test on the newest one (scripts/test-newest.sh).
Known drift: `Reduction.create` gained a keyword (`strict_sum` in 2.14, `strict_reduction` in
2.15); the lowering passes only keywords that all three releases share.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

import torch

__all__ = [
    "TORCH_CHECKED",
    "SYMBOLS",
    "CompatError",
    "require",
    "frame_root_module",
    "placeholder_source_name",
    "is_buffer_placeholder",
    "mark_added_input",
    "copy_dynamo_graph_attrs",
    "fsdp2_unsharded_params",
    "dtensor_local_shape_and_offset",
    "all_reduce_max_ops",
    "inductor_config_options",
    "compile_fx",
    "custom_graph_pass_base",
    "inductor_lowering_api",
    "cpu_vector_isa",
    "mark_prologue_candidate",
    "floor_div",
    "has_triton",
    "current_graph_task_id",
    "queue_backward_callback",
    "pytree",
    "allow_nested_fx_trace",
    "trace_artifact",
    "mode_options",
    "dynamo_counters",
    "capture_output_code",
    "dynamo_recompile_limit",
    "compiled_module",
    "compiled_model_called_alone",
    "frame_modules",
]

#: torch releases this module's symbols were checked on.
TORCH_CHECKED = ("2.13", "2.14", "2.15")

#: (module, attribute, what needs it): every private symbol resolved through `require`.
SYMBOLS: tuple[tuple[str, str, str], ...] = (
    ("torch._dynamo.symbolic_convert", "InstructionTranslator", "naming weights after the compiled module"),
    ("torch._inductor.config", "_config", "telling Inductor options from unknown ones"),
    ("torch._inductor.compile_fx", "compile_fx", "the pqt backend (Inductor's entry point)"),
    ("torch._inductor.custom_graph_pass", "CustomGraphPass", "the cache-safe joint-graph pass"),
    ("torch._inductor.lowering", "register_lowering", "the Inductor lowering of pqt.sample"),
    ("torch._inductor.ir", "Reduction", "the Inductor lowering of pqt.sample"),
    ("torch._inductor.ir", "Pointwise", "the Inductor lowering of pqt.sample"),
    ("torch._inductor.virtualized", "ops", "the Inductor lowering of pqt.sample"),
    ("torch._inductor.ir", "ComputedBuffer", "the Inductor lowering of pqt.sample (a realized index buffer)"),
    ("torch._inductor.cpu_vec_isa", "pick_vec_isa", "int32 words where the C++ backend vectorises"),
    ("torch._inductor.virtualized", "V", "the sample as a GEMM-template prologue (V.graph.invoke_quant_ops)"),
    ("torch.utils._sympy.functions", "FloorDiv", "block indices in the Inductor lowering"),
    ("torch.utils._triton", "has_triton", "the Triton kernel of the eager op on CUDA"),
    ("torch._C", "_current_graph_task_id", "the seed rule (a recompute inside a backward)"),
    ("torch.utils._pytree", "tree_flatten", "the eager reference and explain"),
    ("torch._logging", "trace_structured", "pass graphs in TORCH_TRACE"),
    ("torch._inductor", "list_mode_options", "mode= with pqt_compile.compile"),
    ("torch._dynamo.utils", "counters", "explain (graph breaks)"),
    ("torch._inductor.graph", "GraphLowering", "explain (the output code)"),
    ("torch.distributed.tensor._utils", "compute_local_shape_and_global_offset",
     "tensor-parallel weights (a shard's place in the full weight)"),
    ("torch._inductor.ir", "ReinterpretView", "the one-kernel sample (its output viewed as the weight's shape)"),
    ("torch._inductor.ir", "FixedLayout", "the one-kernel sample (its output viewed as the weight's shape)"),
    ("torch._inductor.ir", "TensorBox", "the one-kernel sample (its output viewed as the weight's shape)"),
)


class CompatError(RuntimeError):
    """A private torch API that pqt_compile needs is missing from this torch release."""


def require(module: str, attr: str, needed_for: str) -> Any:
    """`module.attr`, or a CompatError naming the torch version, the symbol and what needs it."""
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise CompatError(
            f"pqt_compile: {needed_for} needs {module}.{attr}, which torch {torch.__version__} does not have "
            f"({type(e).__name__}: {e}); pqt_compile was checked on torch {', '.join(TORCH_CHECKED)}"
        ) from None


# ---- Dynamo: the module being compiled and its placeholders --------------------------------

def frame_root_module() -> Optional[torch.nn.Module]:
    """The nn.Module whose frame Dynamo is compiling (its `self`), or None.

    A backend is only handed the graph; the module is read from the translator that called it
    (`InstructionTranslator.current_tx()`, torch 2.13). If that moves, names fall back to the
    placeholders' sources (blocks compiled separately then warn about shared keys) and the eval
    switch to each weight's registered module.
    """
    try:
        tx = require("torch._dynamo.symbolic_convert", "InstructionTranslator", "").current_tx()
        f_locals = tx.output.root_tx.f_locals if tx is not None else {}
    except Exception:  # noqa: BLE001 - any change of the private API means "unknown"
        return None
    # A module's forward frame holds it as `self`; when Dynamo starts from a module call that
    # it inlines whole (e.g. a bare nn.Linear), the frame holds it as `fn`.
    for name in ("self", "fn"):
        root = f_locals.get(name)
        if isinstance(root, torch.nn.Module):
            return root
    return None


# ---- Dynamo: the module that a torch.compile call compiles (issue 25) ----------------------
# NOTE [the compiled module]: a backend is not told which model the user compiled, only the
# frame Dynamo is tracing, whose `self` may be a block (the model's forward was skipped for a
# graph break inside its loop over blocks), or absent (a forward wrapped by a decorator that
# takes *args, as transformers 5.x wraps Llama's: the frame is the decorator's `wrapper`). The
# model is read from the call stack instead: torch.compile's wrapper (`compile_wrapper` in
# torch/_dynamo/eval_frame.py; matched by file, not by name) holds the callable it compiles as
# its local `fn`, a bound method of the module for torch.compile(model) and model.compile(),
# and its context as `self` (a DisableContext, callback None, wraps every compiled graph's call:
# skipped).
# The innermost such frame is the compile whose backend is running (a nested compiled block
# sets its own). Checked on torch 2.13.0 (run) and 2.14.1 (source). Where it is not found,
# names come from the traced frame's modules (frame_root_module, frame_modules).

_EVAL_FRAME_FILE = os.path.join("torch", "_dynamo", "eval_frame.py")


def _compile_call() -> tuple[Optional[torch.nn.Module], Optional[torch.nn.Module], list[torch.nn.Module]]:
    """(the module the innermost torch.compile wrapper on this thread's stack compiles, the
    outermost module called between that wrapper and here, the modules whose methods call the
    wrapper from outside). No wrapper found: (None, None, [])."""
    frame = sys._getframe(2)
    inside: Optional[torch.nn.Module] = None
    while frame is not None:
        try:
            f_locals = frame.f_locals
        except Exception:  # noqa: BLE001 - a frame whose locals cannot be read: keep looking
            f_locals = {}
        if frame.f_code.co_filename.endswith(_EVAL_FRAME_FILE):
            fn = f_locals.get("fn")
            # A DisableContext's wrapper (callback None: compiled graphs run under one) compiles nothing.
            compiling = getattr(f_locals.get("self"), "callback", True) is not None
            if fn is not None and callable(fn) and compiling:
                owner = getattr(fn, "__self__", None)
                outside: list[torch.nn.Module] = []
                frame = frame.f_back
                while frame is not None:
                    try:
                        caller = frame.f_locals.get("self") if frame.f_code.co_name != "<module>" else None
                    except Exception:  # noqa: BLE001 - unreadable locals: not a module's method
                        caller = None
                    if isinstance(caller, torch.nn.Module) and all(caller is not m for m in outside):
                        outside.append(caller)
                    frame = frame.f_back
                return (owner if isinstance(owner, torch.nn.Module) else None), inside, outside
        elif isinstance(f_locals.get("self"), torch.nn.Module):
            inside = f_locals["self"]
        frame = frame.f_back
    return None, None, []


def compiled_module() -> Optional[torch.nn.Module]:
    """The nn.Module that the innermost active torch.compile call compiles: the module of
    torch.compile(m) and m.compile(); for a compiled function, the outermost module it is
    calling (on the stack between the wrapper and the caller), if any. None where no wrapper
    frame is found (NOTE [the compiled module])."""
    owner, inside, _ = _compile_call()
    return owner if owner is not None else inside


def compiled_model_called_alone() -> Optional[torch.nn.Module]:
    """The module that the innermost active torch.compile call compiles (torch.compile(m),
    m.compile()), if no module's method on the stack outside that call holds it: a model
    called by the user's loop, not a block called by its eager parent (a per-block compile).
    None otherwise."""
    owner, _, outside = _compile_call()
    if owner is None:
        return None
    for m in outside:
        if _wraps(m, owner):
            continue  # torch.compile's or DDP's wrapper of the model, or the model itself
        if any(sub is owner for sub in m.modules()):
            return None
    return owner


def _wraps(m: torch.nn.Module, owner: torch.nn.Module) -> bool:
    """Whether `m` is `owner` or wraps it without a module of its own (OptimizedModule, DDP)."""
    while m is not owner:
        inner = getattr(m, "_orig_mod", None)
        if inner is None and type(m).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(m, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return False
        m = inner
    return True


def frame_modules() -> list[torch.nn.Module]:
    """The nn.Modules in the locals of the frame Dynamo is compiling, also one level inside a
    tuple, list or dict (a decorator's `args`, a training step's arguments): where a compiled
    function's weights come from. Empty if the translator cannot be read (see frame_root_module)."""
    try:
        tx = require("torch._dynamo.symbolic_convert", "InstructionTranslator", "").current_tx()
        f_locals = dict(tx.output.root_tx.f_locals) if tx is not None else {}
    except Exception:  # noqa: BLE001 - any change of the private API means "unknown"
        return []
    out: list[torch.nn.Module] = []
    for value in f_locals.values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, torch.nn.Module) and all(item is not m for m in out):
                out.append(item)
    return out


def _source_name(node: torch.fx.Node) -> Optional[str]:
    # Dynamo keeps each placeholder's GraphArg in node.meta["grapharg"] (torch 2.13).
    return getattr(getattr(node.meta.get("grapharg"), "source", None), "name", None)


def placeholder_source_name(node: torch.fx.Node) -> Optional[str]:
    """A Dynamo placeholder's source as a qualified name: L['self']._modules['fc']._parameters['weight'] -> fc.weight."""
    import re

    src = _source_name(node)
    if src is None:
        return None
    parts = re.findall(r"\[['\"]([^'\"]+)['\"]\]|\.([A-Za-z_][A-Za-z_0-9]*)", src)
    drop = {"self", "fn", "_modules", "_parameters", "_buffers", "_orig_mod", "L", "G"}
    return ".".join(n for n in (a or b for a, b in parts) if n not in drop) or None


def is_buffer_placeholder(node: torch.fx.Node) -> bool:
    """Whether a Dynamo placeholder stands for a module buffer (its source goes through _buffers)."""
    return "_buffers" in (_source_name(node) or "")


def mark_added_input(node: torch.fx.Node) -> None:
    """Mark a placeholder that the backend added to Dynamo's graph.

    AOTAutograd maps every Dynamo placeholder to a source; None marks an input that user code
    does not hold, as the DDP optimizer's inputs do (torch 2.13)."""
    node._dynamo_source = None  # type: ignore[attr-defined]


def copy_dynamo_graph_attrs(src: torch.fx.GraphModule, dst: torch.fx.GraphModule, val_map: dict) -> None:
    """Carry over what AOTAutograd reads from a Dynamo graph module to a copy of it: `meta`,
    `_param_name_to_source` and each placeholder's `_dynamo_source` (torch 2.13)."""
    for old, new in val_map.items():
        if hasattr(old, "_dynamo_source"):
            new._dynamo_source = old._dynamo_source
    dst.meta = dict(src.meta)
    if hasattr(src, "_param_name_to_source"):
        dst._param_name_to_source = src._param_name_to_source


# ---- FSDP2 ------------------------------------------------------------------------------

def fsdp2_unsharded_params(root: torch.nn.Module) -> dict[int, torch.nn.Parameter]:
    """{id(sharded Parameter): its unsharded Parameter} for every FSDP2-managed parameter under
    `root` that has been all-gathered at least once.

    Outside the forward, `parameters()` lists only FSDP2's sharded DTensors; the guards need
    to know which unsharded stand-in reached a compiled graph. Reads the private
    `_get_fsdp_state()._fsdp_param_group.fsdp_params` and each FSDPParam's `sharded_param` /
    `_unsharded_param` (torch 2.13); if that moves, this returns nothing and the unseen-weights
    warning can only err towards warning.
    """
    out: dict[int, torch.nn.Parameter] = {}
    try:
        for module in root.modules():
            get_state = getattr(module, "_get_fsdp_state", None)
            group = get_state()._fsdp_param_group if callable(get_state) else None
            for fp in getattr(group, "fsdp_params", None) or ():
                unsharded = getattr(fp, "_unsharded_param", None)
                if unsharded is not None:
                    out[id(fp.sharded_param)] = unsharded
    except Exception:  # noqa: BLE001 - a changed private API means "no FSDP2 stand-ins"
        return {}
    return out


# ---- DTensor (tensor parallelism) ---------------------------------------------------------

def dtensor_local_shape_and_offset(t: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(local shape, global offset) of this rank's shard of DTensor `t`.

    `torch.distributed.tensor._utils.compute_local_shape_and_global_offset` (torch 2.13-2.15):
    the rule DTensor itself uses to cut shards (torch.chunk sizes), so the offsets agree with
    the local tensors it holds. Checked against `t.to_local().shape` here.
    """
    fn = require("torch.distributed.tensor._utils", "compute_local_shape_and_global_offset",
                 "tensor-parallel weights (a shard's place in the full weight)")
    local_shape, offset = fn(t.shape, t.device_mesh, t.placements)
    if tuple(local_shape) != tuple(t.to_local().shape):
        raise CompatError(
            f"pqt_compile: DTensor's shard rule gave local shape {tuple(local_shape)} but the rank holds "
            f"{tuple(t.to_local().shape)} (torch {torch.__version__}); checked on torch {', '.join(TORCH_CHECKED)}"
        )
    return tuple(local_shape), tuple(offset)


def all_reduce_max_ops() -> tuple[Any, Any]:
    """(all_reduce, wait_tensor): the functional collectives a graph holds (torch.ops._c10d_functional,
    the ops DTensor's own graphs use; torch 2.13-2.15). NVFP4's tensor amax of a sharded weight is
    reduced with them (max over the ranks that split it)."""
    ns = getattr(torch.ops, "_c10d_functional", None)
    try:
        return ns.all_reduce.default, ns.wait_tensor.default
    except (AttributeError, RuntimeError) as e:
        raise CompatError(f"pqt_compile: torch.ops._c10d_functional.all_reduce / wait_tensor are missing in torch "
                          f"{torch.__version__} (needed for an nvfp4 tensor-parallel weight's amax); checked on torch "
                          f"{', '.join(TORCH_CHECKED)}") from e


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


def dynamo_counters() -> Any:
    """Dynamo's event counters (counters["graph_break"], torch 2.13)."""
    return require("torch._dynamo.utils", "counters", "explain (graph breaks)")


def dynamo_recompile_limit(limit: int) -> Any:
    """A context in which Dynamo keeps up to `limit` compiled entries per code object (torch
    2.13: torch._dynamo.config.recompile_limit, default 8; past it a frame runs eagerly). For a
    process that compiles one model's forward with many configs, or many copies of one model."""
    config = require("torch._dynamo", "config", "a raised recompile limit")
    return config.patch(recompile_limit=limit, accumulated_recompile_limit=max(256, 64 * limit))


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


# ---- Autograd: where a backward pass begins and ends ---------------------------------------

def current_graph_task_id() -> int:
    """The id of the backward pass the autograd engine is running in this thread, -1 outside
    one (a recompute of activation checkpointing runs inside one). torch._C._current_graph_task_id
    (torch 2.13)."""
    return int(require("torch._C", "_current_graph_task_id", "the seed rule")())


def queue_backward_callback(fn: Callable[[], None]) -> None:
    """Run `fn` when the current backward pass ends (call it from a backward hook).

    `Variable._execution_engine.queue_callback`, as DDP and FSDP use it (torch 2.13)."""
    engine = getattr(torch.autograd.Variable, "_execution_engine", None)
    if engine is None or not hasattr(engine, "queue_callback"):
        raise CompatError(
            f"pqt_compile: the seed rule needs torch.autograd.Variable._execution_engine.queue_callback, which "
            f"torch {torch.__version__} does not have; pqt_compile was checked on torch {', '.join(TORCH_CHECKED)}"
        )
    engine.queue_callback(fn)


# ---- Tracing helpers -----------------------------------------------------------------------

def pytree() -> Any:
    """torch.utils._pytree (tree_flatten / tree_unflatten / tree_leaves; torch 2.13)."""
    require("torch.utils._pytree", "tree_flatten", "the eager reference and explain")
    return importlib.import_module("torch.utils._pytree")


def allow_nested_fx_trace() -> Any:
    """A context in which make_fx may trace a model holding compiled parts (Dynamo runs their
    original code): torch._dynamo.config.patch(error_on_nested_fx_trace=False), torch 2.13."""
    import torch._dynamo

    return torch._dynamo.config.patch(error_on_nested_fx_trace=False)
