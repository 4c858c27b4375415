"""Weight names: the qualified name that keys a weight's noise, one rule for the compiled path,
the reference, export and the guards.

A weight's name is its qualified name in the registered model (the "root"), with wrapper segments
dropped (`canonical_name`: torch.compile's `_orig_mod`, the activation-checkpoint and FSDP1
wrappers'), so a block swapped for its compiled or checkpointed wrapper (torchtitan's per-block
layout) keeps the plain model's name, hence its noise.
A tied weight has its first name; its other names are its aliases (include/exclude match them).

Where names come from, in order:
1. the registry: `register(model)` (explicit: `pqt_compile.register` and `pqt_compile.compile`;
   automatic: the backend registers the model the running torch.compile call compiles, backend.py
   NOTE [names from the compiled model]). A wider root's
   name is never replaced by a narrower one ("h.0.fc.weight" stays when block h.0 registers
   "fc.weight"), so registering the root once is enough, before or after its blocks compile;
2. a search of the registered roots' current parameters, for Parameter objects that a root
   acquired after it registered (`to_empty()` after meta-device init; FSDP2's unsharded
   Parameters, swapped into the modules around each forward: looked up during the forward,
   they get the full weight's name). A search memoises what it found; it never re-registers
   or changes another lookup's answer;
3. for a compiled graph (`GraphWeights`), a weight none of the above names: first the model
   whose compiled call is running is registered, if it holds the weight and is called alone
   (NOTE [a graph reused by another model]); failing that, the name the graph's first call
   gave the slot, with "#n" appended for other Parameter objects arriving in that slot (blocks
   compiled one by one and sharing one graph, without a registered root), else the
   placeholder's Dynamo source.

NOTE [a graph reused by another model]: Dynamo reuses a compiled graph for every module of the
same structure (its guards check the structure, not which object; the weights are inputs). So
a second model of the same class, compiled with torch.compile(..., backend="pqt") in the same
process, runs the first one's graph and never reaches the backend, which registers the model
it compiles. Its weights are registered when the graph first meets them instead: the module
the running torch.compile call compiles (compat.compiled_model_called_alone) is registered if
no module on the stack outside that call holds it. A block compiled on its own and called by
its eager parent is not: its names would be the block's own, the same in every block, so the
"#n" rule keeps such blocks apart (`register(root)` gives them the root's names).

Lookups have no visible side effects (`GraphWeights.resolve` may register a model: NOTE [a graph
reused by another model]); `register` bumps `version()`, which invalidates the
names cached by compiled graphs.
"""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .compat import compiled_model_called_alone, is_buffer_placeholder, placeholder_source_name

__all__ = [
    "WeightName",
    "canonical_name",
    "unwrap",
    "weight_names",
    "named_parameters",
    "parameter_aliases",
    "register",
    "lookup",
    "roots",
    "roots_holding",
    "version",
    "reset",
    "GraphWeights",
    "ResolvedWeights",
]


@dataclass(frozen=True)
class WeightName:
    """A Parameter's name, its other (tied) names, and the module that holds it."""

    name: str
    aliases: tuple[str, ...]
    owner: Optional["weakref.ref[torch.nn.Module]"]



#: Module-name segments that wrappers add and that are not part of the model's own names:
#: torch.compile's OptimizedModule; torch's activation-checkpoint wrapper (`checkpoint_wrapper`,
#: torchtitan's way of checkpointing a block) and FSDP1's wrapper, whose state dicts leave them
#: out too. Dropped, so that wrapping a block changes neither its names nor its noise.
WRAPPER_SEGMENTS = frozenset({"_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"})


