"""Round-to-nearest quantization (what the deployed model holds) and its packed form.

`quantize` uses the blocks, k_b, e and Δ of the sampler (formula.step_log2) and returns
clamp(round_half_even(w / Δ) * Δ, -max_F 2^k_b, max_F 2^k_b). `pack` stores one code per
element (the format's bit pattern: sign | exponent field | mantissa, or the B-bit two's
complement integer) and one int8 exponent k_b per block; `unpack` restores `quantize`'s
values exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .blocks import block_amax, block_code, block_starts, check_sample_args, expand_blocks
from .config import PQTConfig
from .formats import FormatSpec, parse_format
from .formula import TorchOps, floor_log2, pow2, step_log2
from .rounding import rtn_value

__all__ = ["quantize", "pack", "unpack", "PackedTensor"]

ZERO_BLOCK = -128  # the int8 exponent that marks an all-zero block


def _scales(w: torch.Tensor, axis: int, config: PQTConfig):
    """Per element: fp32 weight, block amax, validity, log2 Δ and k_b (int64)."""
    spec = config.spec
    o = TorchOps(w.device)
    w32 = w.detach().float()
    amax = block_amax(w, axis, config.block_code)
    valid = (amax > 0) & torch.isfinite(amax)
    safe_amax = torch.where(valid, amax, torch.ones_like(amax))
    absw = torch.where(torch.isfinite(w32), w32.abs(), torch.zeros_like(w32))
    n = step_log2(o, absw, safe_amax, spec)
    k = floor_log2(o, safe_amax) - spec.emax
    return spec, w32, valid, n, k


def quantize(w: torch.Tensor, *, axis: int = -1, config: Optional[PQTConfig] = None) -> torch.Tensor:
    """The round-to-nearest value of `w` in the config's format, in w's dtype.

    Blocks whose amax is 0 stay 0; blocks holding NaN or Inf are returned unchanged (there
    is no scale to quantize them with). Values beyond the format's range saturate.
    """
    config = config or PQTConfig()
    axis = check_sample_args(w, axis, config.spec, config.block_code, w.dtype)
    amax = block_amax(w, axis, config.block_code)
    # rounding.py: the formula the compiled STE forward (PQTConfig(mode="ste")) runs too.
    return rtn_value(TorchOps(w.device), w.detach().float(), amax, config.spec).to(w.dtype)


@dataclass(frozen=True)
class PackedTensor:
    """A quantized weight as stored: codes (uint8, or int16 for > 8 bits) and int8 block exponents.

    `exponents` has w's shape with the block axis (`axis`) shortened to the number of blocks
    (one element for block_size "tensor"); ZERO_BLOCK (-128) marks an all-zero block.
    """

    codes: torch.Tensor
    exponents: torch.Tensor
    shape: tuple[int, ...]
    axis: int
    format: str
    block_size: object
    dtype: torch.dtype


def pack(w: torch.Tensor, *, axis: int = -1, config: Optional[PQTConfig] = None) -> PackedTensor:
    """Quantize `w` and store it as codes plus int8 block exponents (exactly invertible)."""
    config = config or PQTConfig()
    axis = check_sample_args(w, axis, config.spec, config.block_code, w.dtype)
    spec, w32, valid, n, k = _scales(w, axis, config)
    if not bool(torch.isfinite(w32).all()):
        raise ValueError("pqt.pack: the weight holds NaN or Inf, which no format code represents; fix the weight first")
    bad = ((k < -127) | (k > 127)) & valid
    if bool(bad.any()):
        at = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"pqt.pack: the block at element {at} has scale 2^{int(k[at])}, outside the int8 exponent range "
            f"[-127, 127] that the packed form stores (its |w| are below ~2^{int(k[at]) + config.spec.emax + 1}); "
            "set such negligible weights to zero, or keep this weight out of packing (config.exclude)"
        )
    q = quantize(w, axis=axis, config=config).float()
    o = TorchOps(w.device)
    x = q / pow2(o, torch.where(valid, k, torch.zeros_like(k)))  # exact: value in format units
    if spec.is_int:
        codes = x.to(torch.int64) & ((1 << spec.bits) - 1)
    else:
        sign = x < 0  # quantize's zeros are +0.0
        ax = x.abs()
        e = torch.maximum(floor_log2(o, ax), torch.tensor(spec.emin))
        field = torch.where(ax < 2.0**spec.emin, torch.zeros_like(e), e + spec.bias)
        mant_units = (ax / pow2(o, e - spec.mantissa_bits)).to(torch.int64)  # exact integer
        mant = torch.where(field == 0, mant_units, mant_units - (1 << spec.mantissa_bits))
        codes = (sign.to(torch.int64) << (spec.bits - 1)) | (field << spec.mantissa_bits) | mant
    codes = codes.to(torch.uint8 if spec.bits <= 8 else torch.int16)
    exps = torch.where(valid, k, torch.full_like(k, ZERO_BLOCK))
    return PackedTensor(
        codes=codes,
        exponents=block_starts(exps, axis, config.block_code).to(torch.int8),
        shape=tuple(w.shape),
        axis=axis,
        format=config.format,
        block_size=config.block_size,
        dtype=w.dtype,
    )


def unpack(p: PackedTensor) -> torch.Tensor:
    """The values of a packed tensor, in its original dtype (equal to `quantize`'s)."""
    spec: FormatSpec = parse_format(p.format)
    k = expand_blocks(p.exponents.to(torch.int64), p.shape, p.axis, block_code(p.block_size))  # type: ignore[arg-type]
    zero = k == ZERO_BLOCK
    o = TorchOps(p.codes.device)
    c = p.codes.to(torch.int64) & ((1 << spec.bits) - 1)
    if spec.is_int:
        x = torch.where(c >= (1 << (spec.bits - 1)), c - (1 << spec.bits), c).to(torch.float32)
    else:
        mant = c & ((1 << spec.mantissa_bits) - 1)
        field = (c >> spec.mantissa_bits) & ((1 << spec.exponent_bits) - 1)
        e = torch.where(field == 0, torch.full_like(field, spec.emin), field - spec.bias)
        units = torch.where(field == 0, mant, mant + (1 << spec.mantissa_bits))
        x = units.to(torch.float32) * pow2(o, e - spec.mantissa_bits)
        x = torch.where((c >> (spec.bits - 1)) == 1, -x, x)
    value = x * pow2(o, torch.where(zero, torch.zeros_like(k), k))
    return torch.where(zero, torch.zeros_like(value), value).to(p.dtype)
