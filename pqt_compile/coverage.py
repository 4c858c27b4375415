"""Coverage: warn about weights of a registered model that no PQT-compiled graph received.

Such a weight is used by code that Dynamo ran eagerly, so it trains without noise, and
nothing else would say so. Causes seen in torch 2.11-2.13: a frame skipped for a graph break
inside a loop (the root of a model whose blocks and root are each `fully_shard`-ed, compiled
whole: FSDP2's hooks are `dynamo.disable`d and break the graph inside the loop over the
blocks), code under `torch._dynamo.disable`, or `Module.compile()` on a torch.nn built-in
(a skipped frame: it compiles nothing).

When. The first optimizer step after a model's first sampling call (a global optimizer
step-post hook, installed on first use): by then a whole forward and backward have run, with
every graph of the model, however many times each graph was called within the step. A loop
without a `torch.optim` optimizer is not checked. Not caught: a graph that compiled once and
later fell back to eager (e.g. Dynamo's recompile limit; torch logs that itself).
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

from torch.utils.weak import WeakIdKeyDictionary

from .compat import fsdp2_unsharded_params
from .config import PQTConfig

__all__ = ["mark_seen", "watch", "check_unseen_weights"]

_SEEN: WeakIdKeyDictionary = WeakIdKeyDictionary()  # Parameters that entered a PQT-compiled graph
_CHECKED_ROOTS: WeakIdKeyDictionary = WeakIdKeyDictionary()  # models already checked
_PENDING: list[tuple[PQTConfig, list]] = []  # (config, weak refs to a graph's weights) to check
_HOOK: list[Optional[Any]] = [None]


def mark_seen(params: Sequence[Any]) -> None:
    """Record Parameters that a PQT-compiled graph received."""
    for p in params:
        _SEEN[p] = True


def watch(config: PQTConfig, used: Sequence[Any]) -> None:
    """Check the models holding `used` (a graph's weights) at the next optimizer step."""
    import weakref

    _PENDING.append((config, [weakref.ref(p) for p in used]))
    if _HOOK[0] is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _HOOK[0] = register_optimizer_step_post_hook(_after_optimizer_step)


def _after_optimizer_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    while _PENDING:  # O(1) when nothing is pending: the usual case after the first step
        config, refs = _PENDING.pop()
        check_unseen_weights(config, [p for p in (r() for r in refs) if p is not None])


def check_unseen_weights(config: PQTConfig, used: Sequence[Any]) -> None:
    """Warn, once per registered model that holds `used`, about its weights that no PQT graph
    received. Precondition: a whole training step has run. Only weights that could feed a
    matmul (floating, 2-D or more) and that the config admits are listed."""
    from .runtime import _ROOTS, _names_of

    used_ids = {id(p) for p in used}
    for ref, prefix in list(_ROOTS):
        root = ref()
        if root is None or root in _CHECKED_ROOTS:
            continue
        stand_ins = fsdp2_unsharded_params(root)
        params = list(root.parameters())
        if not any(id(p) in used_ids or id(stand_ins.get(id(p))) in used_ids for p in params):
            continue  # another model
        _CHECKED_ROOTS[root] = True
        named = _names_of(root, prefix)
        unseen = [
            named[id(p)][0] for p in params
            if p.dim() >= 2 and p.is_floating_point() and config.admits(*named[id(p)])
            and p not in _SEEN and (id(p) not in stand_ins or stand_ins[id(p)] not in _SEEN)
        ]
        if unseen:
            warnings.warn(
                f"pqt: {len(unseen)} weight(s) of {type(root).__name__} never reached a PQT-compiled graph: "
                f"{', '.join(unseen[:8])}{', ...' if len(unseen) > 8 else ''}. Unless they are unused, code that "
                "Dynamo ran eagerly uses them, and they train without noise: a frame skipped for a graph break "
                "inside a loop (e.g. a model whose blocks and root are each fully_shard-ed, compiled whole), "
                "code under torch._dynamo.disable, or Module.compile() on a torch.nn built-in. Compile the "
                "modules that own them (e.g. model.head = torch.compile(model.head, backend='pqt')), or exclude "
                "them in the PQTConfig to silence this; pqt_compile.explain(...) lists the graph breaks.",
                stacklevel=2,
            )
