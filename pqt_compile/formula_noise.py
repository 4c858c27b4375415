"""The noise r of method.md ("The draw"), written once against formula.py's ops interface: the
centred integer draw of one 32-bit hash and its fp32 scale ("gaussian", "uniform"), or its
rounding to whole steps ("rounded_gaussian"); and the one check of a noise and its std, which
PQTConfig and the raw op both apply.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

__all__ = [
    "GAUSSIAN_TERMS",
    "MAX_ROUNDED_THRESHOLDS",
    "check_noise",
    "noise_std_problem",
    "noise_scale",
    "rounded_thresholds",
    "noise_from_hash",
]

#: The Gaussian is the sum of this many uniform bytes of one 32-bit hash (Irwin-Hall).
GAUSSIAN_TERMS = 4
_GAUSSIAN_MEAN = GAUSSIAN_TERMS * 255 // 2  # 510: the (integer) mean of the byte sum
_GAUSSIAN_VAR = GAUSSIAN_TERMS * (256.0**2 - 1.0) / 12.0  # 21845 for 4 terms
_UNIFORM_VAR = (2.0**48 - 1.0) / 3.0  # variance of the odd integers 2U + 1 - 2^24, U < 2^24
_FLT_MAX = 3.4028234663852886e38


def check_noise(noise: str, noise_std: float) -> None:
    """Refuse a noise the formula does not know, or a noise_std that is not a finite number > 0
    (the raw op's inputs; PQTConfig validates its own). "rtn" draws nothing and takes any std."""
    if noise == "rtn":
        return
    if noise not in ("gaussian", "uniform", "rounded_gaussian"):
        raise ValueError(f"pqt: noise must be 'gaussian', 'uniform', 'rounded_gaussian' or 'rtn', got {noise!r}")
    if not (isinstance(noise_std, (int, float)) and math.isfinite(noise_std) and noise_std > 0):
        raise ValueError(f"pqt: noise_std must be a finite number > 0 (units of the step), got {noise_std!r}")
    problem = noise_std_problem(noise, noise_std)
    if problem is not None:
        raise ValueError(f"pqt: {problem}")


#: "rounded_gaussian" compares |z| with each threshold, once per element (`noise_from_hash`): at most
#: this many (noise_std up to about 18.5 steps).
MAX_ROUNDED_THRESHOLDS = 64


def noise_std_problem(noise: str, noise_std: float) -> Optional[str]:
    """Why a finite noise_std > 0 cannot be drawn as asked (None if it can): its fp32 scale
    underflows (every r = 0: the weights would train clean) or a draw overflows fp32; for
    "rounded_gaussian", every draw rounds to 0, or more thresholds than MAX_ROUNDED_THRESHOLDS."""
    if noise == "rounded_gaussian":
        first = math.ceil(0.5 * math.sqrt(_GAUSSIAN_VAR) / noise_std)
        if first > _GAUSSIAN_MEAN:
            return (f"noise_std {noise_std!r} with noise 'rounded_gaussian' rounds every draw to 0 (below about "
                    f"{0.5 * math.sqrt(_GAUSSIAN_VAR) / _GAUSSIAN_MEAN:.3f} steps): the weights would train without "
                    "noise; use a larger noise_std")
        if (_GAUSSIAN_MEAN / math.sqrt(_GAUSSIAN_VAR)) * noise_std + 0.5 > MAX_ROUNDED_THRESHOLDS:
            return (f"noise_std {noise_std!r} with noise 'rounded_gaussian' needs more than {MAX_ROUNDED_THRESHOLDS} "
                    "rounding thresholds (one comparison per element each); use noise_std <= 18 or noise 'gaussian'")
        return None
    if noise not in ("gaussian", "uniform"):
        return None
    largest_draw = _GAUSSIAN_MEAN if noise == "gaussian" else 2**24 - 1
    scale = noise_std / math.sqrt(_GAUSSIAN_VAR if noise == "gaussian" else _UNIFORM_VAR)
    if scale < 2.0**-126:  # below fp32's normal range: r underflows to 0 (or loses its precision)
        return (f"noise_std {noise_std!r} is too small for fp32: the noise would round to 0 and the weights train "
                "without noise; use a noise_std of at least 1e-30")
    if scale * largest_draw >= _FLT_MAX:
        return f"noise_std {noise_std!r} is too large for fp32: a draw would be Inf; use a noise_std below 1e30"
    return None


def noise_scale(noise: str, noise_std: float) -> float:
    """The fp32 constant that turns the centred integer draw into r (std `noise_std`)."""
    var = _GAUSSIAN_VAR if noise == "gaussian" else _UNIFORM_VAR
    return float(torch.tensor(noise_std / math.sqrt(var), dtype=torch.float32).item())


def rounded_thresholds(noise_std: float) -> tuple[int, ...]:
    """The draws of "rounded_gaussian": |R| = the number of t_j <= |z|, where z is the centred
    Irwin-Hall integer of "gaussian" and t_j = ceil((j - 1/2) sqrt(21845) / noise_std), j = 1, 2, ...:
    R = round(noise_std G) with G the unit Gaussian z / sqrt(21845), halves away from zero
    (computed in float64 here, once; the sampler only compares integers)."""
    sd = math.sqrt(_GAUSSIAN_VAR)
    out = []
    j = 1
    while True:
        t = math.ceil((j - 0.5) * sd / noise_std)
        if t > _GAUSSIAN_MEAN:  # |z| <= 510
            return tuple(out)
        out.append(t)
        j += 1


def noise_from_hash(o: Any, h: Any, noise: str, noise_std: float) -> Any:
    """r: mean 0, from one 32-bit hash (`o`: a formula.SampleOps handler).

    gaussian: the sum of the hash's four bytes minus 510 (Irwin-Hall of 4 discrete uniforms,
    bounded at +-510/sqrt(21845) = +-3.45 standard deviations), then one fp32 multiply by
    `noise_scale` (std `noise_std`). uniform: the odd integers 2U + 1 - 2^24 with U the top 24
    bits, then the same multiply. rounded_gaussian: the gaussian draw rounded to whole steps,
    round(noise_std G) (`rounded_thresholds`; the rounded Gaussian of Ahn & Yoo's later version
    with noise_std 1/2): an integer r, so w + Δ r moves w by whole steps.
    """
    if noise in ("gaussian", "rounded_gaussian"):
        b = o.word(255)
        s = o.add(
            o.add(o.band(h, b), o.band(o.shr_word(h, 8), b)),
            o.add(o.band(o.shr_word(h, 16), b), o.shr_word(h, 24)),
        )
        z = o.sub(o.small_of_word(s), o.small(_GAUSSIAN_MEAN))  # s <= 1020
    elif noise == "uniform":
        u = o.shr_word(h, 8)
        z = o.sub(o.small_of_word(o.add(u, u)), o.small(2**24 - 1))  # 2u < 2^25
    else:
        raise ValueError(f"noise must be 'gaussian', 'uniform' or 'rounded_gaussian', got {noise!r}")
    if noise != "rounded_gaussian":
        return o.mul(o.int_to_f32(z), o.f32(noise_scale(noise, noise_std)))
    az = o.abs(z)
    count = o.f32(0.0)
    for t in rounded_thresholds(noise_std):  # small integers compared, counts exact in fp32
        count = o.add(count, o.where(o.ge(az, o.small(t)), o.f32(1.0), o.f32(0.0)))
    return o.where(o.lt(z, o.small(0)), o.sub(o.f32(0.0), count), count)
