"""Safety nets: what would otherwise let a weight train without noise, or with another
weight's noise, without a word.

* Unseen weights. A weight of a PQT-compiled model that no PQT graph received is used by code
  Dynamo ran eagerly, so it trains clean. Causes seen in torch 2.13: a frame skipped for a
  graph break inside a loop (a root compiled whole over per-block FSDP2 shards: FSDP2's hooks
  are `dynamo.disable`d), code under `torch._dynamo.disable`, `Module.compile()` on a torch.nn
  built-in (it compiles nothing), a torch.nn RNN, GRU or LSTM (Dynamo runs the whole frame
  that calls one eagerly unless torch._dynamo.config.allow_rnn; this cause is named, here and in
  the two checks below). Checked once per registered model, at the first optimizer step after
  its first sampling call: by then a whole forward and backward have run.
* Shared keys. Two weights that one optimizer updates and that were keyed by the same name
  draw the same noise (blocks compiled one by one without `pqt_compile.register(root)`, each
  naming its weights relative to itself). Checked at an optimizer step after new weights
  reached PQT graphs. Two separate models with the same names (each with its own optimizer)
  are not a collision: their draws are independent runs.
* Patterns that match nothing. An include/exclude pattern that matches no weight name of the
  registered models (checked with the unseen weights): it has no effect, which is never what its
  author meant.
* Nothing sampled. A training call of a `pqt_compile.compile`d module that ran no PQT graph
  at all (Dynamo compiled nothing: `torch.compile(DDP(nn.Sequential(...)))`). Only
  `pqt_compile.compile` can tell: with `torch.compile(..., backend="pqt")`, Dynamo never calls
  the backend for such a model, so nothing of pqt runs (torch 2.13's compile wrapper passes the
  backend no per-call hook).

The first two run from `pqt_compile.steps`' optimizer hook (`after_optimizer_step`); both entry
points, `torch.compile(model, backend="pqt")` and `pqt_compile.compile`, feed them the same way.
"""

from __future__ import annotations

import re
import warnings
import weakref
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import naming
from .compat import dynamo_runs_eagerly, dynamo_skips_recurrent_modules, fsdp2_unsharded_params
from .config import PQTConfig
from .memo import ObjectMemo
from .selection import admits, could_be_sampled, not_matmul_weights, samplable

__all__ = ["mark_seen", "keyed_name", "watch", "expect_graphs", "check_expected", "after_optimizer_step", "note_graph_call",
           "graph_calls", "eager_cause", "recurrent_cause", "warn_if_nothing_sampled", "reset"]


class _State:
    def __init__(self) -> None:
        self.seen: WeakIdKeyDictionary = WeakIdKeyDictionary()  # Parameter -> name it was keyed by
        self.seen_version = 0  # bumped when a new Parameter is seen
        self.checked_roots: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.checked_optimizers: ObjectMemo[bool] = ObjectMemo()  # per optimizer: checked at this seen_version
        self.pending: list[tuple[PQTConfig, list]] = []  # (config, weakrefs to a graph's weights)
        self.graph_calls = 0  # calls of PQT graphs holding weights (for the nothing-sampled check)
        self.checked_configs: set[PQTConfig] = set()  # whose include/exclude patterns were checked
        self.expecting: list[tuple[weakref.ref, PQTConfig]] = []  # NOTE [compiled over]
        self.expecting_version = 0  # bumped when `expecting` changes
        self.held_by: ObjectMemo[tuple[bool, ...]] = ObjectMemo()  # per optimizer: holds each expected model's weights


_state = _State()


def mark_seen(params: Sequence[Any], names: Sequence[str]) -> None:
    """Record that PQT graphs received `params`, keyed by `names`."""
    for p, name in zip(params, names):
        if _state.seen.get(p) != name:
            _state.seen[p] = name
            _state.seen_version += 1


def keyed_name(p: Any) -> Optional[str]:
    """The name that keyed Parameter `p` in the last PQT graph call that received it (None if
    none did): what `pqt_compile.check` compares with the reference's names."""
    return _state.seen.get(p)


def watch(config: PQTConfig, params: Sequence[Any]) -> None:
    """Check the registered models that hold `params` (a graph's weights) at the next optimizer step."""
    _state.pending.append((config, [weakref.ref(p) for p in params]))


