"""Autograd and tracing: where a backward pass begins and ends; pytree and nested traces."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Optional

import torch

from .registry import TORCH_CHECKED, CompatError, require

__all__ = [
    "current_graph_task_id",
    "queue_backward_callback",
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
