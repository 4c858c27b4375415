"""Round-to-nearest quantization (what the deployed model holds) and its packed form.

`quantize` uses the blocks, k_b, e and Δ of the sampler (formula.step_log2) and returns
clamp(round_half_even(w / Δ) * Δ, -max_F 2^k_b, max_F 2^k_b). `pack` stores one code per
element (the format's bit pattern: sign | exponent field | mantissa, or the B-bit two's
complement integer) and one int8 exponent k_b per block; `unpack` restores `quantize`'s
values exactly.

NVFP4 (formula_nvfp4.py): `quantize` returns sign(w) q s_b 2^k_t (rounding.nvfp4_rtn_from_params);
`pack` stores the E2M1 codes, one E4M3 scale s_b per block (float8_e4m3fn; 0 for an all-zero
block) and the tensor's exponent k_t (s_t = 2^k_t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .blocks import block_amax, block_code, block_starts, check_sample_args, expand_blocks
from .config import PQTConfig, config_or_default
from .formats import FormatSpec, parse_format
from .formula import TorchOps, floor_log2, pow2, step_log2
from .formula_nvfp4 import block_scale, tensor_exponent, tensor_params
from .formula_nvfp4 import block_params as nvfp4_block_params
from .op import given_tensor_amax, nvfp4_tensor_amax
from .rounding import nvfp4_rtn_from_params, nvfp4_units, rtn_value

__all__ = ["quantize", "pack", "unpack", "is_packing_of", "same_bits", "PackedTensor"]

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


def quantize(w: torch.Tensor, *, axis: int = -1, config: Optional[PQTConfig] = None,
             known: Optional["PackedTensor"] = None, tensor_amax: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The round-to-nearest value of `w` in the config's format, in w's dtype.

    Blocks whose amax is 0 stay 0; blocks holding NaN or Inf are returned unchanged (there
    is no scale to quantize them with). Values beyond the format's range saturate. `known`: see
    `pack` (w holding exactly its values is already deployed and is returned as it is).
    `tensor_amax` (nvfp4 only): the max |w| that sets the tensor scale where it is not w's own (a
    tensor-scale group's: scale_groups.group_tensor_amax, as the compiled step trains it).
    """
    config = config_or_default(config, "pqt_compile.quantize")
    axis = check_sample_args(w, axis, config.spec, config.block_code, w.dtype)
    tensor_amax = given_tensor_amax(tensor_amax, config, "pqt_compile.quantize")
    if known is not None and is_packing_of(known, w, axis, config):
        return w
    amax = block_amax(w, axis, config.block_code)
    o = TorchOps(w.device)
    if config.spec.two_level:
        tensor = tensor_params(o, nvfp4_tensor_amax(w, tensor_amax))
        return nvfp4_rtn_from_params(o, w.detach().float(), nvfp4_block_params(o, amax, tensor)).to(w.dtype)
    # rounding.py: the formula the compiled STE forward (PQTConfig(mode="ste")) runs too.
    return rtn_value(o, w.detach().float(), amax, config.spec).to(w.dtype)


@dataclass(frozen=True)
class PackedTensor:
    """A quantized weight as stored: codes (uint8, or int16 for > 8 bits) and int8 block exponents.

    `exponents` has w's shape with the block axis (`axis`) shortened to the number of blocks
    (one element for block_size "tensor"); ZERO_BLOCK (-128) marks an all-zero block.
    NVFP4 instead: `exponents` is None, `scales` holds the E4M3 block scales (float8_e4m3fn, that
    shape; 0 for an all-zero block) and `tensor_exponent` k_t (the tensor scale is 2^k_t).
    """

    codes: torch.Tensor
    exponents: Optional[torch.Tensor]
    shape: tuple[int, ...]
    axis: int
    format: str
    block_size: object
    dtype: torch.dtype
    scales: Optional[torch.Tensor] = None
    tensor_exponent: Optional[int] = None


def pack(w: torch.Tensor, *, axis: int = -1, config: Optional[PQTConfig] = None, name: str = "the weight",
         known: Optional[PackedTensor] = None, tensor_amax: Optional[torch.Tensor] = None) -> PackedTensor:
    """Quantize `w` and store it as codes plus int8 block exponents (exactly invertible).

    `name` names the weight in the errors (a writer passes its key: a model has many weights).
    `known` (optional): a packing read back with w (`export.read_packed`); returned as it is when
    w holds exactly its values (`is_packing_of`), else w is packed. NOTE [re-quantizing NVFP4].
    `tensor_amax`: as `quantize` takes it (nvfp4: a tensor-scale group's max |w|)."""
    config = config_or_default(config, "pqt_compile.pack")
    axis = check_sample_args(w, axis, config.spec, config.block_code, w.dtype)
    tensor_amax = given_tensor_amax(tensor_amax, config, "pqt_compile.pack")
    if known is not None and is_packing_of(known, w, axis, config):
        return known
    if config.spec.two_level:
        return _pack_nvfp4(w, axis, config, name, tensor_amax)
    spec, w32, valid, n, k = _scales(w, axis, config)
    if not bool(torch.isfinite(w32).all()):
        raise ValueError(f"pqt.pack: {name} holds NaN or Inf, which no format code represents; fix the weight first")
    bad = ((k < -127) | (k > 127)) & valid
    if bool(bad.any()):
        at = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"pqt.pack: the block at element {at} of {name} has scale 2^{int(k[at])}, outside the int8 exponent range "
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