#: NOTE [compiled over]: a model given to `pqt_compile.compile` and then compiled again with
#: another backend (`torch.compile(pqt_compile.compile(model))`; `pqt_compile.compile(model,
#: inplace=True)` then `model.compile()`, as transformers' Trainer does with torch_compile=True)
#: never reaches pqt: Dynamo traces through the inner compile, and the nothing-sampled hooks run
#: inside the outer compiled code. It trained clean, with no word. So the model is expected: at an
#: optimizer step that updates weights of it that have gradients, if no PQT graph has received any
#: of its weights, it is named (once). Checked at each step until its weights are seen (then O(1));
#: `pqt_compile.compile` installs the optimizer hook (steps.install_hook) for this. A model compiled only with
#: `torch.compile(model, backend="pqt")` inside another compile runs no pqt code at all: not seen.
def expect_graphs(model: torch.nn.Module, config: PQTConfig) -> None:
    """Expect PQT graphs to receive `model`'s weights before an optimizer step trains them."""
    _state.expecting.append((weakref.ref(model), config))
    _state.expecting_version += 1


def check_expected(optimizer: torch.optim.Optimizer, can_update: Callable[[torch.optim.Optimizer], bool]) -> None:
    """NOTE [compiled over]: warn about each expected model whose trained weights no PQT graph
    received, at a step that `can_update` says can move a weight (not DCP's lr-0 initialising step,
    which trains nothing; asked only when an expected model is held, so the usual step reads no
    learning rate). What an optimizer holds is decided once per optimizer and expected set (a
    frozen or unused expected model costs no walk over its weights at each step)."""
    if not _state.expecting:
        return
    held = _state.held_by.get(optimizer, _state.expecting_version)
    if held is None:
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        held = tuple(m is not None and any(id(p) in ids for p in m.parameters()) for m in (r() for r, _ in _state.expecting))
        _state.held_by.put(optimizer, _state.expecting_version, held)
    if not any(held) or not can_update(optimizer):
        return
    waiting = []
    stand_ins = _stand_ins()  # FSDP2: the graphs received the unsharded Parameters
    for (ref, config), holds in zip(_state.expecting, held):
        model = ref()
        if model is None:
            continue
        if not holds:
            waiting.append((ref, config))
            continue
        params = {id(p): p for p in model.parameters()}
        if any(_seen_name(p, stand_ins) is not None for p in params.values()):
            continue  # reached PQT graphs: nothing to check any more
        trained = [p for g in optimizer.param_groups for p in g["params"] if id(p) in params and p.grad is not None]
        named = naming.weight_names(model) if trained else {}
        admitted = [p for p in trained if could_be_sampled(p, config, named[id(p)][1].name, named[id(p)][1].aliases)]
        if not admitted:
            waiting.append((ref, config))  # not trained by this optimizer yet
            continue
        warnings.warn(
            f"pqt: an optimizer step trained {len(admitted)} weight(s) of {type(naming.unwrap(model)).__name__}, given to "
            "pqt_compile.compile, but no PQT-compiled graph received any of its weights: it trained without noise. "
            + (eager_cause() or recurrent_cause(model) or
               "A torch.compile or Module.compile applied on top of a pqt-compiled model compiles it again with its own "
               "backend (Dynamo traces through the inner compile). Compile it once, with pqt: pqt_compile.compile(model) "
               "or torch.compile(model, backend='pqt') alone (transformers' Trainer: leave torch_compile off)."),
            stacklevel=4,
        )
    if len(waiting) != len(_state.expecting):
        _state.expecting = waiting
        _state.expecting_version += 1


def note_graph_call() -> None:
    """A PQT graph that holds weights ran (sampling or not)."""
    _state.graph_calls += 1


def eager_cause() -> Optional[str]:
    """The sentence a warning about weights that trained clean gives when Dynamo runs models eagerly
    (compat.dynamo_runs_eagerly), or None when it does not."""
    cause = dynamo_runs_eagerly()
    return f"{cause}: Dynamo runs the model eagerly; undo that for PQT training." if cause else None


def recurrent_cause(model: torch.nn.Module) -> Optional[str]:
    """The sentences a warning about weights that trained clean gives when `model` holds torch.nn
    recurrent modules (nn.RNN, nn.GRU, nn.LSTM) that Dynamo does not trace
    (compat.dynamo_skips_recurrent_modules), or None when it holds none or Dynamo traces them."""
    if not dynamo_skips_recurrent_modules():
        return None
    found = [f"{name!r} ({type(m).__name__})" for name, m in naming.unwrap(model).named_modules()
             if isinstance(m, torch.nn.RNNBase)]
    if not found:
        return None
    return (f"It holds torch.nn recurrent module(s) {', '.join(found[:4])}{', ...' if len(found) > 4 else ''}, which "
            "Dynamo does not trace by default (torch._dynamo.config.allow_rnn is False): it runs them eagerly (torch "
            "2.13 the whole forward that calls one, so nothing in it is sampled). Set torch._dynamo.config.allow_rnn = True "
            "(experimental in torch; pqt then samples the recurrent weights where the layer is traced as matmuls, and "
            "warns where it stays one op), or compile the modules around them on their own (model.proj = "
            "torch.compile(model.proj, backend='pqt'); pqt_compile.register(model) keeps their full names) and "
            "exclude the recurrent weights in the PQTConfig.")


