"""Dynamo: the module being compiled, its frame's modules, and the placeholders of its graphs."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from typing import Any, Iterator, Optional

import torch

from .registry import require

__all__ = [
    "frame_root_module",
    "placeholder_source_name",
    "is_buffer_placeholder",
    "mark_added_input",
    "copy_dynamo_graph_attrs",
    "compiled_module",
    "compiled_model_called_alone",
    "frame_modules",
    "dynamo_counters",
    "dynamo_recompile_limit",
    "dynamo_runs_eagerly",
    "dynamo_skips_recurrent_modules",
    "module_compile_compiles_nothing",
    "compile_in_place",
    "in_place_compile_suspended",
    "parameters_as_attributes_cause",
]


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
    tuple, list or dict (a decorator's `args`, a training step's arguments), then those among the
    globals its code names (a training step that reaches the model as a module-level `model`):
    where a compiled function's weights come from. Empty if the translator cannot be read (see
    frame_root_module; root_tx.f_locals, f_globals and f_code, torch 2.13-2.15)."""
    try:
        tx = require("torch._dynamo.symbolic_convert", "InstructionTranslator", "").current_tx()
        root = tx.output.root_tx if tx is not None else None
        values = list(dict(root.f_locals).values()) if root is not None else []
        f_globals = getattr(root, "f_globals", None) or {}
        code = getattr(root, "f_code", None)
        values += [f_globals[n] for n in getattr(code, "co_names", ()) if n in f_globals]
    except Exception:  # noqa: BLE001 - any change of the private API means "unknown"
        return []
    out: list[torch.nn.Module] = []
    for value in values:
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


# ---- Dynamo: counters and limits ----------------------------------------------------------
def dynamo_counters() -> Any:
    """Dynamo's event counters (counters["graph_break"], torch 2.13)."""
    return require("torch._dynamo.utils", "counters", "explain (graph breaks)")


def dynamo_recompile_limit(limit: int) -> Any:
    """A context in which Dynamo keeps up to `limit` compiled entries per code object (torch
    2.13: torch._dynamo.config.recompile_limit, default 8; past it a frame runs eagerly). For a
    process that compiles one model's forward with many configs, or many copies of one model."""
    config = require("torch._dynamo", "config", "a raised recompile limit")
    return config.patch(recompile_limit=limit, accumulated_recompile_limit=max(256, 64 * limit))


# ---- Dynamo: settings that run compiled code eagerly or change what a graph receives -------
def dynamo_runs_eagerly() -> Optional[str]:
    """Why Dynamo runs compiled models eagerly right now, in words (a message names it), or None:
    TORCHDYNAMO_DISABLE=1 (torch.compile then returns a no-op wrapper, torch 2.11-2.15),
    torch._dynamo.config.disable (TORCH_COMPILE_DISABLE=1), or a stance set by
    torch.compiler.set_stance that runs frames eagerly (eval_frame._stance, reassigned by each
    set_stance: read at each call)."""
    if os.environ.get("TORCHDYNAMO_DISABLE", "") == "1":
        return "Dynamo is disabled (TORCHDYNAMO_DISABLE=1)"
    if getattr(torch._dynamo.config, "disable", False):
        return "Dynamo is disabled (torch._dynamo.config.disable, TORCH_COMPILE_DISABLE=1)"
    stance = getattr(getattr(sys.modules.get("torch._dynamo.eval_frame"), "_stance", None), "stance", "default")
    if stance in ("force_eager", "eager_on_recompile", "eager_then_compile", "aot_eager_then_compile"):
        return f"torch.compiler.set_stance({stance!r}) is in force"
    return None


def dynamo_skips_recurrent_modules() -> bool:
    """Whether Dynamo refuses to trace torch.nn's RNN, GRU and LSTM modules (nn.RNNBase):
    torch._dynamo.config.allow_rnn is False, its default (torch 2.11-2.15). It runs them eagerly;
    torch 2.13 the whole frame that calls one (the break falls on a call it cannot resume), 2.15
    the module alone (it resumes after it)."""
    return not getattr(torch._dynamo.config, "allow_rnn", False)


def module_compile_compiles_nothing(model: torch.nn.Module) -> bool:
    """Whether `model.compile()` compiles no frame of `model`, so that it runs eagerly: its forward
    is torch.nn's own (nn.Sequential, nn.Linear, nn.TransformerEncoder, a subclass that keeps their
    forward). Module.compile compiles the module's `_call_impl`, and Dynamo skips the frames of
    torch.nn's files, this forward's included: measured on torch 2.11 and 2.13 (0 frames); 2.15
    compiles it (1 frame); 2.14, not checked, is taken as 2.13. `torch.compile(model)` and
    `torch.compile(model.forward)` compile it on every release."""
    release = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    return release < (2, 15) and (getattr(type(model).forward, "__module__", "") or "").startswith("torch.nn.")


def compile_in_place(model: torch.nn.Module, backend: Any, **kwargs: Any) -> None:
    """`model.compile(backend=backend, **kwargs)`, also where that compiles nothing
    (module_compile_compiles_nothing): there a function of this file that calls the module's
    `_call_impl` is compiled (Dynamo traces this frame and inlines torch.nn's forward, as for
    torch.compile(model)) and set as `_compiled_call_impl`, the attribute Module.compile sets and
    nn.Module.__call__ calls (torch 2.11-2.15); deepcopy and pickle drop it, as Module.compile's."""
    if not module_compile_compiles_nothing(model):
        model.compile(backend=backend, **kwargs)
        return
    call_impl = model._call_impl

    def call_module(*args: Any, **call_kwargs: Any) -> Any:
        return call_impl(*args, **call_kwargs)

    model._compiled_call_impl = torch.compile(call_module, backend=backend, **kwargs)


@contextlib.contextmanager
def in_place_compile_suspended(model: torch.nn.Module) -> Iterator[None]:
    """Within it, `model` runs its own forward, not the code that `model.compile()` (or
    compile_in_place) set as its `_compiled_call_impl` (torch 2.11-2.15); restored after."""
    saved = model.__dict__.pop("_compiled_call_impl", None)
    try:
        yield
    finally:
        if saved is not None:
            model._compiled_call_impl = saved


def parameters_as_attributes_cause(grad_enabled: bool) -> str:
    """The setting that made Dynamo hold a graph's Parameters as attributes rather than inputs, and
    its remedy, in words (torch 2.11-2.15): Inductor freezing under no_grad (torch._dynamo.utils
    is_parameter_freezing), prepare_freezing, or inline_inbuilt_nn_modules off (torch <= 2.12)."""
    dynamo_config = torch._dynamo.config
    if getattr(importlib.import_module("torch._inductor.config"), "freezing", False) and not grad_enabled:
        return ("Inductor freezing is on (torch._inductor.config.freezing, TORCHINDUCTOR_FREEZING=1) and grad is off, "
                "so Dynamo folds the weights into the graph as constants; turn freezing off for a pqt compile")
    if getattr(dynamo_config, "prepare_freezing", False):
        return ("torch._dynamo.config.prepare_freezing is on (TORCHDYNAMO_PREPARE_FREEZING=1); turn it off for a pqt "
                "compile")
    with warnings.catch_warnings():  # deprecated, and always True, from torch 2.13
        warnings.simplefilter("ignore", FutureWarning)
        inlined = getattr(dynamo_config, "inline_inbuilt_nn_modules", True)
    if inlined is False:
        return "torch._dynamo.config.inline_inbuilt_nn_modules is False; set it to True (Dynamo's default)"
    return "a Dynamo setting lifted them out of the graph's inputs; undo it for a pqt compile"