_E2M1_UNITS = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _pack_nvfp4(w: torch.Tensor, axis: int, config: PQTConfig, name: str,
                tensor_amax: Optional[torch.Tensor]) -> PackedTensor:
    o = TorchOps(w.device)
    w32 = w.detach().float()
    if not bool(torch.isfinite(w32).all()):
        raise ValueError(f"pqt.pack: {name} holds NaN or Inf, which no format code represents; fix the weight first")
    amax_t = nvfp4_tensor_amax(w, tensor_amax)  # its own, or its tensor-scale group's
    if float(amax_t) == 0:  # all zeros (a zero-initialised or pruned projection): every code and scale 0
        zeros = torch.zeros_like(w32)
        return PackedTensor(codes=zeros.to(torch.uint8), exponents=None, shape=tuple(w.shape), axis=axis,
                            format=config.format, block_size=config.block_size, dtype=w.dtype,
                            scales=block_starts(zeros, axis, config.block_code).to(torch.float8_e4m3fn),
                            tensor_exponent=0)
    valid, k = tensor_exponent(o, amax_t)
    if not bool(valid):
        raise ValueError(
            f"pqt.pack: nvfp4 gives {name} no tensor scale: its max |w| {float(amax_t):.3g} is outside "
            "[2^-100, 2^100) (quantize leaves such a weight as it is); set a weight this small to zero, or keep it "
            "out of packing (config.exclude)"
        )
    amax = block_amax(w, axis, config.block_code)
    tensor = tensor_params(o, amax_t)
    (scale,) = nvfp4_block_params(o, amax, tensor)
    live = scale > 0
    q = torch.where(live, nvfp4_units(o, w32.abs(), torch.where(live, scale, torch.ones_like(scale))), torch.zeros_like(w32))
    # E2M1 code of q in {0, .5, 1, 1.5, 2, 3, 4, 6}: 2q below 2, q + 2 below 4, q / 2 + 4 above (exact).
    mag = torch.where(q < 2, 2 * q, torch.where(q < 4, q + 2, q / 2 + 4)).to(torch.int64)
    codes = mag | torch.where((w32 < 0) & (q > 0), 8, 0)
    s_b = torch.where(live, block_scale(o, amax, tensor[1]), torch.zeros_like(scale))
    return PackedTensor(
        codes=codes.to(torch.uint8),
        exponents=None,
        shape=tuple(w.shape),
        axis=axis,
        format=config.format,
        block_size=config.block_size,
        dtype=w.dtype,
        scales=block_starts(s_b, axis, config.block_code).to(torch.float8_e4m3fn),
        tensor_exponent=int(k),
    )


def _unpack_nvfp4(p: PackedTensor) -> torch.Tensor:
    if p.scales is None or p.tensor_exponent is None:
        raise ValueError("pqt.unpack: an nvfp4 PackedTensor needs its E4M3 scales and its tensor exponent")
    s_b = expand_blocks(p.scales.float(), p.shape, p.axis, block_code(p.block_size))  # type: ignore[arg-type]
    c = p.codes.to(torch.int64)
    x = _E2M1_UNITS.to(c.device)[c & 7] * s_b  # exact: 2 and 4 significant bits
    x = x * pow2(TorchOps(c.device), torch.tensor(p.tensor_exponent))  # exact: a power of two, normal results
    return torch.where(c >= 8, -x, x).to(p.dtype)


#: NOTE [re-quantizing NVFP4]: for every format but NVFP4, quantize(quantize(w)) == quantize(w), so
#: a model already quantized (`quantize_model`, or loaded from a packed file) is written as it is. An
#: NVFP4 block whose E4M3 scale s_b is subnormal can hold a largest code below 6 (amax_b / (6 s_t)
#: 1.5 * 2^-9 rounds to s_b = 2^-8, and 4.5 s_b rounds to 4 s_b): quantizing the deployed values
#: again picks a smaller scale and other values. A writer given the weight's packing (`known`)
#: therefore writes its codes rather than packing the deployed values again; `quantize_model` and
#: `load` remember the packings a writer needs (export/deployed.py NOTE [deployed packings]).
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether `a` and `b` hold the same bits (a dtype's NaN payloads and -0.0 told apart)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    bits = _BITS[a.element_size()]
    return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))


def is_packing_of(p: PackedTensor, w: torch.Tensor, axis: int, config: PQTConfig) -> bool:
    """Whether `p` stores w in the config's format with blocks along `axis`, every value exactly
    w's, bit for bit: w is then already deployed, and `p` is its packing. The dtypes may differ (a
    packing saved from a bf16 model, loaded into one built in fp32: the same values), as the
    values are compared in fp32, which holds every fp16 and bf16 value exactly."""
    if (p.format, p.block_size, p.axis, tuple(p.shape)) != (config.format, config.block_size, axis % w.dim(),
                                                            tuple(w.shape)):
        return False
    values, w = unpack(p).to(w.device), w.detach()
    if p.dtype != w.dtype:
        values, w = values.float(), w.float()
    return same_bits(values, w)


def unpack(p: PackedTensor) -> torch.Tensor:
    """The values of a packed tensor, in its original dtype (equal to `quantize`'s)."""
    spec: FormatSpec = parse_format(p.format)
    if spec.two_level:
        return _unpack_nvfp4(p)
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
