"""PQTCompiled: the run-time half of the backend. Each call of a PQT graph gets its seed and keys.

Per call:
1. name this call's weights (`naming.GraphWeights.resolve`: cached per set of Parameter objects);
2. decide, per weight, whether it is sampled this call: admitted by include/exclude
   (`selection.admits`), and its module in training mode (or `sample_in_eval`). A weight that is
   not gets `graph_abi.DISABLED_KEY`, and the graph passes it through clean: eval mode with grad
   enabled and a block that shares the graph but is excluded need no graph of their own;
3. append the seed of the current step and micro-batch (`seeds.current_seed`) and the keys
   (graph_abi.py: one 0-d input per weight that some config could sample);
4. after a sampling call, count its backward pass (`steps.track_backward`) and feed the guards.

NOTE [shared graphs]: Dynamo shares one compiled graph between modules of the same structure
(per-block compilation), so a graph's weights may be other Parameter objects at each call. The
pass decided at compile time which weights it samples, from the names of the first call's
weights. A later call that admits a weight the graph does not sample (e.g. `include=["^1\\."]`:
block 0 compiled first, with nothing admitted) gets a variant graph, compiled on first use from
the same Dynamo graph (`GraphCompiler`); a later call that excludes a weight the graph samples
only switches it off through its key.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable, Optional, Protocol, Sequence

import torch

from .. import guards, steps
from ..compat import reentrant_checkpoint_forward
from ..config import PQTConfig
from ..naming import GraphWeights, ResolvedWeights
from ..seeds import current_seed, key_for_name, rank_seed
from ..selection import admits
from . import graph_abi

__all__ = ["PQTCompiled", "GraphCompilerProtocol"]


class GraphCompilerProtocol(Protocol):
    """What the wrapper needs of the backend: compile the graph for these weight names."""

    key_slots: tuple[int, ...]  # the slots of the graph's weights that get a key input (graph_abi.key_slots)

    def compile(self, resolved: ResolvedWeights, example_inputs: list) -> Callable: ...


def _rank() -> Optional[int]:
    """This process's rank in the default process group (None when there is none)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None


def _switched_on(owner: Optional[weakref.ref]) -> bool:
    """Whether a weight owned by `owner` samples in a training-graph call: its module is in
    training mode (an unowned weight, or one whose module is gone: the compiled module's mode,
    decided at compile time)."""
    return owner is None or (o := owner()) is None or o.training


class _CallPlan:
    """What a call decides once per set of weights (a `ResolvedWeights`, itself cached by the
    naming): the graph that samples the slots include/exclude admit, the modules owning the
    admitted slots (each once: a weight and its bias share one) with the keyed slots each
    switches (graph_abi.key_slots: the only ones a graph can sample), and the keys tensors per
    switch pattern."""

    __slots__ = ("resolved", "fn", "keyed_admitted", "any_admitted", "owners", "keys", "shown", "watched")

    def __init__(self, resolved: ResolvedWeights, admitted: tuple[bool, ...], fn: Callable,
                 key_slots: tuple[int, ...]) -> None:
        self.resolved = weakref.ref(resolved)
        self.fn = fn
        self.keyed_admitted = tuple(admitted[s] for s in key_slots)
        self.any_admitted = True in admitted
        keyed_index = {s: i for i, s in enumerate(key_slots)}
        owners: dict[int, tuple[Optional[weakref.ref], list[int]]] = {}
        for s, a in enumerate(admitted):
            if a:
                ref = resolved.owner_refs[s]
                slots = owners.setdefault(id(ref() if ref is not None else None), (ref, []))[1]
                if s in keyed_index:
                    slots.append(keyed_index[s])
        self.owners = tuple((ref, tuple(slots)) for ref, slots in owners.values())
        self.keys: dict[tuple[bool, ...], tuple[torch.Tensor, ...]] = {}
        self.shown = False  # the guards saw these weights
        self.watched = False  # ... after a sampling call

    def switches(self) -> tuple[tuple[bool, ...], bool]:
        """(per keyed slot, whether it is sampled in this call; whether any admitted weight is
        switched on: a call with only an unkeyed one on, a norm's weight, still counts as sampling
        for the backward pass and the guards). Each owner's `training` flag is read once."""
        on_owners = [_switched_on(ref) for ref, _ in self.owners]
        if all(on_owners):
            return self.keyed_admitted, self.any_admitted  # the usual case: every owner training
        on = [False] * len(self.keyed_admitted)
        for (_, slots), owner_on in zip(self.owners, on_owners):
            if owner_on:
                for i in slots:
                    on[i] = True
        return tuple(on), True in on_owners


