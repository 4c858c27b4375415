"""A device mesh of N ranks in one process, for compile-path tests of DTensor weights.

torch's fake process group (`torch.testing._internal.distributed.fake_pg`, checked on torch
2.13.0 and 2.15.0) makes collectives no-ops, so one process can hold rank r's shards of an
N-rank tensor-parallel model and compile it exactly as rank r would. Shards are filled from a
full weight by `fill_shards` (with the fake group, distribute_tensor's scatter leaves them unset).
Numerics that need real collectives are checked by tests/distributed/ (gloo, 4 processes).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist

__all__ = ["VERSIONS_CHECKED", "fake_mesh", "fill_shards"]

VERSIONS_CHECKED = ("2.13.0", "2.15.0")


@contextlib.contextmanager
def fake_mesh(rank: int, world: int) -> Iterator[object]:
    """A 1-D CPU mesh of `world` ranks in which this process is `rank` (the group is destroyed after)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield init_device_mesh("cpu", (world,))
    finally:
        dist.destroy_process_group()


def fill_shards(module: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy each DTensor parameter's local shard from the full tensor `full[name]`."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    with torch.no_grad():
        for name, p in module.named_parameters():
            if not hasattr(p, "to_local"):
                p.copy_(full[name])
                continue
            shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
            piece = full[name][tuple(slice(o, o + n) for o, n in zip(offset, shape))]
            p.to_local().copy_(piece)
