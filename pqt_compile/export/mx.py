"""The MXFP4 packer: E2M1 codes two to a byte, one E8M0 scale byte per 32 elements.

OCP MX (Microscaling Formats v1.0) stores an FP4 tensor as blocks of 32 E2M1 elements along
the reduction axis, each block with an E8M0 scale 2^(s - 127). pqt_compile's `fp4_e2m1` with
block_size 32 follows the same rule (k = floor(log2 amax) - 2, round to nearest, saturate), so
`pack`'s codes and block exponents are MXFP4 as they stand: the nibble is the E2M1 code (sign
in bit 3) and the scale byte is k + 127. int2 and int3 fit too: their integers {0, ±1, ±2, ±3}
are E2M1 values.

Engines agree on codes and scales and differ only in which two elements share a byte
(`NibbleOrder`). Every writer that stores MXFP4 goes through `pack_mxfp4`: GGUF's MXFP4
tensors, compressed-tensors' mxfp4-pack-quantized, and checkpoints in gpt-oss's layout
(`*_blocks` uint8 [..., K/32, 16] and `*_scales` uint8 [..., K/32], pairs order). The E8M0
scales of the other MX formats (MXFP8, MXFP6) come from `e8m0_scales`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import PQTConfig
from ..quantize import PackedTensor
from .codes import GroupedCodes, grouped_codes
from .common import ExportError

__all__ = ["MX_BLOCK", "E8M0_BIAS", "NibbleOrder", "MXFP4Weight", "MXFP4_FORMATS", "e8m0_scales", "pack_nibbles",
           "pack_mxfp4", "unpack_mxfp4"]

#: Elements per MX block (one scale each).
MX_BLOCK = 32
#: An E8M0 byte s means 2^(s - E8M0_BIAS); 255 is NaN and never written.
E8M0_BIAS = 127
#: Formats whose every value is an E2M1 value times the block's power of two.
MXFP4_FORMATS = ("fp4_e2m1", "int2", "int3")

# The E2M1 code of the integers 0, 1, 2, 3 (0.0, 1.0, 2.0, 3.0 = 1.5 * 2^1), for int2 / int3.
_E2M1_OF_INT = torch.tensor([0b000, 0b010, 0b100, 0b101], dtype=torch.int64)
# E2M1 magnitudes by the low three bits of the code, to decode (unpack_mxfp4).
_E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


class NibbleOrder(enum.Enum):
    """Which two elements of a row share a byte.

    PAIRS: byte i holds element 2i in its low nibble and 2i+1 in its high nibble (OCP MX
    reference, compressed-tensors, gpt-oss checkpoints).
    HALVES: within each 32-element block, byte j holds element j (low nibble) and element j+16
    (high nibble) (ggml's block_mxfp4, as GGUF stores it).
    """

    PAIRS = "pairs"
    HALVES = "halves"


@dataclass(frozen=True)
class MXFP4Weight:
    """A weight in MXFP4, the reduction axis last.

    Attributes:
        packed: uint8 [..., K // 2], two E2M1 codes per byte in `order`.
        scales: uint8 [..., K // 32], E8M0.
        order: the nibble order of `packed`.
    """

    packed: torch.Tensor
    scales: torch.Tensor
    order: NibbleOrder

    def blocks(self) -> torch.Tensor:
        """`packed` as [..., K // 32, 16]: one row of 16 bytes per scale (gpt-oss's `_blocks`)."""
        return self.packed.reshape(*self.packed.shape[:-1], -1, MX_BLOCK // 2)


def e8m0_scales(g: GroupedCodes) -> torch.Tensor:
    """The E8M0 byte of every group (uint8). An all-zero block gets 0 (2^-127), the smallest
    scale, as OCP reference quantizers give: its codes are 0, so it decodes to 0 anyway."""
    lo, hi = g.exponent_range()
    if lo < -E8M0_BIAS or hi > E8M0_BIAS:  # pack already keeps k in [-127, 127]; kept as a guard
        raise ExportError(f"a block scale 2^{lo if lo < -E8M0_BIAS else hi} is outside E8M0's 2^-127..2^127")
    return torch.where(g.zero, torch.zeros_like(g.exponents), g.exponents + E8M0_BIAS).to(torch.uint8)


def pack_nibbles(codes: torch.Tensor, order: NibbleOrder) -> torch.Tensor:
    """4-bit codes [..., K] (uint8, values < 16) -> bytes [..., K // 2] in `order`."""
    c = codes.to(torch.uint8)
    if order is NibbleOrder.PAIRS:
        pairs = c.reshape(*c.shape[:-1], -1, 2)
        return pairs[..., 0] | (pairs[..., 1] << 4)
    blocks = c.reshape(*c.shape[:-1], -1, MX_BLOCK)
    half = MX_BLOCK // 2
    return (blocks[..., :half] | (blocks[..., half:] << 4)).reshape(*c.shape[:-1], -1)


def _unpack_nibbles(packed: torch.Tensor, order: NibbleOrder) -> torch.Tensor:
    lo, hi = packed & 0xF, packed >> 4
    if order is NibbleOrder.PAIRS:
        return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], -1)
    half = MX_BLOCK // 2
    lo = lo.reshape(*packed.shape[:-1], -1, half)
    hi = hi.reshape(*packed.shape[:-1], -1, half)
    return torch.cat([lo, hi], dim=-1).reshape(*packed.shape[:-1], -1)


def pack_mxfp4(w: torch.Tensor, *, axis: int, config: PQTConfig, order: NibbleOrder,
               name: str = "weight", known: Optional[PackedTensor] = None) -> MXFP4Weight:
    """`quantize(w, axis=axis, config=config)` as MXFP4, the reduction axis moved last.

    Preconditions: config.format is fp4_e2m1, int2 or int3; the axis length is a multiple of
    32 and the block size a multiple of 32 (or "row" / "tensor"). Otherwise ExportError.
    """
    if config.format not in MXFP4_FORMATS:
        raise ExportError(f"{name}: MXFP4 holds {', '.join(MXFP4_FORMATS)} exactly, not {config.format}")
    g = grouped_codes(w, axis=axis, config=config, group=MX_BLOCK, name=name, known=known)
    if g.spec.is_int:  # q in [-3, 3]: the E2M1 code of the same value, sign in bit 3
        q = g.signed()
        codes = _E2M1_OF_INT[q.abs()] | torch.where(q < 0, 8, 0)
    else:
        codes = g.codes.to(torch.int64)
    return MXFP4Weight(packed=pack_nibbles(codes, order), scales=e8m0_scales(g), order=order)


def unpack_mxfp4(m: MXFP4Weight) -> torch.Tensor:
    """The float32 values [..., K] of an MXFP4 weight (a decoder, for checks)."""
    codes = _unpack_nibbles(m.packed, m.order).to(torch.int64)
    mag = _E2M1_VALUES[codes & 7]
    x = torch.where(codes >= 8, -mag, mag)
    scale = torch.pow(2.0, m.scales.to(torch.float64) - E8M0_BIAS).to(torch.float32)  # exact: 2^-127 is an fp32 subnormal
    return (x.reshape(*scale.shape, MX_BLOCK) * scale[..., None]).reshape(x.shape) + 0.0
