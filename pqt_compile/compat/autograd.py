"""Autograd and tracing: where a backward pass begins and ends; pytree and nested traces."""

from __future__ import annotations

import functools
import importlib
import sys
import weakref
from typing import Any, Callable, Optional

import torch

from .registry import TORCH_CHECKED, CompatError, require

__all__ = [
    "current_graph_task_id",
    "current_autograd_node",
    "queue_backward_callback",
    "watch_function_backward",
    "compiled_autograd_on",
    "reentrant_checkpoint_forward",
    "pytree",
    "allow_nested_fx_trace",
]


# ---- Autograd: where a backward pass begins and ends ---------------------------------------

def current_graph_task_id() -> int:
    """The id of the backward pass the autograd engine is running in this thread, -1 outside
    one (a recompute of activation checkpointing runs inside one). torch._C._current_graph_task_id
    (torch 2.13)."""
    return int(require("torch._C", "_current_graph_task_id", "the seed rule")())


def current_autograd_node() -> Optional[Any]:
    """The autograd node the engine is running in this thread (None outside a backward pass); for
    a Python Function's node, the node object its forward returned as `grad_fn` (so attributes set
    on it then are there). torch._C._current_autograd_node (torch 2.11-2.15)."""
    return require("torch._C", "_current_autograd_node", "the seed rule (a recompute draws its forward's seed)")()


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


#: Set on the node class of an autograd.Function once it is looked at: whether its backward is wrapped.
_WATCHED = "_pqt_backward_watched"
#: Set on one node (one call of the Function): what its wrapped backward calls first.
_ON_BACKWARD = "_pqt_on_backward"
#: Node types found unwatchable (C++ nodes, Functions with vjp); weak: a Function class may be made per compile.
_UNWATCHABLE: "weakref.WeakSet[type]" = weakref.WeakSet()
#: Marks the wrapper, so that a Function subclass inheriting a wrapped backward is not wrapped again.
_WRAPPER = "_pqt_backward_wrapper"


def watch_function_backward(node: Any, on_backward: Callable[[], None]) -> bool:
    """Call `on_backward()` when a backward pass runs `node`, the autograd node of one call of a
    Python `torch.autograd.Function` (AOTAutograd's CompiledFunctionBackward); False, with nothing
    done, for any other node (the caller hooks that one another way).

    NOTE [watched backward]: an autograd pre-hook does the same, but registering one on
    AOTAutograd's node costs about 4.5 us of host time per call (a hooks dict and a
    RemovableHandle, built in Python), at every call of a sampling graph. Instead the Function
    class's `backward` is wrapped once, on the first node of the class seen; each call then sets
    one attribute on its node, and the wrapper calls `on_backward` for the nodes that have it
    before running the original backward (CUDA-graph replays included: they run inside it). The
    autograd engine runs a Python Function's node through `BackwardCFunction.apply`, which looks
    up `type(node)._forward_cls.backward` at every run (torch 2.11-2.15), so a class wrapped
    after some of its nodes were made still reaches them. A class with `vjp` instead of `backward`
    is not wrapped; a subclass inheriting a wrapped `backward` is not wrapped again. Compiled
    autograd runs neither the wrapper nor a pre-hook's Python (it inlines AOTAutograd's backward
    graph): the seed rule refuses it (`compiled_autograd_on`, steps.py)."""
    node_type = type(node)
    watched = node_type.__dict__.get(_WATCHED)
    if watched is None:
        if node_type in _UNWATCHABLE:
            return False
        watched = _wrap_backward(node_type)
    if watched:
        setattr(node, _ON_BACKWARD, on_backward)
    return watched


def _wrap_backward(node_type: type) -> bool:
    backward_node = require("torch.autograd.function", "BackwardCFunction", "the seed rule (watching a backward)")
    function = getattr(node_type, "_forward_cls", None)
    base = torch.autograd.Function
    watchable = (issubclass(node_type, backward_node) and isinstance(function, type) and issubclass(function, base)
                 and function.vjp is base.vjp and function.backward is not base.backward)
    if watchable and getattr(function.backward, _WRAPPER, False):  # inherited from a watched class
        setattr(node_type, _WATCHED, True)
        return True
    if watchable:
        original = function.backward

        @functools.wraps(original)
        def backward(ctx: Any, *grads: Any) -> Any:
            on_backward = getattr(ctx, _ON_BACKWARD, None)
            if on_backward is not None:
                on_backward()
            return original(ctx, *grads)

        setattr(backward, _WRAPPER, True)
        function.backward = staticmethod(backward)
        setattr(node_type, _WATCHED, True)  # a Python class, made per Function: it carries its verdict
    else:
        _UNWATCHABLE.add(node_type)  # C++ node types are immutable, and few
    return watchable


def compiled_autograd_on(check_config: bool = False) -> bool:
    """Whether a backward pass may run under compiled autograd, which runs a compiled graph's
    backward without its Function's `backward` or its node's hooks (it inlines AOTAutograd's
    backward graph): inside `torch._dynamo.compiled_autograd`'s context (its module global
    `compiled_autograd_enabled`, a cheap read) or, with `check_config`, asked for by
    `torch._dynamo.config.compiled_autograd` (about 2 us to read). torch 2.11-2.15."""
    module = sys.modules.get("torch._dynamo.compiled_autograd")
    if module is not None and getattr(module, "compiled_autograd_enabled", False):
        return True
    dynamo = sys.modules.get("torch._dynamo") if check_config else None
    return dynamo is not None and bool(getattr(dynamo.config, "compiled_autograd", False))


def reentrant_checkpoint_forward() -> Optional[bool]:
    """Whether the caller runs inside the forward of torch.utils.checkpoint(use_reentrant=True)
    (`CheckpointFunction.forward`, which runs the function under no_grad): None outside one; True
    if an input of the checkpoint requires grad, so that its backward will run the function again,
    with grad; False if none does (an outer no_grad, or a frozen stem before it: nothing will be
    recomputed). Found by its code object on the call stack and its `args` (torch 2.13-2.15; True
    where those are not found); a few microseconds, so for calls off the training path only."""
    code = require("torch.utils.checkpoint", "CheckpointFunction",
                   "refusing a PQT graph called in a reentrant checkpoint's no_grad forward").forward.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            args = frame.f_locals.get("args")
            if not isinstance(args, tuple):
                return True
            return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        frame = frame.f_back
    return None


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
