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


def fsdp2_unsharded_params(root: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]]:
    """(qualified name, sharded Parameter, unsharded Parameter) of every FSDP2-managed
    parameter under `root` that has been all-gathered at least once.

    Workaround: FSDP2 (`fully_shard`) swaps a module's Parameters for unsharded ones around
    its forward, so a block compiled under it sees Parameter objects that the model's
    `named_parameters()` never lists (it lists the sharded DTensors). FSDP2 keeps one
    unsharded Parameter per parameter for the life of the module (created at the first
    all-gather). We read the private `_get_fsdp_state()._fsdp_param_group.fsdp_params` and
    each FSDPParam's `_module_info` / `_unsharded_param` (torch 2.11 to 2.13). If that API
    moves, this returns nothing; names then still come from the registered model, whose
    `parameters()` list the unsharded Parameters while its forward runs (runtime._entry).
    """
    paths = {id(m): n for n, m in root.named_modules(remove_duplicate=False)}
    out: list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]] = []
    try:
        for module in root.modules():
            get_state = getattr(module, "_get_fsdp_state", None)
            group = get_state()._fsdp_param_group if callable(get_state) else None
            for fp in getattr(group, "fsdp_params", None) or ():
                unsharded = getattr(fp, "_unsharded_param", None)
                if unsharded is None:
                    continue
                info = fp._module_info
                prefix = paths.get(id(info.module))
                if prefix is None:
                    continue
                out.append((f"{prefix}.{info.param_name}" if prefix else info.param_name, fp.sharded_param, unsharded))
    except Exception:  # noqa: BLE001 - a changed private API means "no FSDP2 names"
        return []
    return out