def canonical_name(name: str) -> str:
    """A qualified name without wrapper segments (WRAPPER_SEGMENTS: "h.0._orig_mod.fc.weight" and
    "h.0._checkpoint_wrapped_module.fc.weight" -> "h.0.fc.weight")."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_SEGMENTS)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside wrappers that add a name prefix (DDP, DataParallel, torch.compile)."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # OptimizedModule
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def weight_names(model: torch.nn.Module, prefix: str = "") -> dict[int, tuple[torch.nn.Parameter, WeightName]]:
    """{id(p): (p, its WeightName)} for every Parameter of `model` (wrappers looked through)."""
    out: dict[int, tuple[torch.nn.Parameter, WeightName]] = {}
    for mod_name, module in unwrap(model).named_modules(remove_duplicate=False):
        for p_name, p in module.named_parameters(recurse=False):
            full = prefix + canonical_name(f"{mod_name}.{p_name}" if mod_name else p_name)
            if id(p) not in out:
                out[id(p)] = (p, WeightName(full, (), weakref.ref(module)))
            elif full != out[id(p)][1].name and full not in out[id(p)][1].aliases:
                first = out[id(p)][1]
                out[id(p)] = (p, WeightName(first.name, (*first.aliases, full), first.owner))
    return out


def named_parameters(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.nn.Parameter]:
    """{canonical name: Parameter}, a tied weight once under its first name (the keys' names)."""
    return {entry.name: p for p, entry in weight_names(model, prefix).values()}


def parameter_aliases(model: torch.nn.Module) -> dict[str, tuple[str, ...]]:
    """{canonical name: its other names} for tied Parameters (GPT-2: wte.weight -> (lm_head.weight,))."""
    return {entry.name: entry.aliases for _, entry in weight_names(model).values() if entry.aliases}


class _Registry:
    def __init__(self) -> None:
        self.entries: WeakIdKeyDictionary = WeakIdKeyDictionary()  # Parameter -> WeightName
        self.found: WeakIdKeyDictionary = WeakIdKeyDictionary()  # search memo: Parameter -> WeightName
        self.missed: WeakIdKeyDictionary = WeakIdKeyDictionary()  # searched for and not found
        self.roots: list[tuple["weakref.ref[torch.nn.Module]", str]] = []
        self.version = 0


_registry = _Registry()


def register(model: torch.nn.Module, prefix: str = "") -> None:
    """Record the qualified names of `model`'s parameters (wrappers looked through) and search
    it for Parameters it acquires later. A registered wider name is kept (module docstring)."""
    model = unwrap(model)
    for p, new in weight_names(model, prefix).values():
        # Also a Parameter that a wider root acquired after it registered (a block compiled after
        # `to_empty()`: the backend registers the block, whose new Parameters the root holds).
        old = lookup(p)
        if old is not None and old.name != new.name and old.name.endswith("." + new.name):
            _registry.entries[p] = old
            continue
        _registry.entries[p] = new
    _registry.roots = [(r, pre) for r, pre in _registry.roots if r() is not None and r() is not model]
    _registry.roots.append((weakref.ref(model), prefix))
    _registry.found = WeakIdKeyDictionary()
    _registry.missed = WeakIdKeyDictionary()
    _registry.version += 1


def lookup(p: Any) -> Optional[WeightName]:
    """The name of Parameter `p`: registered, or found in a registered root's current
    parameters (memoised until the next `register`); None if neither."""
    if not isinstance(p, torch.nn.Parameter):
        return None
    entry = _registry.entries.get(p) or _registry.found.get(p)
    if entry is not None or p in _registry.missed:
        return entry
    for root, prefix in roots():
        names = weight_names(root, prefix)
        if id(p) in names:
            for q, found in names.values():  # one search names every current Parameter of the root
                if q not in _registry.entries:
                    _registry.found[q] = found
            return _registry.found.get(p) or _registry.entries.get(p)
    _registry.missed[p] = True
    return None


def roots() -> list[tuple[torch.nn.Module, str]]:
    """The live registered models and their name prefixes, the most recently registered last."""
    return [(r(), pre) for r, pre in _registry.roots if r() is not None]  # type: ignore[misc]


def roots_holding(params: Sequence[Any]) -> list[tuple[torch.nn.Module, str]]:
    """The registered models that hold at least one of `params` (by object identity)."""
    ids = {id(p) for p in params}
    return [(root, pre) for root, pre in roots() if any(id(q) in ids for q in root.parameters())]


def version() -> int:
    """Bumped by every `register`: names cached before it may be stale."""
    return _registry.version


def reset() -> None:
    """Forget every registration (tests use it so that one test's models cannot name another's)."""
    global _registry
    _registry = _Registry()


def _register_calling_model(objs: Sequence[Any]) -> bool:
    """Register the model whose compiled call is running, if it holds one of `objs` and is
    called alone (NOTE [a graph reused by another model]); whether it did."""
    model = compiled_model_called_alone()
    if model is None:
        return False
    held = {id(p) for p in model.parameters()}
    if not any(id(o) in held for o in objs):
        return False
    register(model)
    return True


_deref = weakref.ref.__call__  # a weak reference's referent (None when gone), as a function for map


@dataclass(frozen=True, eq=False)  # identity: one object per cached set of weights
class ResolvedWeights:
    """The weights of one call of a compiled graph: names, other names, owning modules.

    Owners are held weakly: a compiled graph outlives the models that called it."""

    names: tuple[str, ...]
    aliases: tuple[tuple[str, ...], ...]
    owner_refs: tuple[Optional["weakref.ref[torch.nn.Module]"], ...]

    def owners(self) -> tuple[Optional[torch.nn.Module], ...]:
        return tuple(r() if r is not None else None for r in self.owner_refs)


class GraphWeights:
    """The Parameter inputs of one Dynamo graph: their positions and names.

    `positions` and `names` are fixed at compile time (the first call's weights); `resolve`
    names the weights of each later call, which may be other Parameter objects of the same
    shapes (per-block compilation shares one graph between same-structured blocks).
    """

    def __init__(self, positions: list[int], names: list[str], objs: list[Any], frame_root: Optional[torch.nn.Module],
                 buffers: dict[int, str]) -> None:
        self.positions = positions
        self.names = names
        self.buffers = buffers  # position -> name of module buffers (never sampled; reported)
        self._first = [weakref.ref(o) for o in objs]
        self._frame_root = weakref.ref(frame_root) if frame_root is not None else None
        self._extra: list[WeakIdKeyDictionary] = [WeakIdKeyDictionary() for _ in positions]
        self._cache: dict[tuple, tuple[list, ResolvedWeights]] = {}
        # This call's weights as a tuple, picked in C (resolve runs at every call of the graph).
        self._pick: Any = (operator.itemgetter(*positions) if len(positions) > 1
                           else (lambda args, p=positions[0]: (args[p],)) if positions else (lambda args: ()))

    @classmethod
    def for_graph(cls, gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                  frame_root: Optional[torch.nn.Module]) -> "GraphWeights":
        """Name the Parameter inputs of Dynamo graph `gm` (call `register(frame_root)` first)."""
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        positions, names, objs, buffers = [], [], [], {}
        for pos, (node, ex) in enumerate(zip(placeholders, example_inputs)):
            if isinstance(ex, torch.nn.Parameter):
                entry = lookup(ex)
                positions.append(pos)
                names.append(entry.name if entry is not None else canonical_name(placeholder_source_name(node) or f"input{pos}"))
                objs.append(ex)
            elif is_buffer_placeholder(node):
                buffers[pos] = placeholder_source_name(node) or f"input{pos}"
        return cls(positions, names, objs, frame_root, buffers)

    @property
    def frame_root(self) -> Optional[torch.nn.Module]:
        """The module whose forward this graph was compiled from (None if unknown)."""
        return self._frame_root() if self._frame_root is not None else None

    def _name_at(self, slot: int, p: Any) -> WeightName:
        entry = lookup(p)
        if entry is not None:
            return entry
        if self._first[slot]() is p:
            return WeightName(self.names[slot], (), None)
        extra = self._extra[slot]
        if p not in extra:
            extra[p] = f"{self.names[slot]}#{len(extra) + 1}"
        return WeightName(extra[p], (), None)

    def resolve(self, args: Sequence[Any]) -> ResolvedWeights:
        """This call's weights, named (cached while the same objects come back)."""
        objs = self._pick(args)
        ids = (*map(id, objs), _registry.version)
        hit = self._cache.get(ids)
        # One entry per set of weights: blocks sharing this graph each hit their own entry. The
        # identity check (ids may be reused by new objects) iterates in C: it runs at every call.
        if hit is not None and all(map(operator.is_, map(_deref, hit[0]), objs)):
            return hit[1]
        if any(lookup(o) is None for o in objs) and _register_calling_model(objs):
            ids = (*ids[:-1], _registry.version)
        entries = [self._name_at(i, o) for i, o in enumerate(objs)]
        resolved = ResolvedWeights(
            tuple(e.name for e in entries),
            tuple(e.aliases for e in entries),
            tuple(e.owner or self._frame_root for e in entries),  # unnamed: the compiled module's
        )
        if len(self._cache) >= 256:  # bounded: Parameters replaced over and over (a rebuilt model)
            self._cache.clear()
        self._cache[ids] = ([weakref.ref(o) for o in objs], resolved)
        return resolved
