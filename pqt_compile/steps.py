"""What a training step is to pqt: the two events that advance the seed stream (NOTE [the seed
rule] in seeds.py), observed with hooks.

* A backward pass through a sampling graph ends: the next forward is a new micro-batch
  (`seeds.advance_micro_batch`). Observed with a gradient hook on the outputs of each sampling
  call made outside a backward pass; the hook queues one callback for the end of that backward
  pass. A call made inside a backward pass (the recompute of activation checkpointing) adds no
  hook: it belongs to the micro-batch whose backward is running.
* An optimizer steps that updates a weight of a PQT-compiled model (a registered root), after at
  least one such backward pass: the next draw is a new step (`seeds.advance_step`); the guards
  that wait for a whole step run then. An optimizer of a model trained without pqt in the same
  process (a baseline) moves nothing, nor does a step with no backward before it (an
  initialisation, as torch.distributed.checkpoint does).

Limits, written down in docs/design.md: a pipeline schedule that runs several forwards before
their backwards gives them one draw; two PQT models trained interleaved in one process share the
counters (each sees every other step). Pin seeds with `fixed_seed` where that matters.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import guards, naming, seeds
from .compat import current_graph_task_id, queue_backward_callback

__all__ = ["install", "track_backward", "optimizer_counts"]


class _Hooks:
    def __init__(self) -> None:
        self.optimizer_hook: Optional[Any] = None
        self.queued_for: int = -1  # the backward pass whose end is already awaited
        self.counts: WeakIdKeyDictionary = WeakIdKeyDictionary()  # optimizer -> (naming version, counts)


_hooks = _Hooks()


def install() -> None:
    """Install the global optimizer step-post hook (once per process, on the first sampling call)."""
    if _hooks.optimizer_hook is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _hooks.optimizer_hook = register_optimizer_step_post_hook(_after_optimizer_step)


def optimizer_counts(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` updates a weight of a registered (PQT-compiled) model."""
    cached = _hooks.counts.get(optimizer)
    if cached is not None and cached[0] == naming.version():
        return cached[1]
    held = {id(q) for root, _ in naming.roots() for q in root.parameters()}
    counts = any(id(p) in held for group in optimizer.param_groups for p in group["params"])
    _hooks.counts[optimizer] = (naming.version(), counts)
    return counts


def _after_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    # A step ends a training step only after a backward pass through sampling graphs: an
    # optimizer stepped with no backward since the last step is not training. Such steps exist:
    # torch.distributed.checkpoint's get_state_dict initialises a stateless optimizer by calling
    # step() with zero gradients and lr 0 (torch 2.13), at every save and load.
    if optimizer_counts(optimizer) and seeds.seed_state()["micro_batch"] > 0:
        seeds.advance_step()
        guards.after_optimizer_step(optimizer)


def _end_of_backward() -> None:
    seeds.advance_micro_batch()


def _on_output_grad(grad: torch.Tensor) -> None:
    # One callback per backward pass, however many graphs it runs through. Keyed by the pass's
    # id rather than a flag, so a backward pass that raised (its callback never ran) cannot
    # stop the next one from being counted.
    task = current_graph_task_id()
    if task != _hooks.queued_for:
        _hooks.queued_for = task
        queue_backward_callback(_end_of_backward)


def track_backward(outputs: Any) -> None:
    """Count the backward pass through `outputs` (a sampling call's results) when it ends."""
    if not torch.is_grad_enabled() or current_graph_task_id() != -1:
        return
    for t in outputs if isinstance(outputs, (list, tuple)) else (outputs,):
        if isinstance(t, torch.Tensor) and t.requires_grad and t.grad_fn is not None:
            t.register_hook(_on_output_grad)


def reset() -> None:
    """Forget the per-optimizer decisions and a pending callback (for tests); the hook stays."""
    _hooks.queued_for = -1
    _hooks.counts = WeakIdKeyDictionary()