def graph_calls() -> int:
    """How many calls of PQT graphs holding weights ran in this process (steps.py NOTE [no graph ran])."""
    return _state.graph_calls


def after_optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """The checks that wait for a whole training step (called by pqt_compile.steps)."""
    while _state.pending:  # O(1) when nothing is pending: the usual case after the first step
        config, refs = _state.pending.pop()
        _check_unseen([p for p in (r() for r in refs) if p is not None], config)
        _check_patterns(config)
    if _state.checked_optimizers.get(optimizer, _state.seen_version) is None:
        _state.checked_optimizers.put(optimizer, _state.seen_version, True)
        _check_shared_keys(optimizer)


def _stand_ins() -> dict[int, torch.nn.Parameter]:
    out: dict[int, torch.nn.Parameter] = {}
    for root, _ in naming.roots():
        out.update(fsdp2_unsharded_params(root))
    return out


def _seen_name(p: Any, stand_ins: dict[int, torch.nn.Parameter]) -> Any:
    name = _state.seen.get(p)
    if name is None and id(p) in stand_ins:
        name = _state.seen.get(stand_ins[id(p)])
    return name


def _check_unseen(used: Sequence[Any], config: PQTConfig) -> None:
    """Warn, once per registered model that holds `used`, about its weights that no PQT graph
    received. Precondition: a whole training step has run."""
    stand_ins = _stand_ins()
    used_ids = {id(p) for p in used}
    for root, prefix in naming.roots():
        if root in _state.checked_roots:
            continue
        params = list(root.parameters())
        if not any(id(p) in used_ids or id(stand_ins.get(id(p))) in used_ids for p in params):
            continue  # another model
        _state.checked_roots[root] = True
        named = naming.weight_names(root, prefix)
        unseen = [p for p in params if could_be_sampled(p, config, named[id(p)][1].name, named[id(p)][1].aliases)
                  and _seen_name(p, stand_ins) is None]
        if unseen:
            recurrent = {id(p) for m in root.modules() if isinstance(m, torch.nn.RNNBase) for p in m.parameters()}
            cause = recurrent_cause(root) if any(id(p) in recurrent for p in unseen) else None
            names = [named[id(p)][1].name for p in unseen]
            warnings.warn(
                f"pqt: {len(names)} weight(s) of {type(root).__name__} never reached a PQT-compiled graph: "
                f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}. Unless they are unused, code that "
                "Dynamo ran eagerly uses them, and they train without noise" + (f". {cause}" if cause else
                ": a frame skipped for a graph break "
                "inside a loop (e.g. a model whose blocks and root are each fully_shard-ed, compiled whole), "
                "code under torch._dynamo.disable, or Module.compile() on a torch.nn built-in. Compile the "
                "modules that own them (e.g. model.head = torch.compile(model.head, backend='pqt')), or exclude "
                "them in the PQTConfig to silence this; pqt_compile.explain(...) lists the graph breaks."),
                stacklevel=3,
            )


def _check_patterns(config: PQTConfig) -> None:
    """Warn, once per config, about each include/exclude pattern that matches no name of any
    registered model: a slip (torch.compile's `_orig_mod.` prefix, a renamed module) that leaves the
    pattern without effect, so the weights it meant to exclude are sampled, or those it meant to
    include train without noise. Precondition: a whole training step has run."""
    if config in _state.checked_configs or not (config.include or config.exclude):
        return
    _state.checked_configs.add(config)
    names = [n for root, prefix in naming.roots() for _, w in naming.weight_names(root, prefix).values()
             for n in (w.name, *w.aliases)]
    if not names:
        return
    for kind, patterns in (("include", config.include), ("exclude", config.exclude)):
        for pattern in patterns:
            if not any(re.search(pattern, n) for n in names):
                effect = ("the weights it was meant to admit train without noise" if kind == "include"
                          else "the weights it was meant to keep clean are sampled")
                warnings.warn(
                    f"pqt: the PQTConfig's {kind} pattern {pattern!r} matches no parameter name of the PQT-compiled "
                    f"model(s), so {effect}. Patterns are searched (re.search) in qualified names such as "
                    f"{', '.join(repr(n) for n in names[:3])} (torch.compile's '_orig_mod.' prefix is not part of "
                    "them); fix the pattern, or drop it.",
                    stacklevel=4,
                )