#: NOTE [reentrant checkpoint]: torch.utils.checkpoint(use_reentrant=True) runs its function's
#: forward under no_grad and again, with grad, in the backward. A PQT-compiled module inside it
#: (compiled per block under an eager checkpoint) would train on clean weights in the forward and
#: on sampled ones in the recompute, and its backward pass would never be counted (the seed would
#: stay put): refused. The non-reentrant checkpoint, and a model compiled whole (Dynamo traces the
#: checkpoint), sample the forward and recompute it with the same draw.
_REENTRANT_CHECKPOINT = (
    "pqt: a PQT-compiled module in training mode was called inside torch.utils.checkpoint(use_reentrant=True), "
    "whose forward runs under no_grad: its forward would see clean weights and its recompute sampled ones. Use "
    "use_reentrant=False (transformers: model.gradient_checkpointing_enable(gradient_checkpointing_kwargs="
    "{'use_reentrant': False})), or compile the whole model (pqt_compile.compile(model))"
)
_REENTRANT_CHECKPOINT_CLEAN = (
    "pqt: a PQT-compiled module in training mode ran clean inside torch.utils.checkpoint(use_reentrant=True) "
    "under no_grad, with no input that requires grad (nothing will be recomputed: an evaluation in train mode, "
    "or a frozen stem before it). If this is training, its weights are not sampled: use use_reentrant=False, "
    "or compile the whole model"
)


