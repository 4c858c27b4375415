"""A sampled weight's codes and block exponents, grouped as an inference engine stores them.

Engines keep a matmul weight with its reduction axis last and one scale per `group`
consecutive elements along it (GGUF: 32; compressed-tensors: its group size; MX: 32). The
codes and exponents come from `pqt_compile.quantize.pack`, so the stored values are
`quantize`'s by construction; this module only regroups them.

A PQT block can lend its scale to each engine group inside it when the group never straddles
two PQT blocks: the PQT block length is a multiple of the group (or the block is "row" or
"tensor") and the axis length is a multiple of the group. Anything else would put two PQT
scales under one engine scale, so it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..blocks import ROW, TENSOR, block_length, block_starts, expand_blocks
from ..config import PQTConfig
from ..formats import FormatSpec
from ..quantize import ZERO_BLOCK, PackedTensor, pack
from .common import ExportError

__all__ = ["GroupedCodes", "grouped_codes", "group_mismatch", "ZERO_BLOCK"]


def group_mismatch(config: PQTConfig, axis_len: int, group: int) -> Optional[str]:
    """Why blocks of `config` along an axis of `axis_len` cannot be stored with one scale per
    `group` elements (None if they can)."""
    if axis_len % group:
        return f"its reduction axis has {axis_len} elements, not a multiple of {group}"
    code = config.block_code
    if code not in (ROW, TENSOR) and block_length(axis_len, code) % group:
        return f"block_size {config.block_size} is not a multiple of {group}"
    return None


@dataclass(frozen=True)
class GroupedCodes:
    """One weight as codes and one exponent per engine group, the reduction axis last.

    Attributes:
        codes: `pack`'s codes ([..., K], uint8; int16 for formats wider than 8 bits): the
            format's bit pattern, or the B-bit two's complement integer.
        exponents: int64 [..., K // group]: the group's k (its values are code * 2^k), or
            ZERO_BLOCK for a group of an all-zero PQT block.
        spec: the format.
        group: elements per group.
    """

    codes: torch.Tensor
    exponents: torch.Tensor
    spec: FormatSpec
    group: int

    @property
    def zero(self) -> torch.Tensor:
        """True for the groups of all-zero blocks (their codes are 0, any scale decodes them)."""
        return self.exponents == ZERO_BLOCK

    def signed(self) -> torch.Tensor:
        """The integers q of an intB format (int64, two's complement decoded); value = q * 2^k."""
        if not self.spec.is_int:
            raise TypeError(f"{self.spec.name} is not an integer format")
        c = self.codes.to(torch.int64)
        half = 1 << (self.spec.bits - 1)
        return torch.where(c >= half, c - 2 * half, c)

    def exponent_range(self) -> tuple[int, int]:
        """(min, max) k over the groups that are not all zero; (0, 0) if there are none."""
        live = self.exponents[~self.zero]
        if live.numel() == 0:
            return 0, 0
        return int(live.min()), int(live.max())


def grouped_codes(w: torch.Tensor, *, axis: int, config: PQTConfig, group: int, name: str = "weight",
                  known: Optional[PackedTensor] = None) -> GroupedCodes:
    """Quantize `w` along `axis` with `config` and return its codes grouped by `group`.

    Raises ExportError (naming the weight) when the groups would straddle PQT blocks, and
    whatever `pack` raises for a weight it cannot store (NaN, a scale outside 2^-127..2^127).
    """
    axis = axis % w.dim()
    if config.spec.two_level:
        raise ExportError(f"{name}: {config.format} has E4M3 block scales under a tensor scale, not block exponents: "
                          "its writers use export/nvfp4.py")
    why = group_mismatch(config, w.shape[axis], group)
    if why is not None:
        raise ExportError(f"{name}: cannot store {config.format} blocks in groups of {group}: {why}")
    p = pack(w.detach(), axis=axis, config=config, name=name, known=known)
    per_element = expand_blocks(p.exponents.to(torch.int64), p.shape, axis, config.block_code)
    per_group = block_starts(per_element, axis, group)
    return GroupedCodes(
        codes=p.codes.movedim(axis, -1).contiguous(),
        exponents=per_group.movedim(axis, -1).contiguous(),
        spec=config.spec,
        group=group,
    )
