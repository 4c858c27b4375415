"""FSDP2 and DTensor: the unsharded parameters, a shard's place, the max all-reduce ops."""

from __future__ import annotations

from typing import Any

import torch

from .registry import TORCH_CHECKED, CompatError, require

__all__ = [
    "fsdp2_unsharded_params",
    "dtensor_local_shape_and_offset",
    "all_reduce_max_ops",
]


# ---- FSDP2 ------------------------------------------------------------------------------

def fsdp2_unsharded_params(root: torch.nn.Module) -> dict[int, torch.nn.Parameter]:
    """{id(sharded Parameter): its unsharded Parameter} for every FSDP2-managed parameter under
    `root` that has been all-gathered at least once.

    Outside the forward, `parameters()` lists only FSDP2's sharded DTensors; the guards need
    to know which unsharded stand-in reached a compiled graph. Reads the private
    `_get_fsdp_state()._fsdp_param_group.fsdp_params` and each FSDPParam's `sharded_param` /
    `_unsharded_param` (torch 2.13); if that moves, this returns nothing and the unseen-weights
    warning can only err towards warning.
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


# ---- DTensor (tensor parallelism) ---------------------------------------------------------

def dtensor_local_shape_and_offset(t: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(local shape, global offset) of this rank's shard of DTensor `t`.

    `torch.distributed.tensor._utils.compute_local_shape_and_global_offset` (torch 2.13-2.15):
    the rule DTensor itself uses to cut shards (torch.chunk sizes), so the offsets agree with
    the local tensors it holds. Checked against `t.to_local().shape` here.
    """
    fn = require("torch.distributed.tensor._utils", "compute_local_shape_and_global_offset",
                 "tensor-parallel weights (a shard's place in the full weight)")
    local_shape, offset = fn(t.shape, t.device_mesh, t.placements)
    if tuple(local_shape) != tuple(t.to_local().shape):
        raise CompatError(
            f"pqt_compile: DTensor's shard rule gave local shape {tuple(local_shape)} but the rank holds "
            f"{tuple(t.to_local().shape)} (torch {torch.__version__}); checked on torch {', '.join(TORCH_CHECKED)}"
        )
    return tuple(local_shape), tuple(offset)


def all_reduce_max_ops() -> tuple[Any, Any]:
    """(all_reduce, wait_tensor): the functional collectives a graph holds (torch.ops._c10d_functional,
    the ops DTensor's own graphs use; torch 2.13-2.15). NVFP4's tensor amax of a sharded weight is
    reduced with them (max over the ranks that split it)."""
    ns = getattr(torch.ops, "_c10d_functional", None)
    try:
        return ns.all_reduce.default, ns.wait_tensor.default
    except (AttributeError, RuntimeError) as e:
        raise CompatError(f"pqt_compile: torch.ops._c10d_functional.all_reduce / wait_tensor are missing in torch "
                          f"{torch.__version__} (needed for an nvfp4 tensor-parallel weight's amax); checked on torch "
                          f"{', '.join(TORCH_CHECKED)}") from e