class PQTCompiled:
    """Calls a compiled PQT graph with this call's pqt_seed and pqt_keys appended to its inputs.

    Dynamo calls a backend's result with positional arguments; so does compile_fx's result
    (torch 2.13: its `_boxed_call` attribute is copied from the inner function and does not
    describe its own convention).

    NOTE [host time per call]: a call runs once per graph per step, and a GPU step is host-bound
    when its kernels are small; so everything that depends only on the set of weights is decided
    once (`_CallPlan`), the seed's tensor is made once per micro-batch and device
    (graph_abi.SeedTensors) and the keys once per switch pattern. What remains per call: naming
    lookup (a dict hit, its identity check iterating in C), the training flag of each module that
    owns a keyed weight (once per module, not per Parameter: a bias is never keyed), the seed of
    the current step (seeds.current_seed, memoised), and marking the graph's autograd node so that
    its backward pass is counted and a recompute finds its seed (no hook registered: compat NOTE
    [watched backward]; steps.py NOTE [recompute seed]). No
    host-device synchronisation. `pqt_compile.compile`'s nothing-sampled hooks leave after the
    first training call (guards.warn_if_nothing_sampled). Past the wrapper, the
    added inputs cost no size check in the generated code (compat NOTE [0-d input asserts]) and
    no detach where AOTAutograd saves them (graph_abi NOTE [keys are not views]).
    """

    def __init__(self, fn: Callable, compiler: GraphCompilerProtocol, weights: GraphWeights, first: ResolvedWeights,
                 config: PQTConfig, device: torch.device, samples: bool) -> None:
        """fn: the graph compiled for `first` (its first call's weights); samples: whether the
        graph samples at all (a training compile, or `sample_in_eval`)."""
        self.fn = fn
        self.weights = weights
        self.config = config
        self.device = device
        self.samples = samples
        self._compiler = compiler
        self._compiled_for = self._admitted(first)  # which slots the pass samples in `fn`
        self._variants: dict[tuple[bool, ...], Callable] = {}
        self._plans: dict[int, _CallPlan] = {}
        self._seeds = graph_abi.SeedTensors(device)

    def _admitted(self, resolved: ResolvedWeights) -> tuple[bool, ...]:
        return tuple(admits(self.config, n, a) for n, a in zip(resolved.names, resolved.aliases))

    def _graph_for(self, admitted: tuple[bool, ...], resolved: ResolvedWeights, args: Sequence[Any]) -> Callable:
        """The compiled graph that samples every admitted weight of this call (NOTE [shared graphs])."""
        if not any(a and not c for a, c in zip(admitted, self._compiled_for)):
            return self.fn
        if admitted not in self._variants:
            example = graph_abi.example_inputs(args, len(self._compiler.key_slots), self.device)
            self._variants[admitted] = self._compiler.compile(resolved, example)
        return self._variants[admitted]

    def _plan_for(self, resolved: ResolvedWeights, args: Sequence[Any]) -> _CallPlan:
        plan = self._plans.get(id(resolved))
        if plan is not None and plan.resolved() is resolved:
            return plan
        if len(self._plans) >= 256:  # bounded: names that change without end (rebuilt models)
            self._plans.clear()
        admitted = self._admitted(resolved)
        plan = _CallPlan(resolved, admitted, self._graph_for(admitted, resolved, args), self._compiler.key_slots)
        self._plans[id(resolved)] = plan
        return plan

    def _keys_for(self, plan: _CallPlan, resolved: ResolvedWeights, enabled: tuple[bool, ...]) -> tuple[torch.Tensor, ...]:
        """The key inputs for the keyed slots switched on in `enabled` (the others DISABLED_KEY)."""
        keys = plan.keys.get(enabled)
        if keys is None:
            names = resolved.names
            keys = graph_abi.key_tensors(
                [key_for_name(names[s]) if on else graph_abi.DISABLED_KEY for s, on in zip(self._compiler.key_slots, enabled)],
                self.device,
            )
            plan.keys[enabled] = keys
        return keys

    def __call__(self, *args: Any) -> Any:
        resolved = self.weights.resolve(args)
        plan = self._plan_for(resolved, args)
        if not self.samples:
            enabled, sampling = (False,) * len(plan.keyed_admitted), False
            if not torch.is_grad_enabled() and plan.switches()[1]:
                recomputed = reentrant_checkpoint_forward()
                if recomputed:
                    raise RuntimeError(_REENTRANT_CHECKPOINT)
                if recomputed is not None:  # nothing will be recomputed: clean, said once per call site
                    warnings.warn(_REENTRANT_CHECKPOINT_CLEAN, stacklevel=2)
        elif self.config.sample_in_eval:
            enabled, sampling = plan.keyed_admitted, plan.any_admitted
        else:  # each slot by its own module's training flag (eval mode: clean, same graph)
            enabled, sampling = plan.switches()
        guards.note_graph_call()
        params = None
        if not plan.shown:
            plan.shown = True
            params = [args[pos] for pos in self.weights.positions]
            guards.mark_seen(params, resolved.names)
        if sampling:
            # A recompute (inside a backward pass) draws its forward's seed: steps.py NOTE [recompute seed].
            recompute = steps.in_backward()
            stream_seed = steps.forward_seed() if recompute else None
            if stream_seed is None:
                stream_seed = current_seed()
            seed = stream_seed
            if self.config.per_rank_noise:
                rank = _rank()
                if rank is not None:  # without a process group, one process: the plain seed
                    seed = rank_seed(seed, rank)
            if not plan.watched:
                steps.install()  # refuses compiled autograd: then asked again at the next call
                plan.watched = True
                guards.watch(self.config, params or [args[pos] for pos in self.weights.positions])
            out = plan.fn(*args, self._seeds.tensor(seed), *self._keys_for(plan, resolved, enabled))
            if not recompute:
                steps.track_backward(out, stream_seed)
            return out
        return plan.fn(*args, self._seeds.tensor(0), *self._keys_for(plan, resolved, enabled))
