"""Target storage formats: the table of method.md, parsed once into a frozen spec.

A format is named `fp8_e4m3`, `fp8_e5m2`, `fp6_e3m2`, `fp6_e2m3`, `fp4_e2m1`, the generic
`fpN_eEmM` (N = 1 + E + M, 2 <= E <= 5, 0 <= M <= 7, every encoding finite as in MX FP6/FP4),
or `intB` (B = 2..16, symmetric). The two named FP8 formats follow the OCP FP8 rules, so
their emax differs from the generic all-finite rule (E4M3 tops out at 448, E5M2 at 57344).

`nvfp4` is NVIDIA's two-level format: E2M1 elements (fp4_e2m1's grid) in blocks of 16, each
block scaled by an FP8 E4M3 number, the whole tensor by one FP32 number (formula_nvfp4.py,
docs/method.md "NVFP4"). Every other format has one power-of-two scale per block (the MX rule).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch

__all__ = ["FormatSpec", "parse_format", "mantissa_bits_of", "check_resolution", "NVFP4", "NVFP4_BLOCK"]

_FP_RE = re.compile(r"^fp(\d+)_e(\d+)m(\d+)$")
_INT_RE = re.compile(r"^int(\d+)$")

# OCP FP8: E4M3 has no infinities and reserves only S.1111.111 for NaN, so emax = 8;
# E5M2 is IEEE-like (the top exponent is Inf/NaN), so emax = 15.
_OCP_FP8_EMAX = {"fp8_e4m3": 8, "fp8_e5m2": 15}

#: NVIDIA's NVFP4: E2M1 elements, an E4M3 scale per block of NVFP4_BLOCK, an FP32 scale per tensor.
NVFP4 = "nvfp4"
#: The one block size NVFP4 defines.
NVFP4_BLOCK = 16

ACCEPTED_FORMATS = ("fp8_e4m3, fp8_e5m2, fp6_e3m2, fp6_e2m3, fp4_e2m1, fpN_eEmM (N = 1+E+M, 2 <= E <= 5, 0 <= M <= 7), "
                    "intB (2 <= B <= 16), nvfp4")


@dataclass(frozen=True)
class FormatSpec:
    """One storage format, with every constant that the formula needs.

    For a float format: `mantissa_bits` (M), `exponent_bits` (E), `bias`, `emin` (the
    smallest normal exponent, 1 - bias) and `emax`. For an int format, `emax` = B - 2 (so a
    block's amax scales into [2^(B-2), 2^(B-1)), whose integers fit in B signed bits) and the
    step inside a block is 2^k_b.

    `two_level` marks NVFP4: the element constants are E2M1's, but the block scale is an E4M3
    number under a per-tensor scale (formula_nvfp4.py) instead of 2^k_b; code written for the
    power-of-two rule must refuse such a spec (formula.block_exponent does).
    """

    name: str
    is_int: bool
    bits: int
    exponent_bits: int
    mantissa_bits: int
    bias: int
    emin: int
    emax: int
    max_value: float
    two_level: bool = False

    @property
    def significant_bits(self) -> int:
        """Bits of precision below the leading one that the format keeps (M, or B - 2)."""
        return self.emax if self.is_int else self.mantissa_bits


@functools.lru_cache(maxsize=None)
def parse_format(name: str) -> FormatSpec:
    """Parse a format name; raise ValueError naming the accepted forms if it is unknown."""
    if not isinstance(name, str):
        raise ValueError(f"format must be a string, got {name!r}; accepted: {ACCEPTED_FORMATS}")
    if name == NVFP4:
        e2m1 = parse_format("fp4_e2m1")
        return FormatSpec(NVFP4, False, 4, 2, 1, e2m1.bias, e2m1.emin, e2m1.emax, e2m1.max_value, two_level=True)
    m = _INT_RE.match(name)
    if m:
        bits = int(m.group(1))
        if not 2 <= bits <= 16 or str(bits) != m.group(1):
            raise ValueError(f"format {name!r}: intB needs 2 <= B <= 16; accepted: {ACCEPTED_FORMATS}")
        return FormatSpec(name, True, bits, 0, 0, 0, 0, bits - 2, float(2 ** (bits - 1) - 1))
    m = _FP_RE.match(name)
    if m:
        n, e, mb = (int(g) for g in m.groups())
        if not (2 <= e <= 5 and 0 <= mb <= 7 and n == 1 + e + mb) or name != f"fp{n}_e{e}m{mb}":
            raise ValueError(
                f"format {name!r}: fpN_eEmM needs N = 1 + E + M, 2 <= E <= 5 and 0 <= M <= 7; "
                f"accepted: {ACCEPTED_FORMATS}"
            )
        bias = 2 ** (e - 1) - 1
        emax = _OCP_FP8_EMAX.get(name, 2**e - 1 - bias)
        # Largest finite value. OCP E4M3 loses its top mantissa code to NaN: 1.75 * 2^8 = 448.
        top_mantissa = 2.0 - 2.0 ** (-mb) if name != "fp8_e4m3" else 1.75
        return FormatSpec(name, False, n, e, mb, bias, 1 - bias, emax, top_mantissa * 2.0**emax)
    raise ValueError(f"unknown format {name!r}; accepted: {ACCEPTED_FORMATS}")


_MANTISSA_BITS = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}


def mantissa_bits_of(dtype: torch.dtype) -> int:
    """Explicit mantissa bits of a supported floating dtype."""
    if dtype not in _MANTISSA_BITS:
        raise ValueError(f"dtype {dtype} is not supported: use float32, bfloat16 or float16")
    return _MANTISSA_BITS[dtype]


def check_resolution(spec: FormatSpec, out_dtype: torch.dtype) -> None:
    """Refuse a format whose noise would vanish when rounded to `out_dtype`.

    The noise of a format with `s` significant bits is about 2^-s of the block's amax; an
    out_dtype with fewer mantissa bits rounds it away, so PQT would silently be a no-op.
    (bf16: M <= 7 and intB with B <= 9; fp16: B <= 12; fp32: everything.)
    """
    have = mantissa_bits_of(out_dtype)
    if spec.significant_bits > have:
        raise ValueError(
            f"format {spec.name!r} is finer than the resolution of {out_dtype} "
            f"({spec.significant_bits} significant bits needed, {have} available): its noise would "
            f"be rounded away. Use a coarser format, or keep the matmul in a wider dtype "
            f"(float32, or float16 for intB up to B = 12)."
        )
