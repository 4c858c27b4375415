"""An independent, scalar re-implementation of method.md and docs/method.md in pure Python.

No code is shared with pqt_compile: Python ints for the generator, math.frexp/ldexp for
exponents, numpy float32 for the two IEEE single operations, and a hand-written
round-to-nearest-even for bf16/fp16. Slow (one element at a time): for spot checks.
"""

from __future__ import annotations

import math
import struct

import numpy as np

M32 = 0xFFFFFFFF


def mix32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x21F0AAAD) & M32
    return x ^ (x >> 16)


def draw(seed: int, key: int, i: int, noise: str, std: float) -> np.float32:
    """r of element i (its logical row-major index)."""
    s = seed & 0xFFFFFFFFFFFFFFFF  # two's complement, then an arithmetic >> 32
    hi = (s >> 32) | (0xFFFFFFFF00000000 if s >> 63 else 0)
    seed32 = (s ^ hi) & M32
    s1 = mix32(seed32 ^ mix32((key & M32) ^ 0x9E3779B9))
    s2 = mix32(s1 ^ 0x85EBCA6B)
    h = mix32(mix32(i ^ s1) ^ s2)
    if noise == "gaussian":
        z = sum((h >> (8 * j)) & 255 for j in range(4)) - 510
        c = np.float32(std / math.sqrt(4 * (256**2 - 1) / 12))
    else:
        z = 2 * (h >> 8) + 1 - 2**24
        c = np.float32(std / math.sqrt((2.0**48 - 1) / 3))
    return np.float32(z) * c


def floor_log2(x: float) -> int:
    return math.frexp(x)[1] - 1  # exact for every positive double, subnormals included


def round_to(x: np.float32, dtype: str) -> float:
    """Round an fp32 value to bf16/fp16 (round to nearest even) or keep fp32."""
    if dtype == "float32":
        return float(x)
    if dtype == "float16":
        return float(np.float16(x))  # numpy's float32 -> float16 cast is IEEE RNE
    bits = struct.unpack("<I", struct.pack("<f", float(x)))[0]
    if (bits >> 23) & 0xFF == 0xFF:
        return float(x)
    lower = bits & 0xFFFF
    bits >>= 16
    if lower > 0x8000 or (lower == 0x8000 and bits & 1):
        bits += 1
    return struct.unpack("<f", struct.pack("<I", (bits << 16) & M32))[0]


def sample_element(w: float, amax: float, i: int, seed: int, key: int, fmt: dict, noise: str, std: float, out: str) -> float:
    """w_hat of one element. fmt: {"is_int", "emax", "emin", "M"}; amax: its block's max |w|;
    a negative key: no noise."""
    w32 = np.float32(w)
    if not (amax > 0 and math.isfinite(amax)) or key < 0:
        return round_to(w32, out)
    k = floor_log2(amax) - fmt["emax"]
    if fmt["is_int"]:
        n = k
    else:
        e = max(floor_log2(abs(float(w32))) if w32 != 0 else -10**9, k + fmt["emin"])
        n = e - fmt["M"]
    delta = np.float32(math.ldexp(1.0, n)) if n >= -149 else np.float32(0.0)
    return round_to(np.float32(w32 + np.float32(delta * draw(seed, key, i, noise, std))), out)


def block_amax_np(w: np.ndarray, axis: int, block) -> np.ndarray:
    """Per-element block amax (float32), with numpy: blocks of `block` elements along `axis`
    (the last one shorter), "row" = the whole axis, "tensor" = the whole tensor. NaN propagates."""
    a = np.abs(w.astype(np.float32))
    if block == "tensor":
        return np.full(a.shape, np.max(a), dtype=np.float32)
    a = np.moveaxis(a, axis, -1)
    k = a.shape[-1]
    b = k if block == "row" else min(int(block), k)
    out = np.empty_like(a)
    for start in range(0, k, b):
        out[..., start : start + b] = np.max(a[..., start : start + b], axis=-1, keepdims=True)
    return np.moveaxis(out, -1, axis)


def step_np(w: float, amax: float, fmt: dict) -> float:
    """Δ of one element (method.md step 3), with math.frexp."""
    k = floor_log2(amax) - fmt["emax"]
    if fmt["is_int"]:
        return math.ldexp(1.0, k)
    e = max(floor_log2(abs(w)) if w != 0 else -(10**9), k + fmt["emin"])
    return math.ldexp(1.0, e - fmt["M"])
