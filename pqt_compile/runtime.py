"""What a compiled PQT graph needs at run time: its seed, its keys, and the eval switch.

Keys. A key is `key_for_name(qualified name)`. Names come, in order of preference, from
`register(model)` (called by `pqt_compile.compile`), from the compiled frame's own module
(`named_parameters()`, so a tied weight has its first name, as in the reference), or from the
placeholder's Dynamo source. Keys are a runtime input because Dynamo shares one compiled graph
between modules of the same structure (per-block compilation): a later block's weights arrive
as other Parameter objects in the same graph. Such an unregistered weight is named
"<name in the first block>#<n>" (n = 1, 2, ... in order of first use). A block that gets a
graph of its own is named relative to itself, like the first block: a warning then asks for
`register(root)`, which also gives the names that `reference.run(root, ...)` uses.

Eval. Dynamo recompiles for no_grad / inference_mode (a grad-mode guard) and the pass leaves
inference graphs clean; but `model.eval()` with grad enabled reuses the training graph when
the forward never reads `self.training`. So each call checks the compiled module's training
flag and, in eval, runs a graph compiled without sampling (compiled on first use).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import coverage
from .compat import frame_root_module, placeholder_source_name
from .config import PQTConfig
from .seeds import key_for_name, next_seed, rank_seed

__all__ = ["register", "registered_name", "canonical_name", "unwrap", "ParamNames", "PQTCompiled"]

_REGISTRY: WeakIdKeyDictionary = WeakIdKeyDictionary()  # Parameter -> (name, other names)
SAMPLED_CALLS = [0]  # training calls of PQT-compiled graphs in this process (for the no-op guard)
_COMPILED_NAMES: dict[str, "weakref.ref"] = {}  # unregistered name -> the Parameter compiled under it
_ROOTS: list[tuple["weakref.ref", str]] = []  # registered models and prefixes, searched on a miss
_UNKNOWN: WeakIdKeyDictionary = WeakIdKeyDictionary()  # Parameters searched for and not found
_VERSION = [0]  # bumped by register(): cached names are stale


def _check_collision(name: str, p: Any) -> None:
    """Warn if another live Parameter was compiled under the same unregistered name.

    Blocks compiled one by one without `register(root)` are named relative to the block
    ("fc.weight" in every block). Where they share one compiled graph they are told apart at
    run time (`#n` names), but a block that gets a graph of its own would reuse the first
    block's keys, hence its noise. Names stay as they are (stable, as the reference derives
    them); the warning says how to fix it.
    """
    import warnings

    held = _COMPILED_NAMES.get(name)
    owner = held() if held is not None else None
    if owner is not None and owner is not p:
        warnings.warn(
            f"pqt: two different weights were compiled under the name {name!r} (blocks compiled "
            "one by one?); they would draw the same noise. Call pqt_compile.register(root_model) "
            "before compiling the blocks, so that each weight is keyed by its full name.",
            stacklevel=3,
        )
    _COMPILED_NAMES[name] = weakref.ref(p)


def canonical_name(name: str) -> str:
    """A qualified name without torch.compile's wrapper segments ("h.0._orig_mod.fc.weight" ->
    "h.0.fc.weight"): a block swapped for its compiled wrapper (per-block compilation, as in
    torchtitan) keeps the key, hence the noise, of the plain model's weight."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def _names_of(model: torch.nn.Module, prefix: str = "") -> dict[int, tuple[str, tuple[str, ...]]]:
    out: dict[int, tuple[str, tuple[str, ...]]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        name = canonical_name(name)
        first, others = out.get(id(p), (prefix + name, ()))
        out[id(p)] = (first, others if first == prefix + name else (*others, prefix + name))
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside wrappers that add a name prefix (DDP, DataParallel, torch.compile)."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # OptimizedModule
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def register(model: torch.nn.Module, prefix: str = "") -> None:
    """Record the qualified names of `model`'s parameters (a tied weight: its first name,
    and its other names, which include/exclude patterns also match). Wrappers (DDP,
    torch.compile) are looked through, so names do not depend on them."""
    model = unwrap(model)
    names = _names_of(model, prefix)
    for p in model.parameters():
        new = names[id(p)]
        old = _REGISTRY.get(p)
        # A name from a wider root ends with the narrower one ("h.0.fc.weight" vs "fc.weight"):
        # registering a block after its root must not replace the root's name, or blocks
        # compiled one by one (`pqt_compile.compile(block)`) would share keys, hence noise.
        if old is not None and old[0] != new[0] and old[0].endswith("." + new[0]):
            continue
        _REGISTRY[p] = new
    _ROOTS[:] = [(r, pre) for r, pre in _ROOTS if r() is not None and r() is not model]
    _ROOTS.append((weakref.ref(model), prefix))
    _UNKNOWN.clear()
    _VERSION[0] += 1


def _entry(p: Any) -> Optional[tuple[str, tuple[str, ...]]]:
    """The registered (name, other names) of `p`, also for Parameters that a registered model
    acquired after `register`.

    A Parameter object that is not in the registry is looked for among the registered models'
    current parameters, and a model that holds it is registered again. Two cases need it:
    * `to_empty()` (materialising a model built on the meta device) and
      `load_state_dict(assign=True)` replace Parameter objects after registration;
    * NOTE [FSDP2 names]: under `fully_shard`, a forward sees unsharded Parameters, new
      objects that FSDP2 swaps into the modules for the forward (and out after it). Looked up
      while the forward runs (a compile, or a call), they are the modules' parameters and get
      the full name of the weight they stand for: the sample is taken on the full weight with
      the key of the full name, exactly as in one process, whatever the sharding.
    A miss is remembered until the next `register`.
    """
    entry = _REGISTRY.get(p)
    if entry is not None or not isinstance(p, torch.nn.Parameter) or p in _UNKNOWN:
        return entry
    for ref, prefix in list(_ROOTS):
        root = ref()
        if root is not None and any(q is p for q in root.parameters()):
            register(root, prefix)
    entry = _REGISTRY.get(p)
    if entry is None:
        _UNKNOWN[p] = True
    return entry


def registered_name(p: torch.Tensor) -> Optional[str]:
    entry = _entry(p)
    return entry[0] if entry is not None else None


def registered_aliases(p: torch.Tensor) -> tuple[str, ...]:
    entry = _entry(p)
    return entry[1] if entry is not None else ()


class ParamNames:
    """The Parameter inputs of one Dynamo graph: positions, names, and runtime keys."""

    def __init__(self, positions: list[int], names: list[str], objs: list[Any], root: Optional[torch.nn.Module],
                 aliases: Optional[dict[str, tuple[str, ...]]] = None, buffers: Optional[dict[int, str]] = None) -> None:
        self.positions = positions
        self.names = names
        self.buffers = buffers or {}  # position -> name of module buffers (never sampled; reported)
        self.aliases = aliases or {}  # name -> other names of the same (tied) Parameter
        self._first = [weakref.ref(o) for o in objs]
        self._root = weakref.ref(root) if root is not None else None
        self._extra: list[WeakIdKeyDictionary] = [WeakIdKeyDictionary() for _ in positions]
        self._cache: dict[tuple, tuple[list, Any]] = {}  # ids + version -> (weakrefs, (names, keys))

    @classmethod
    def for_graph(cls, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> "ParamNames":
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        root = frame_root_module()
        canonical = _names_of(unwrap(root)) if root is not None else {}
        positions, names, objs, aliases, buffers = [], [], [], {}, {}
        for pos, (node, ex) in enumerate(zip(placeholders, example_inputs)):
            ga = node.meta.get("grapharg")
            if not isinstance(ex, torch.nn.Parameter) and "_buffers" in str(getattr(getattr(ga, "source", None), "name", "")):
                buffers[pos] = placeholder_source_name(node) or f"input{pos}"
            if isinstance(ex, torch.nn.Parameter):
                if registered_name(ex) is not None:
                    name, others = registered_name(ex), registered_aliases(ex)
                elif id(ex) in canonical:
                    name, others = canonical[id(ex)]
                    _check_collision(name, ex)
                else:
                    name, others = placeholder_source_name(node) or f"input{pos}", ()
                    _check_collision(name, ex)
                positions.append(pos)
                coverage.mark_seen([ex])
                names.append(name)
                objs.append(ex)
                if others:
                    aliases[name] = others
        return cls(positions, names, objs, root, aliases, buffers)

    @property
    def root(self) -> Optional[torch.nn.Module]:
        return self._root() if self._root is not None else None

    def name_at(self, slot: int, p: Any) -> str:
        """The name of Parameter `p` arriving at the slot-th weight input."""
        name = registered_name(p)
        if name is not None:
            return name
        if self._first[slot]() is p:
            return self.names[slot]
        extra = self._extra[slot]
        if p not in extra:
            extra[p] = f"{self.names[slot]}#{len(extra) + 1}"
        return extra[p]

    def resolve(self, args: Sequence[Any], device: torch.device) -> tuple[list[str], torch.Tensor]:
        """This call's weight names and int64 keys (cached while the same objects come back)."""
        objs = [args[pos] for pos in self.positions]
        ids = (*(id(o) for o in objs), _VERSION[0])  # a later register() renames
        hit = self._cache.get(ids)
        # One entry per set of weights: blocks sharing this graph (per-block compilation) each
        # hit their own entry, so a steady-state call hashes no names and builds no tensor.
        if hit is not None and all(r() is o for r, o in zip(hit[0], objs)):
            return hit[1]  # type: ignore[return-value]
        names = [self.name_at(i, o) for i, o in enumerate(objs)]
        for n, o in zip(names, objs):
            if registered_aliases(o):
                self.aliases.setdefault(n, registered_aliases(o))
        keys = torch.tensor([key_for_name(n) for n in names], dtype=torch.int64, device=device)
        coverage.mark_seen(objs)
        if len(self._cache) >= 256:  # bounded: Parameters replaced over and over (a rebuilt model)
            self._cache.clear()
        self._cache[ids] = ([weakref.ref(o) for o in objs], (names, keys))
        return names, keys


def _rank() -> Optional[int]:
    """This process's rank in the default process group (None when there is none)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None


class PQTCompiled:
    """Calls the compiled graph with this call's pqt_seed and pqt_keys appended to the inputs.

    Dynamo calls a backend's result with positional arguments; so does compile_fx's result
    (torch 2.11-2.13: its `_boxed_call` attribute is copied from the inner function and does
    not describe its own convention).
    """

    def __init__(self, fn: Callable, build: Callable, names: ParamNames, config: PQTConfig, device: torch.device,
                 sample_pass: Any, samples: bool = True) -> None:
        """build(weight_names or None, example inputs) -> (compiled fn, its SamplePass);
        samples: whether the graph samples (a training compile, or sample_in_eval)."""
        self.samples = samples
        self.fn = fn
        self._build = build
        self._clean: Optional[Callable] = None
        self.names = names
        self.config = config
        self.device = device
        self.sample_pass = sample_pass
        # NOTE [shared graphs]: include/exclude is decided at compile time from the names of the
        # weights of the first call; a module sharing this graph (per-block compilation) may
        # decide otherwise, and then gets its own variant, compiled on first use.
        self._decided: dict[tuple[str, ...], tuple[bool, ...]] = {}
        self._decisions = self._decide(names.names)
        self._variants: dict = {}
        self._watched = False

    def _eval_mode(self) -> bool:
        root = self.names.root
        return root is not None and not root.training and not self.config.sample_in_eval

    def _decide(self, names: Sequence[str]) -> tuple[bool, ...]:
        """include/exclude for these names, memoised: a shared graph asks on every call."""
        key = tuple(names)
        if key not in self._decided:
            self._decided[key] = tuple(self.config.admits(n, self.names.aliases.get(n, ())) for n in key)
        return self._decided[key]

    def __call__(self, *args: Any) -> Any:
        fn = self.fn
        call_names, keys = self.names.resolve(args, self.device)
        if call_names != self.names.names:
            decisions = self._decide(call_names)
            if decisions != self._decisions:
                if decisions not in self._variants:
                    self._variants[decisions] = self._build(call_names, self._example(args))
                fn = self._variants[decisions][0]
        sampling = self.samples
        if self._eval_mode():
            if self._clean is None:
                self._clean = self._build(None, self._example(args))[0]
            fn, sampling = self._clean, False
        # The seed stream advances only on calls that sample: evaluating on one rank only (or
        # any extra no_grad call) must not shift the noise of the training calls after it.
        seed_value = next_seed(self.config.seed) if sampling else 0
        rank = _rank() if sampling and self.config.per_rank_noise else None
        if rank is not None:  # without a process group, one process: the plain seed
            seed_value = rank_seed(seed_value, rank)
        if sampling:
            SAMPLED_CALLS[0] += 1
            if not self._watched:  # coverage check at the next optimizer step
                self._watched = True
                coverage.watch(self.config, [args[pos] for pos in self.names.positions])
        seed = torch.tensor(seed_value, dtype=torch.int64, device=self.device)
        return fn(*args, seed, keys)

    def _example(self, args: Sequence[Any]) -> list:
        """Example inputs for a compile on first use: this call's own (no earlier batch is kept)."""
        return with_seed_and_keys(args, len(self.names.positions), self.device)


def with_seed_and_keys(args: Sequence[Any], num_keys: int, device: torch.device) -> list:
    """`args` followed by example pqt_seed and pqt_keys inputs (the layout the backend compiles)."""
    return [*args, torch.zeros((), dtype=torch.int64, device=device), torch.zeros(num_keys, dtype=torch.int64, device=device)]
