"""A weight in NVFP4 as engines store it: E2M1 codes, E4M3 block scales, the tensor scale.

`pack_nvfp4` regroups `pqt_compile.quantize.pack`'s NVFP4 codes and scales with the reduction
axis last, so the stored values are `quantize`'s by construction (formula_nvfp4.py): an element
is e2m1(code) * s_b * 2^k_t, every product exact. Engines differ in where the tensor scale goes
and which two codes share a byte:

    compressed-tensors   weight_packed uint8 [N, K/2] (element 2i in the low nibble of byte i),
    (nvfp4-pack-         weight_scale float8_e4m3fn [N, K/16], weight_global_scale float32 [1]
     quantized)          = 2^-k_t: its decoder divides s_b by it, exactly s_b 2^k_t
    GGUF NVFP4           64-element blocks: 4 UE4M3 scale bytes (one per 16), then 32 bytes
                         where byte j of a 16-element group holds elements j and j + 8; the
                         tensor scale 2^k_t is a separate F32 tensor `<name>.scale`, which
                         llama.cpp multiplies into the matmul's result (exact: a power of two)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import PQTConfig
from ..formats import NVFP4, NVFP4_BLOCK
from ..quantize import PackedTensor, pack
from .common import ExportError

__all__ = ["NVFP4Weight", "pack_nvfp4", "decode_nvfp4", "E2M1_VALUES"]

#: E2M1 magnitudes by the low three bits of a code.
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


@dataclass(frozen=True)
class NVFP4Weight:
    """A weight in NVFP4, the reduction axis last.

    Attributes:
        codes: uint8 [..., K], one E2M1 code per element (sign in bit 3).
        scales: uint8 [..., K // 16], the E4M3 bit pattern of each block's scale s_b (0 for an
            all-zero block; never the NaN pattern, s_b <= 448).
        tensor_exponent: k_t; the tensor scale is 2^k_t.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    tensor_exponent: int

    @property
    def tensor_scale(self) -> torch.Tensor:
        """2^k_t as a float32 [1] tensor (exact: k_t is within [-111, 90])."""
        return torch.tensor([2.0**self.tensor_exponent], dtype=torch.float32)


def pack_nvfp4(w: torch.Tensor, *, axis: int, config: PQTConfig, name: str = "weight",
               known: Optional[PackedTensor] = None, tensor_amax: Optional[torch.Tensor] = None) -> NVFP4Weight:
    """`quantize(w, axis=axis, config=config)` as NVFP4, the reduction axis moved last (`known`:
    w's packing, as `pack` takes it; quantize.py NOTE [re-quantizing NVFP4]; `tensor_amax`: its
    tensor-scale group's max |w|, scale_groups.group_tensor_amax).

    ExportError unless config.format is "nvfp4"; whatever `pack` raises for a weight it cannot
    store (NaN or Inf, a tensor amax outside [2^-100, 2^100), a reduction axis that is not a
    multiple of 16).
    """
    if config.format != NVFP4:
        raise ExportError(f"{name}: NVFP4 holds format nvfp4 only, not {config.format}")
    axis = axis % w.dim()
    if w.shape[axis] % NVFP4_BLOCK:
        raise ExportError(f"{name}: cannot store nvfp4 blocks: its reduction axis has {w.shape[axis]} elements, not a "
                          f"multiple of {NVFP4_BLOCK}")
    p = pack(w.detach(), axis=axis, config=config, name=name, known=known, tensor_amax=tensor_amax)
    assert p.scales is not None and p.tensor_exponent is not None
    return NVFP4Weight(codes=p.codes.movedim(axis, -1).contiguous(),
                       scales=p.scales.movedim(axis, -1).contiguous().view(torch.uint8),
                       tensor_exponent=p.tensor_exponent)


def decode_nvfp4(m: NVFP4Weight) -> torch.Tensor:
    """The float32 values [..., K] of an NVFP4 weight (a decoder, for checks)."""
    c = m.codes.to(torch.int64)
    s_b = m.scales.view(torch.float8_e4m3fn).float().repeat_interleave(NVFP4_BLOCK, dim=-1)
    x = E2M1_VALUES[c & 7] * s_b * m.tensor_scale
    return torch.where(c >= 8, -x, x)
