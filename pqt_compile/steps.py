"""What a training step is to pqt: the two events that advance the seed stream (NOTE [the seed
rule] in seeds.py), observed with hooks.

* A backward pass through a sampling graph ends: the next forward is a new micro-batch
  (`seeds.advance_micro_batch`). Observed on the autograd node of each sampling call's outputs
  (made outside a backward pass): AOTAutograd's node is watched through its Function's backward
  (compat NOTE [watched backward]: one attribute per call, no hook to register), any other node
  gets a pre-hook (one per node, not per tensor: a Python tensor hook costs several microseconds
  of host time per call). The first backward through one of them in a pass queues one callback
  for the end of that pass. A call made inside a backward pass (the recompute of activation
  checkpointing) is not observed: it belongs to the micro-batch whose backward is running.
* An optimizer steps that updates a weight of a PQT-compiled model (a registered root), after at
  least one such backward pass: the next draw is a new step (`seeds.advance_step`); the guards
  that wait for a whole step run then. An optimizer of a model trained without pqt in the same
  process (a baseline) moves nothing, nor does a step with no backward before it (an
  initialisation, as torch.distributed.checkpoint does), except as the next item says.

* An optimizer step after a sampling call through which no backward pass runs (a graph whose
  inputs are all frozen), when no backward pass ran through a sampling graph since the last step
  and the optimizer's learning rate is not 0: a new step too (NOTE [frozen graphs]), whichever
  optimizer it is. Its micro-batches share a draw (no backward counts them).
* An optimizer step that updates a PQT-compiled model's weights after sampling calls whose
  backward was never seen (NOTE [unseen backward]): a new step too, with a warning (once).

* An optimizer step that updates a PQT-compiled model's weights when PQT graphs ran before this
  optimizer's previous step but none since (NOTE [no graph ran]): the model now runs eagerly, so
  the step trained clean; a warning (once) names why where it can (compat.dynamo_runs_eagerly).

Limits, written down in docs/design.md: a pipeline schedule that runs several forwards before
their backwards gives them one draw; two PQT models trained interleaved in one process share the
counters (each sees every other step). Pin seeds with `fixed_seed` where that matters.
"""

from __future__ import annotations

import collections
import warnings
import weakref
from typing import Any, Optional

import torch

from . import guards, naming, seeds
from .compat import (compiled_autograd_on, current_autograd_node, current_graph_task_id, queue_backward_callback,
                     watch_function_backward)
from .memo import ObjectMemo

__all__ = ["install", "install_hook", "track_backward", "in_backward", "forward_seed", "optimizer_counts", "pending", "set_pending"]


class _Hooks:
    def __init__(self) -> None:
        self.optimizer_hook: Optional[Any] = None
        self.queued_for: int = -1  # the backward pass whose end is already awaited
        self.counts: ObjectMemo[bool] = ObjectMemo()  # per optimizer and naming version: whether it counts
        self.frozen_sampled = False  # a sampling call with no backward through it since the last step
        self.awaiting_backward = False  # a sampling call observed, no backward pass seen since
        self.warned_unseen = False
        self.graph_calls_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> guards.graph_calls()
        self.warned_no_graph = False


_hooks = _Hooks()


#: Compiled autograd runs a compiled graph's backward without its Function's backward or its
#: node's hooks, so the seed rule would not see the pass: every micro-batch and step would draw
#: the same noise. Refused where it is seen (before session 15, a pre-hook traced by compiled
#: autograd failed with its own error).
_COMPILED_AUTOGRAD = (
    "pqt: compiled autograd is on (torch._dynamo.config.compiled_autograd, or "
    "torch._dynamo.compiled_autograd's context). pqt draws fresh noise for each micro-batch and "
    "step by observing each backward pass through its graphs, and compiled autograd runs the "
    "backward without that observation. Train PQT models with compiled autograd off "
    "(torch._dynamo.config.compiled_autograd = False)"
)


def install() -> None:
    """Install the global optimizer step-post hook (once per process, on the first sampling call
    of each compiled graph, which also refuses compiled autograd asked for in Dynamo's config)."""
    if compiled_autograd_on(check_config=True):
        raise RuntimeError(_COMPILED_AUTOGRAD)
    install_hook()


def install_hook() -> None:
    """The global optimizer step-post hook, once per process (also by `pqt_compile.compile`, for
    guards NOTE [compiled over])."""
    if _hooks.optimizer_hook is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        # Host bookkeeping: under a compiled optimizer step (torch.compile(opt.step)) Dynamo would
        # trace it, recompile on its state and warn of its caches; it runs eagerly instead.
        _hooks.optimizer_hook = register_optimizer_step_post_hook(torch.compiler.disable(_after_optimizer_step))