def _check_shared_keys(optimizer: torch.optim.Optimizer) -> None:
    """Warn if two weights this optimizer updates were keyed by the same name."""
    stand_ins = _stand_ins() if any(type(p).__name__ == "DTensor" for g in optimizer.param_groups for p in g["params"]) else {}
    by_name: dict[str, set[int]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = _seen_name(p, stand_ins) if samplable(p) else None  # a bias or a norm is never sampled
            if name is not None:
                by_name.setdefault(name, set()).add(id(p))
    shared = sorted(n for n, ids in by_name.items() if len(ids) > 1)
    if shared:
        warnings.warn(
            f"pqt: {len(shared)} name(s) key two or more different weights of this optimizer, so those weights draw "
            f"the same noise: {', '.join(shared[:8])}{', ...' if len(shared) > 8 else ''}. Blocks compiled one by "
            "one name their weights relative to themselves; call pqt_compile.register(root_model) before "
            "training, so that each weight is keyed by its full name.",
            stacklevel=3,
        )


def _admitted_nowhere(module: torch.nn.Module, config: PQTConfig) -> Optional[str]:
    """If include/exclude admit no matrix weight that a matmul could read (embeddings and
    convolutions left out) of the registered models that hold `module` (or of `module` itself, if
    none is registered), a few of their names for a message; None if they admit one (a block
    compiled alone and excluded on purpose: its model is sampled). Names as the keys' (naming.lookup)."""
    module = naming.unwrap(module)
    held = [root for root, _ in naming.roots_holding(list(module.parameters()))] or [module]
    seen: set[int] = set()
    names: list[str] = []
    for root in held:
        skip = not_matmul_weights(root)
        for p in root.parameters():
            # Matrices of any floating dtype: an admitted float64 one is the pass's to name (its dtype), not the patterns'.
            if id(p) in seen or id(p) in skip or not (p.is_floating_point() and p.dim() >= 2):
                continue
            seen.add(id(p))
            entry = naming.lookup(p)
            if entry is None:
                continue
            if admits(config, entry.name, entry.aliases):
                return None
            names.append(entry.name)
    return ", ".join(repr(n) for n in names[:3]) or "none: it has no matrix weight"


def warn_if_nothing_sampled(module: torch.nn.Module, config: PQTConfig) -> None:
    """Warn if the first training call of `module` ran no PQT graph holding weights.

    `module` is torch.compile's wrapper, whose hooks run eagerly around the compiled forward.
    The hooks remove themselves after that call: a module with forward hooks takes
    `Module.__call__`'s slow path at every call (host time, wrapper.py NOTE [host time per call]).
    """
    state = {"before": 0, "done": False}  # "done": a deep copy of the module shares these hooks
    handles: list = []

    def pre(mod: torch.nn.Module, args: Any) -> None:
        state["before"] = _state.graph_calls

    def post(mod: torch.nn.Module, args: Any, out: Any) -> None:
        if state["done"] or not torch.is_grad_enabled() or not naming.unwrap(mod).training:
            return
        state["done"] = True
        for handle in handles:  # checked on the first training call only
            handle.remove()
        if _state.graph_calls == state["before"]:
            warnings.warn(
                "pqt: this training call ran no PQT-compiled graph, so no weight was sampled"
                + (f". {eager_cause()}" if eager_cause() else f". {cause}" if (cause := recurrent_cause(mod)) else
                   " (Dynamo compiled nothing here, or ran this frame eagerly because its recompile limit was "
                   "reached: torch._dynamo.config.recompile_limit, 8 compiled entries per code object, which many "
                   "compiled copies or configs of one model's forward exhaust). Compile the module that holds the "
                   "weights, e.g. DDP(pqt_compile.compile(model)) instead of pqt_compile.compile(DDP(model)) "
                   "for a torch.nn container; pqt-dump shows what was compiled."),
                stacklevel=2,
            )
        elif names := _admitted_nowhere(mod, config):
            warnings.warn(
                "pqt: this training call ran PQT-compiled graphs but sampled no weight: the config's include/exclude "
                "patterns admit none of the model's matrix weights (they match qualified names such as "
                f"{names}), so the model trains without noise. Fix the patterns; pqt-dump or "
                "pqt_compile.explain(model, ...) lists each weight and why it is or is not sampled.",
                stacklevel=2,
            )

    handles.append(module.register_forward_pre_hook(pre))
    handles.append(module.register_forward_hook(post))


def reset() -> None:
    """Forget what was seen and checked (for tests)."""
    global _state
    _state = _State()
