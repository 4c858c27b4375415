"""PQTCompiled: the run-time half of the backend. Each call of a PQT graph gets its seed and keys.

Per call:
1. name this call's weights (`naming.GraphWeights.resolve`: cached per set of Parameter objects);
2. decide, per weight, whether it is sampled this call: admitted by include/exclude
   (`selection.admits`), and its module in training mode (or `sample_in_eval`). A weight that is
   not gets `graph_abi.DISABLED_KEY`, and the graph passes it through clean: eval mode with grad
   enabled and a block that shares the graph but is excluded need no graph of their own;
3. append the seed of the current step and micro-batch (`seeds.current_seed`) and the keys;
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

import weakref
from typing import Any, Callable, Optional, Protocol, Sequence

import torch

from .. import guards, steps
from ..config import PQTConfig
from ..naming import GraphWeights, ResolvedWeights
from ..seeds import current_seed, key_for_name, rank_seed
from ..selection import admits
from . import graph_abi

__all__ = ["PQTCompiled", "GraphCompilerProtocol"]


class GraphCompilerProtocol(Protocol):
    """What the wrapper needs of the backend: compile the graph for these weight names."""

    def compile(self, resolved: ResolvedWeights, example_inputs: list) -> Callable: ...


def _rank() -> Optional[int]:
    """This process's rank in the default process group (None when there is none)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None


class PQTCompiled:
    """Calls a compiled PQT graph with this call's pqt_seed and pqt_keys appended to its inputs.

    Dynamo calls a backend's result with positional arguments; so does compile_fx's result
    (torch 2.13: its `_boxed_call` attribute is copied from the inner function and does not
    describe its own convention).
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
        self._keys: dict[tuple, torch.Tensor] = {}
        self._seen: "weakref.WeakSet[ResolvedWeights]" = weakref.WeakSet()  # weight sets shown to the guards
        self._watched: "weakref.WeakSet[ResolvedWeights]" = weakref.WeakSet()  # ... after a sampling call

    def _admitted(self, resolved: ResolvedWeights) -> tuple[bool, ...]:
        return tuple(admits(self.config, n, a) for n, a in zip(resolved.names, resolved.aliases))

    def _graph_for(self, admitted: tuple[bool, ...], resolved: ResolvedWeights, args: Sequence[Any]) -> Callable:
        """The compiled graph that samples every admitted weight of this call (NOTE [shared graphs])."""
        if not any(a and not c for a, c in zip(admitted, self._compiled_for)):
            return self.fn
        if admitted not in self._variants:
            example = graph_abi.example_inputs(args, len(self.weights.positions), self.device)
            self._variants[admitted] = self._compiler.compile(resolved, example)
        return self._variants[admitted]

    def _keys_for(self, resolved: ResolvedWeights, enabled: tuple[bool, ...]) -> torch.Tensor:
        cache_key = (resolved.names, enabled)
        keys = self._keys.get(cache_key)
        if keys is None:
            if len(self._keys) >= 256:  # bounded: names that change without end (rebuilt models)
                self._keys.clear()
            keys = graph_abi.keys_tensor(
                [key_for_name(n) if on else graph_abi.DISABLED_KEY for n, on in zip(resolved.names, enabled)], self.device
            )
            self._keys[cache_key] = keys
        return keys

    def __call__(self, *args: Any) -> Any:
        resolved = self.weights.resolve(args)
        admitted = self._admitted(resolved)
        fn = self._graph_for(admitted, resolved, args)
        in_eval = not self.config.sample_in_eval
        enabled = tuple(
            a and self.samples and not (in_eval and owner is not None and not owner.training)
            for a, owner in zip(admitted, resolved.owners())
        )
        guards.note_graph_call()
        sampling = any(enabled)
        if resolved not in self._seen:
            self._seen.add(resolved)
            guards.mark_seen([args[pos] for pos in self.weights.positions], resolved.names)
        seed = 0
        if sampling:
            seed = current_seed()
            rank = _rank() if self.config.per_rank_noise else None
            if rank is not None:  # without a process group, one process: the plain seed
                seed = rank_seed(seed, rank)
            steps.install()
            if resolved not in self._watched:
                self._watched.add(resolved)
                guards.watch(self.config, [args[pos] for pos in self.weights.positions])
        out = fn(*args, graph_abi.seed_tensor(seed, self.device), self._keys_for(resolved, enabled))
        if sampling:
            steps.track_backward(out)
        return out
