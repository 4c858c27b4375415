"""GGUF block types that hold a PQT format exactly, and the bytes of a weight in them.

A GGML block is 32 consecutive elements of a row along ne[0], the reduction axis (llama.cpp
computes y = W x with W stored [N rows, K]). The types used, little endian:

    MXFP4  17 bytes  E8M0 scale byte s, then 16 bytes of E2M1 codes (element j in the low
                     nibble of byte j, element j+16 in the high nibble); value = E2M1 * 2^(s-127)
    Q4_0   18 bytes  fp16 d, then 16 bytes of nibbles u in the same order; value = (u - 8) * d
    Q5_0   22 bytes  fp16 d, a uint32 whose bit j is the 5th bit of element j, then the low
                     nibbles as Q4_0; value = (u - 16) * d
    Q8_0   34 bytes  fp16 d, then 32 int8 q; value = q * d
    NVFP4  36 bytes  per 64 elements: 4 UE4M3 scale bytes s (one per 16 elements: E4M3 bits,
                     sign 0), then 32 bytes where byte j of a 16-element group holds element j
                     (low nibble) and j + 8 (high); value = E2M1 * s (no tensor scale: see below)

With d = 2^k these hold pqt's formats exactly where the integers fit (Q4_0: -8..7 holds int2-4,
Q5_0 int2-5, Q8_0 int2-8) and 2^k is an fp16 value (k in -24..15; -24..-15 are fp16 subnormals).
MXFP4 holds fp4_e2m1 (same grid, same scale rule: mx.py) and int2/int3 ({0, ±1, ±2, ±3} are
E2M1 values) for any k pack can store. NVFP4 holds nvfp4's codes and E4M3 scales exactly; its
block has no tensor scale, so the writer adds llama.cpp's separate F32 `<name>.scale` tensor
(2^k_t, which llama.cpp multiplies into the matmul's result: exact, a power of two), and the
reduction axis must be a multiple of 64. There is no GGML type with FP8 or FP6 elements: those
formats are refused.

llama.cpp's own quantizers use other grids for Q4_0 / Q8_0 (d = amax / -8, amax / 127), which
is why the writer encodes pack's codes itself instead of asking gguf-py or llama-quantize.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch

from ..blocks import ROW, TENSOR
from ..config import PQTConfig
from ..formats import NVFP4, NVFP4_BLOCK
from ..quantize import PackedTensor
from .codes import grouped_codes
from .common import ExportError
from .mx import MX_BLOCK, MXFP4_FORMATS, NibbleOrder, pack_mxfp4, pack_nibbles
from .nvfp4 import NVFP4Weight, pack_nvfp4

__all__ = ["GGML_BLOCK", "GGUF_TYPES", "DEFAULT_GGUF_TYPE", "gguf_type_for", "encode_weight", "FP16_EXPONENTS",
           "NVFP4_SUPER_BLOCK", "nvfp4_blocks"]

#: Elements per block of every GGML type used here.
GGML_BLOCK = MX_BLOCK
#: The PQT formats each GGUF type holds exactly.
GGUF_TYPES: dict[str, tuple[str, ...]] = {
    "MXFP4": MXFP4_FORMATS,
    "Q4_0": ("int2", "int3", "int4"),
    "Q5_0": ("int2", "int3", "int4", "int5"),
    "Q8_0": tuple(f"int{b}" for b in range(2, 9)),
    "NVFP4": (NVFP4,),
}
#: Elements per GGML NVFP4 block (four of NVFP4's 16-element blocks).
NVFP4_SUPER_BLOCK = 64
#: The type written by default: the smallest that holds the format (int2/int3 take Q4_0, which
#: llama.cpp has supported far longer than MXFP4; ask for MXFP4 to save 0.25 bit per weight).
DEFAULT_GGUF_TYPE: dict[str, str] = {
    "fp4_e2m1": "MXFP4", "int2": "Q4_0", "int3": "Q4_0", "int4": "Q4_0", "int5": "Q5_0",
    "int6": "Q8_0", "int7": "Q8_0", "int8": "Q8_0", NVFP4: "NVFP4",
}
#: The block exponents an fp16 scale d = 2^k holds exactly.
FP16_EXPONENTS = (-24, 15)

_HOLDS = ("fp4_e2m1 (MXFP4), int2-int4 (Q4_0), int5 (Q5_0) and int6-int8 (Q8_0), with block_size 32, "
          "a multiple of 32, 'row' or 'tensor', and nvfp4 (NVFP4)")


def gguf_type_for(config: PQTConfig, requested: Optional[str] = None) -> str:
    """The GGUF type name that stores `config`'s format exactly (`requested`, if given, must be
    one that does). ExportError naming the formats GGUF holds otherwise."""
    code = config.block_code
    block_ok = code in (ROW, TENSOR) or code % GGML_BLOCK == 0 or (config.format == NVFP4 and code == NVFP4_BLOCK)
    if requested is not None:
        if requested not in GGUF_TYPES:
            raise ExportError(f"GGUF type {requested!r}: choose one of {', '.join(GGUF_TYPES)}")
        if config.format not in GGUF_TYPES[requested]:
            raise ExportError(f"GGUF type {requested} does not hold {config.format} exactly; it holds "
                              f"{', '.join(GGUF_TYPES[requested])}")
        qtype = requested
    else:
        qtype = DEFAULT_GGUF_TYPE.get(config.format, "")
    if not qtype or not block_ok:
        raise ExportError(f"no GGUF type holds format {config.format} with block_size {config.block_size} exactly; "
                          f"GGUF holds {_HOLDS} (or export --to compressed-tensors, which also holds fp8_e4m3 and "
                          "fp6_e2m3 with block 32)")
    return qtype


def _fp16_scale_bytes(k: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """fp16 d = 2^k as 2 little-endian bytes per group ([..., G, 2]); d = +0 for zero groups."""
    d = torch.where(zero, torch.zeros_like(k, dtype=torch.float64), torch.pow(2.0, k.to(torch.float64)))
    return d.to(torch.float16).unsqueeze(-1).view(torch.uint8)


def encode_weight(w: torch.Tensor, *, axis: int, config: PQTConfig, qtype: str, name: str = "weight",
                  known: Optional[PackedTensor] = None) -> torch.Tensor:
    """The GGUF bytes of `quantize(w, axis=axis, config=config)` as `qtype`: uint8
    [rows, K // 32 * bytes per block], the reduction axis K last (one row per output).

    Preconditions: `qtype` holds the format (`gguf_type_for`); K and the block size are
    multiples of 32; for the fp16-scaled types every block's 2^k is an fp16 value. ExportError
    (naming the weight and the block) otherwise.
    """
    if sys.byteorder != "little":  # the byte views below assume the file's own byte order
        raise ExportError("the GGUF writer runs on little-endian machines only")
    if config.format not in GGUF_TYPES.get(qtype, ()):
        raise ExportError(f"{name}: GGUF type {qtype} does not hold {config.format} exactly")
    if w.dim() != 2:
        raise ExportError(f"{name}: the GGUF writer stores 2-D matmul weights, this one has shape {tuple(w.shape)}")
    if qtype == "NVFP4":
        return nvfp4_blocks(pack_nvfp4(w, axis=axis, config=config, name=name, known=known), name)
    if qtype == "MXFP4":
        m = pack_mxfp4(w, axis=axis, config=config, order=NibbleOrder.HALVES, name=name, known=known)
        blocks = torch.cat([m.scales.unsqueeze(-1), m.blocks()], dim=-1)  # [N, G, 1 + 16]
        return blocks.reshape(blocks.shape[0], -1).contiguous()
    g = grouped_codes(w, axis=axis, config=config, group=GGML_BLOCK, name=name, known=known)
    lo, hi = FP16_EXPONENTS
    k = g.exponents
    bad = ~g.zero & ((k < lo) | (k > hi))
    if bool(bad.any()):
        row, blk = (int(i) for i in bad.nonzero()[0])
        raise ExportError(
            f"{name}: the block at row {row}, elements {blk * GGML_BLOCK}..{blk * GGML_BLOCK + GGML_BLOCK - 1} of the "
            f"reduction axis has scale 2^{int(k[row, blk])}, outside 2^{lo}..2^{hi}, which {qtype}'s fp16 scale holds "
            "exactly; exclude this weight (config.exclude) or rescale it")
    q = g.signed().reshape(*k.shape, GGML_BLOCK)  # [N, G, 32]
    d = _fp16_scale_bytes(k, g.zero)  # [N, G, 2]
    if qtype == "Q8_0":
        body = q.to(torch.int8).view(torch.uint8)
    elif qtype == "Q4_0":
        body = pack_nibbles((q + 8).reshape(q.shape[0], -1), NibbleOrder.HALVES).reshape(*k.shape, GGML_BLOCK // 2)
    else:  # Q5_0
        u = q + 16
        high_bits = ((u >> 4) << torch.arange(GGML_BLOCK, dtype=torch.int64)).sum(-1)  # uint32: bit j of element j
        qh = torch.stack([(high_bits >> (8 * i)) & 0xFF for i in range(4)], dim=-1).to(torch.uint8)
        low = pack_nibbles((u & 0xF).reshape(u.shape[0], -1), NibbleOrder.HALVES).reshape(*k.shape, GGML_BLOCK // 2)
        body = torch.cat([qh, low], dim=-1)
    blocks = torch.cat([d, body], dim=-1)
    return blocks.reshape(blocks.shape[0], -1).contiguous()


def nvfp4_blocks(m: NVFP4Weight, name: str = "weight") -> torch.Tensor:
    """GGML NVFP4 bytes of an NVFP4 weight [rows, K]: uint8 [rows, K // 64 * 36]. The tensor
    scale is not in them (the caller writes it as `<name>.scale`). ExportError unless K is a
    multiple of 64."""
    rows, k = m.codes.shape
    if k % NVFP4_SUPER_BLOCK:
        raise ExportError(f"{name}: GGUF's NVFP4 blocks hold {NVFP4_SUPER_BLOCK} elements, and its reduction axis has {k}, "
                          f"not a multiple of {NVFP4_SUPER_BLOCK}; export --to compressed-tensors (groups of 16)")
    codes = m.codes.reshape(rows, k // NVFP4_SUPER_BLOCK, 4, NVFP4_BLOCK)
    qs = (codes[..., :8] | (codes[..., 8:] << 4)).reshape(rows, k // NVFP4_SUPER_BLOCK, 32)  # byte j: j and j + 8
    d = m.scales.reshape(rows, k // NVFP4_SUPER_BLOCK, 4)  # E4M3 bits, sign 0: UE4M3
    return torch.cat([d, qs], dim=-1).reshape(rows, -1).contiguous()