def optimizer_counts(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` updates a weight of a registered (PQT-compiled) model."""
    version = naming.version()
    cached = _hooks.counts.get(optimizer, version)
    if cached is not None:
        return cached
    held = _registered_param_ids()
    counts = any(id(p) in held for group in optimizer.param_groups for p in group["params"])
    _hooks.counts.put(optimizer, version, counts)
    return counts


def _registered_param_ids() -> set[int]:
    """ids of the Parameters of the registered (PQT-compiled) models."""
    return {id(q) for root, _ in naming.roots() for q in root.parameters()}


def _after_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    guards.check_expected(optimizer, _updates)  # O(1) once every pqt_compile.compile'd model reached PQT graphs
    calls = guards.graph_calls()
    before = _hooks.graph_calls_at.get(optimizer)
    _hooks.graph_calls_at[optimizer] = calls
    # A step ends a training step only after a backward pass through sampling graphs: an
    # optimizer stepped with no backward since the last step is not training. Such steps exist:
    # torch.distributed.checkpoint's get_state_dict initialises a stateless optimizer by calling
    # step() with zero gradients and lr 0 (torch 2.13), at every save and load.
    if seeds.micro_batch() > 0 and optimizer_counts(optimizer):
        _hooks.frozen_sampled = _hooks.awaiting_backward = False
        seeds.advance_step()
        guards.after_optimizer_step(optimizer)
    elif _hooks.awaiting_backward and seeds.micro_batch() == 0 and _updates(optimizer) and optimizer_counts(optimizer):
        # NOTE [unseen backward]: sampling calls whose outputs had autograd nodes, then an
        # optimizer step that updates PQT weights, and no backward pass seen between: a backward
        # ran where pqt cannot see it (compiled autograd entered around loss.backward() only,
        # after the sampling calls were made) or none ran. The step still ends, so each step
        # draws afresh (its micro-batches share a draw), and the user is told once.
        _hooks.awaiting_backward = _hooks.frozen_sampled = False
        seeds.advance_step()
        _warn_unseen_backward()
    elif (before == calls and calls and not _hooks.warned_no_graph and _updates(optimizer) and optimizer_counts(optimizer)
          and _steps_pqt_gradients(optimizer)):
        # NOTE [no graph ran]: PQT graphs ran before this optimizer's previous step and none since:
        # the model now runs eagerly (set_stance("force_eager"), Dynamo disabled, its uncompiled
        # module called), so this step trained its weights clean. Per optimizer: a second optimizer
        # stepping after the first in one iteration has seen graphs run since its own last step.
        _hooks.warned_no_graph = True
        _warn_no_graph_ran()
    elif _hooks.frozen_sampled and seeds.micro_batch() == 0 and _updates(optimizer):
        # NOTE [frozen graphs]: a PQT graph whose inputs are all frozen (backend.py NOTE [training
        # graphs]) samples, but no backward pass runs through it; if none ran through any PQT
        # graph either (a frozen backbone compiled with pqt, its head trained without), an
        # optimizer step after its forward still ends the step, so each step draws afresh.
        _hooks.frozen_sampled = False
        seeds.advance_step()


def _steps_pqt_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` holds a gradient for a weight of a PQT-compiled model (a walk over its
    parameters: only asked in NOTE [no graph ran]'s rare case). A model trained on alternate steps
    next to a plain one (one optimizer over both, gradients set to None) has none on the plain
    model's steps: not a step it trained clean."""
    held = _registered_param_ids()
    return any(p.grad is not None and id(p) in held for group in optimizer.param_groups for p in group["params"])


def _updates(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a step of `optimizer` can move a weight: some group has a non-zero learning rate (the
    initialising step torch.distributed.checkpoint makes at a save or load has lr 0)."""
    return any(g.get("lr", 1.0) != 0 for g in optimizer.param_groups)


def pending() -> tuple[bool, bool]:
    """What the next optimizer step will read besides the seed stream: (a sampling call with no
    backward through it is waiting, NOTE [frozen graphs]; a sampling call whose backward was not
    seen is waiting, NOTE [unseen backward]). With `set_pending`, for a tool that must leave the
    stream as it was."""
    return _hooks.frozen_sampled, _hooks.awaiting_backward


def set_pending(state: tuple[bool, bool]) -> None:
    _hooks.frozen_sampled, _hooks.awaiting_backward = state


def _warn_unseen_backward() -> None:
    if not _hooks.warned_unseen:
        _hooks.warned_unseen = True
        warnings.warn(
            "pqt: an optimizer step updated PQT-compiled weights after PQT graphs sampled, but no backward "
            "pass through them was seen since the last step (NOTE [unseen backward] in pqt_compile/steps.py): "
            "micro-batches of a step are not told apart, each step still draws afresh. If the backward ran "
            "under compiled autograd entered around loss.backward() only, turn compiled autograd off for PQT "
            "training (torch._dynamo.config.compiled_autograd = False); if no backward ran, that step trained "
            "nothing through the sampled graphs",
            stacklevel=3,
        )


def _warn_no_graph_ran() -> None:
    warnings.warn(
        "pqt: an optimizer step updated weights of a PQT-compiled model, but no PQT-compiled graph ran since this "
        "optimizer's previous step: those weights trained without noise. "
        + (guards.eager_cause() or "Dynamo ran the model eagerly (its recompile limit reached: "
           "torch._dynamo.config.recompile_limit, 8 compiled entries per code object, which a new input shape at "
           "each step exhausts under dynamic=False; torch.compiler.set_stance('force_eager'); Dynamo disabled), or the "
           "model was called around its compiled wrapper (model._orig_mod, a copy of an in-place compiled model); "
           "call the compiled model, and let shapes be dynamic or raise the limit.") + " Said once.",
        stacklevel=3,
    )


def _end_of_backward() -> None:
    _hooks.awaiting_backward = False
    seeds.advance_micro_batch()


def _backward_runs() -> None:
    # One callback per backward pass, however many graphs it runs through. Keyed by the pass's
    # id rather than a flag, so a backward pass that raised (its callback never ran) cannot
    # stop the next one from being counted.
    task = current_graph_task_id()
    if task != _hooks.queued_for:
        _hooks.queued_for = task
        queue_backward_callback(_end_of_backward)


def _on_backward_through(grad_outputs: Any) -> None:
    _backward_runs()  # the pre-hook form, for nodes that cannot be watched


def track_backward(outputs: Any, seed: int) -> None:
    """Count the backward pass through `outputs` (a sampling call's results) when it ends, and keep
    `seed` (the stream's seed of the call, before any per-rank mixing) on their autograd node for a
    recompute (NOTE [recompute seed]). Precondition: called outside a backward pass (`in_backward`,
    which the caller reads once per call): a call inside one is a recompute, of a micro-batch whose
    backward is already counted."""
    if not torch.is_grad_enabled():
        return
    if compiled_autograd_on():  # its context, entered around the step (a cheap check per call)
        raise RuntimeError(_COMPILED_AUTOGRAD)
    observed = None
    for t in outputs if isinstance(outputs, (list, tuple)) else (outputs,):
        node = t.grad_fn if isinstance(t, torch.Tensor) else None
        # The outputs of one compiled graph mostly share one node: observe each node once.
        if node is not None and node is not observed:
            if watch_function_backward(node, _backward_runs):
                setattr(node, _SEED_ATTR, seed)  # a Python Function's node: an attribute, 0.1 us
            else:
                node.register_prehook(_on_backward_through)
                node.metadata[_SEED_ATTR] = seed
            observed = node
    if observed is None:
        _hooks.frozen_sampled = True  # no backward will run through it (NOTE [frozen graphs])
    else:
        _hooks.awaiting_backward = True  # NOTE [unseen backward]


#: NOTE [recompute seed]: activation checkpointing around a block compiled alone calls its PQT graph
#: again inside the backward pass; that recompute must draw what its forward drew. The stream may
#: have moved since (a second backward through a retained graph runs after the first counted its
#: micro-batch; a forward under `fixed_seed` whose backward runs after the block), so the seed is
#: not asked of the stream but found where the forward left it: on the autograd node of each
#: sampling call's outputs (`track_backward`). The recompute starts from the node whose saved
#: tensors the engine is unpacking, a node of that forward, and walks towards its inputs to the
#: nearest node that holds a seed; every sampling call of one forward has the same stream seed
#: (kept before per-rank mixing, which each graph's config applies again). Calls outside a
#: backward pass never walk.
_SEED_ATTR = "_pqt_forward_seed"
_SEED_SEARCH_LIMIT = 100_000  # nodes visited at most (a forward's graph is far smaller between two PQT graphs)


def in_backward() -> bool:
    """Whether this thread runs inside a backward pass (a recompute of activation checkpointing)."""
    return current_graph_task_id() != -1


def forward_seed() -> Optional[int]:
    """Inside a backward pass: the seed of the forward whose graph it runs, from the nearest
    sampling call's node (NOTE [recompute seed]); None if none is found."""
    start = current_autograd_node()
    queue, seen = collections.deque([start] if start is not None else []), {id(start)}
    while queue and len(seen) < _SEED_SEARCH_LIMIT:
        node = queue.popleft()
        seed = getattr(node, _SEED_ATTR, None)
        if seed is None and not hasattr(node, "_forward_cls"):  # a C++ node keeps it in its metadata
            seed = node.metadata.get(_SEED_ATTR)
        if seed is not None:
            return seed
        for nxt, _ in node.next_functions:
            if nxt is not None and id(nxt) not in seen:
                seen.add(id(nxt))
                queue.append(nxt)
    return None


def reset() -> None:
    """Forget the per-optimizer decisions and a pending callback (for tests); the hook stays."""
    _hooks.queued_for = -1
    _hooks.counts = ObjectMemo()
    _hooks.frozen_sampled = _hooks.awaiting_backward = _hooks.warned_unseen = _hooks.warned_no_graph = False
    _hooks.graph_calls_at = weakref.WeakKeyDictionary()
