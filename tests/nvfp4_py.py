"""An independent, scalar re-implementation of docs/method.md "NVFP4" in pure Python.

No code is shared with pqt_compile: exact rationals (fractions.Fraction) for the scales and the
round-to-nearest decisions (the nearest grid point of the *exact* quotient, found by listing the
grid), numpy float32 for the IEEE single operations of the noise, formula_py for the draw r.
Slow (one element at a time): for spot checks of a few thousand elements.
"""

from __future__ import annotations

import bisect
import functools
import math
from fractions import Fraction
from typing import Optional

import numpy as np

from formula_py import draw, round_to

TENSOR_LO, TENSOR_HI = 2.0**-100, 2.0**100


def _e4m3_table() -> list[tuple[Fraction, int]]:
    """(value, code) of every non-negative finite OCP E4M3 number: bias 7, 3 mantissa bits,
    subnormals m 2^-9, S.1111.111 reserved for NaN (so the largest is 448)."""
    out = []
    for code in range(0x7F):  # 0x7F is NaN
        e, m = code >> 3, code & 7
        value = Fraction(m, 8) * Fraction(2) ** -6 if e == 0 else (1 + Fraction(m, 8)) * Fraction(2) ** (e - 7)
        out.append((value, code))
    return out


E4M3 = _e4m3_table()
E2M1 = [(Fraction(v), c) for c, v in enumerate([0, 0.5, 1, 1.5, 2, 3, 4, 6])]


def nearest_even(table: list[tuple[Fraction, int]], x: Fraction) -> tuple[Fraction, int]:
    """The entry of `table` nearest to x >= 0 (beyond the largest: the largest), ties to the even
    code (the one whose lowest mantissa bit is 0)."""
    values = [v for v, _ in table]  # ascending
    i = bisect.bisect_left(values, x)
    near = table[max(i - 1, 0):i + 1]  # the neighbours of x (or the largest, beyond it)
    return min(near, key=lambda vc: (abs(vc[0] - x), vc[1] & 1))


def tensor_exponent(amax_t: float) -> Optional[int]:
    """k_t: the smallest integer with 2688 * 2^k_t >= amax_t; None outside [2^-100, 2^100)."""
    if not (TENSOR_LO <= amax_t < TENSOR_HI):
        return None
    k = math.frexp(amax_t / 2688.0)[1] - 2  # a start below the answer (the float quotient is only a guide)
    while Fraction(2688) * Fraction(2) ** k < Fraction(amax_t):
        k += 1
    return k


def block_scale(amax_b: float, k: int) -> Fraction:
    """s_b: amax_b / (6 * 2^k) rounded to E4M3 (exactly, ties to even), at least 2^-9."""
    s, _ = nearest_even(E4M3, Fraction(amax_b) / (6 * Fraction(2) ** k))
    return max(s, Fraction(1, 512))


@functools.lru_cache(maxsize=None)
def scales(amax_b: float, amax_t: float) -> Optional[Fraction]:
    """S = s_b 2^k_t of a block, or None where it gets none (a zero block, a tensor out of range)."""
    k = tensor_exponent(amax_t)
    if k is None or not amax_b > 0:
        return None
    return block_scale(amax_b, k) * Fraction(2) ** k


def deployed(w: float, amax_b: float, amax_t: float) -> float:
    """The round-to-nearest value of one element: sign(w) q S, q the E2M1 point nearest |w| / S
    (exact), ties to even, saturated at 6; +0 for a zero; w itself where the block has no scale
    (a zero as +0, method.md: quantize returns +0.0 for every zero)."""
    s = scales(amax_b, amax_t)
    if s is None:
        return float(np.float32(w)) if w != 0 else 0.0
    q, _ = nearest_even(E2M1, abs(Fraction(float(np.float32(w)))) / s)
    v = float(q * s)
    return -v if w < 0 and v > 0 else v


def code(w: float, amax_b: float, amax_t: float) -> int:
    """The E2M1 code (sign in bit 3) of one element in a block that has a scale."""
    s = scales(amax_b, amax_t)
    q, c = nearest_even(E2M1, abs(Fraction(float(np.float32(w)))) / s)
    return c | (8 if w < 0 and q > 0 else 0)


def step_units(w: float, s: Fraction) -> float:
    """E2M1's step at |w| / S in units of S, by exact comparison."""
    a = abs(Fraction(float(np.float32(w))))
    return 0.5 if a < 2 * s else (1.0 if a < 4 * s else 2.0)


def sample_element(w: float, amax_b: float, amax_t: float, i: int, seed: int, key: int, noise: str, std: float,
                   out: str) -> float:
    """w_hat of one element: w + p (S r) in float32 (S r rounded once, p a power of two)."""
    w32 = np.float32(w)
    s = scales(amax_b, amax_t)
    if s is None or key < 0:
        return round_to(w32, out)
    s32 = np.float32(float(s))
    assert Fraction(float(s32)) == s  # S is an exact fp32 number
    noise_ = np.float32(step_units(w, s)) * np.float32(s32 * draw(seed, key, i, noise, std))
    return round_to(np.float32(w32 + noise_), out)
