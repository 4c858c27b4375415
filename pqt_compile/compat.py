"""Version-sensitive PyTorch internals, isolated in one place (torch 2.11 to 2.13)."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["frame_root_module", "placeholder_source_name", "fsdp2_unsharded_params"]


def frame_root_module() -> Optional[torch.nn.Module]:
    """The nn.Module whose frame Dynamo is compiling (its `self`), or None.

    Workaround: a torch.compile backend is only handed the graph and example inputs, not the
    module; its training flag and parameter names are read from the translator that called
    the backend (`InstructionTranslator.current_tx()`, present in torch 2.11 to 2.13). If the
    API moves, we fall back to names from the placeholders' sources.
    """
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        f_locals = tx.output.root_tx.f_locals if tx is not None else {}
    except Exception:  # noqa: BLE001 - any change of the private API means "unknown"
        return None
    # A module's forward frame holds it as `self`; when Dynamo starts from a module call
    # that it inlines whole (e.g. a bare nn.Linear), the frame holds it as `fn`.
    for name in ("self", "fn"):
        root = f_locals.get(name)
        if isinstance(root, torch.nn.Module):
            return root
    return None


def placeholder_source_name(node: torch.fx.Node) -> Optional[str]:
    """A Dynamo placeholder's source as a qualified name: L['self']._modules['fc']._parameters['weight'] -> fc.weight."""
    ga = node.meta.get("grapharg")
    src = getattr(ga, "source", None)
    if src is None:
        return None
    import re

    parts = re.findall(r"\[['\"]([^'\"]+)['\"]\]|\.([A-Za-z_][A-Za-z_0-9]*)", src.name)
    names = [a or b for a, b in parts]
    drop = {"self", "fn", "_modules", "_parameters", "_buffers", "_orig_mod", "L", "G"}
    out = [n for n in names if n not in drop]
    return ".".join(out) or None


def fsdp2_unsharded_params(root: torch.nn.Module) -> dict[int, torch.nn.Parameter]:
    """{id(sharded Parameter): its unsharded Parameter} for every FSDP2-managed parameter
    under `root` that has been all-gathered at least once.

    Workaround: FSDP2 (`fully_shard`) swaps a module's Parameters for unsharded ones around
    its forward; outside the forward, `parameters()` lists only the sharded DTensors. The
    coverage check runs after the step, so it needs this map to tell whether a sharded
    weight's unsharded stand-in reached a compiled graph. We read the private
    `_get_fsdp_state()._fsdp_param_group.fsdp_params` and each FSDPParam's `sharded_param` /
    `_unsharded_param` (torch 2.11 to 2.13); if that API moves, this returns nothing and the
    coverage check can only err towards warning.
    """
    out: dict[int, torch.nn.Parameter] = {}
    try:
        for module in root.modules():
            get_state = getattr(module, "_get_fsdp_state", None)
            group = get_state()._fsdp_param_group if callable(get_state) else None
            for fp in getattr(group, "fsdp_params", None) or ():
                unsharded = getattr(fp, "_unsharded_param", None)
                if unsharded is not None:
                    out[id(fp.sharded_param)] = unsharded
    except Exception:  # noqa: BLE001 - a changed private API means "no FSDP2 stand-ins"
        return {}
    return out
