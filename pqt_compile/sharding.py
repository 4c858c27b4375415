"""Tensor-parallel weights: a rank samples its shard as the slice of the full weight's sample.

Under `torch.distributed.tensor.parallel` (colwise / rowwise) and FSDP2 + TP, a matmul weight
reaches the compiled graph as a DTensor; AOTAutograd hands the joint graph its local tensor
(the rank's shard) and its mesh. The sample is taken there, on the shard, with no
communication: what makes it the full weight's sample is where the shard sits in the weight.

NOTE [global index]: method.md draws element i's noise from (seed, key, i), i its index in the
*full* weight's row-major order. A shard of global shape G at offsets o (per dim) holds local
element l at global coordinates o + l, so its draw index is

    i = index_offset + sum_d l[d] * index_strides[d],
    index_strides = G's row-major strides,  index_offset = sum_d o[d] * index_strides[d],

which the op takes as two arguments (op.py; None: a whole weight). The key is the full
weight's name, as without TP. The blocks must be the full weight's blocks: a block's amax is
then computed from the shard alone, so a shard must hold whole blocks along the reduction
axis (its offset a multiple of B, its length too unless it ends the axis), and "row" or
"tensor" blocks need the shard to span the whole axis or tensor. Anything else would need the
other ranks' values; it is refused by name (`check_blocks`), never sampled with local blocks.

Placements: Shard(d) and Replicate, on any number of mesh dims, are placed exactly; Partial
(a pending sum, not a weight) and _StridedShard (FSDP2's storage order before its all-gather,
never what a matmul reads) are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .blocks import ROW, TENSOR, block_length, row_major_strides
from .compat import dtensor_local_shape_and_offset

__all__ = ["ShardLayout", "shard_layout", "check_blocks", "is_dtensor"]


def is_dtensor(t: Any) -> bool:
    """Whether `t` is a DTensor (a tensor with a device mesh and placements)."""
    return isinstance(t, torch.Tensor) and hasattr(t, "placements") and hasattr(t, "device_mesh")


@dataclass(frozen=True)
class ShardLayout:
    """Where this rank's shard of a weight sits in the full weight (NOTE [global index])."""

    global_shape: tuple[int, ...]
    local_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    #: per tensor dim, the sizes of the mesh dims that shard it, outermost first: every rank's
    #: shard follows from them (`_pieces`), so check_blocks judges all ranks alike
    splits: tuple[tuple[int, ...], ...]
    placements: str = ""  # as DTensor prints them, for messages
    #: the process groups (names) of the mesh dims that shard the weight, outermost first: the
    #: ranks that hold its other shards (NVFP4's tensor amax is reduced over them)
    groups: tuple[str, ...] = ()

    @property
    def index_strides(self) -> list[int]:
        """The full weight's row-major strides: the draw index's strides."""
        return row_major_strides(self.global_shape)

    @property
    def index_offset(self) -> int:
        """The draw index of the shard's first element."""
        return sum(o * s for o, s in zip(self.offsets, self.index_strides))

    @property
    def is_whole(self) -> bool:
        """Whether the shard is the whole weight (replicated): the op's default index applies."""
        return self.local_shape == self.global_shape

    def op_args(self) -> tuple:
        """The op's (index_strides, index_offset): (None, 0) for a whole weight."""
        return (None, 0) if self.is_whole else (self.index_strides, self.index_offset)


def shard_layout(name: str, t: torch.Tensor) -> Optional[ShardLayout]:
    """The layout of DTensor `t` on this rank (None for a plain tensor); refuses placements that
    are not a weight's (Partial) or not laid out as the full weight's slices (_StridedShard)."""
    if not is_dtensor(t):
        return None
    kinds = [type(p).__name__ for p in t.placements]
    bad = [k for k in kinds if k not in ("Shard", "Replicate")]
    if bad:
        raise NotImplementedError(
            f"pqt: weight {name!r} is a DTensor with placements {tuple(t.placements)}; pqt samples Shard and "
            f"Replicate weights, not {bad[0]} (a Partial weight is a pending sum, a _StridedShard one is FSDP2's "
            "storage before its all-gather). Redistribute the weight to Shard/Replicate before the matmul, or "
            "exclude it in the PQTConfig."
        )
    local_shape, offsets = dtensor_local_shape_and_offset(t)
    mesh_sizes = tuple(t.device_mesh.shape)
    splits = tuple(tuple(mesh_sizes[i] for i, p in enumerate(t.placements) if kinds[i] == "Shard" and p.dim % t.dim() == d)
                   for d in range(t.dim()))
    groups = tuple(t.device_mesh.get_group(i).group_name for i, k in enumerate(kinds)
                   if k == "Shard" and mesh_sizes[i] > 1)
    return ShardLayout(tuple(int(n) for n in t.shape), tuple(int(n) for n in local_shape),
                       tuple(int(o) for o in offsets), splits, str(tuple(t.placements)), groups)


def _pieces(length: int, splits: tuple[int, ...]) -> list[tuple[int, int]]:
    """(offset, size) of every shard of an axis of `length` split by mesh dims of sizes `splits`,
    outermost first, each split as DTensor's Shard cuts (torch.chunk sizes; trailing ones may be empty)."""
    pieces = [(0, length)]
    for n in splits:
        out = []
        for o, size in pieces:
            c = -(-size // n)
            for i in range(n):
                start = min(i * c, size)
                out.append((o + start, min(start + c, size) - start))
        pieces = out
    return pieces


def check_blocks(name: str, layout: ShardLayout, axis: int, block_code: int) -> None:
    """Refuse a shard whose blocks are not whole blocks of the full weight (NOTE [global index]).

    axis: the reduction axis (the blocks' axis); block_code: blocks.block_code's B, ROW or TENSOR.
    """
    if layout.is_whole:
        return
    where = (f"weight {name!r} {layout.global_shape} is sharded {layout.placements} (this rank holds "
             f"{layout.local_shape} at offset {layout.offsets})")
    if block_code == TENSOR:
        raise ValueError(f"pqt: {where}; block_size='tensor' needs the whole weight's amax, which needs the other "
                         "ranks' shards. Use an int block size, or keep the weight replicated, or exclude it.")
    if math.prod(layout.splits[axis]) == 1:
        return  # blocks run along an axis every shard holds whole
    total = layout.global_shape[axis]
    if block_code == ROW:
        raise ValueError(f"pqt: {where}, along its reduction axis {axis}; block_size='row' needs the whole row. "
                         "Use an int block size that divides the shard size, or shard another axis (colwise).")
    b = block_length(total, block_code)
    # Every rank's shard is judged, so that all ranks refuse together (none waits in a collective
    # for a rank that stopped).
    crossing = [(o, n) for o, n in _pieces(total, layout.splits[axis]) if n and (o % b or (n % b and o + n != total))]
    if not crossing:
        return
    offset, size = crossing[0]
    good = math.gcd(size, offset) if offset else size
    raise ValueError(
        f"pqt: {where}, along its reduction axis {axis} into shards of {size} elements (one starting at "
        f"{offset}); blocks of {b} would span two shards. Use a block size that divides {good}, or a shard "
        f"size that is a multiple of {b} (a world size that divides {total // b} blocks), or exclude the weight."
    )
