"""The smallest honest demonstration: sample a weight in several formats and compare the
noise with the rounding error of round-to-nearest quantization in the same format.

    python -m pqt_compile.tools.demo [--rows 256] [--cols 1024] [--seed 0]
"""

from __future__ import annotations

import argparse
import math

import torch
from tabulate import tabulate

from .. import PQTConfig, quantize, sample
from .cli import positive_int

FORMATS = ("fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "int8", "int4")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=positive_int, default=256)
    p.add_argument("--cols", type=positive_int, default=1024)
    p.add_argument("--seed", type=int, default=0, help="0 <= seed < 2^63")
    a = p.parse_args(argv)
    if not 0 <= a.seed < 2**63:
        p.error(f"--seed {a.seed}: give 0 <= seed < 2^63")
    torch.manual_seed(a.seed)
    w = torch.randn(a.rows, a.cols) * 0.02
    rows = []
    for fmt in FORMATS:
        cfg = PQTConfig(format=fmt)
        noise = sample(w, seed=a.seed, key=1, axis=1, config=cfg) - w
        err = quantize(w, axis=1, config=cfg) - w
        rms = lambda t: float(t.pow(2).mean().sqrt())  # noqa: E731
        rows.append([fmt, f"{rms(noise) / rms(w):.3e}", f"{rms(err) / rms(w):.3e}", f"{rms(noise) / rms(err):.3f}"])
    print(f"weight {a.rows}x{a.cols}, N(0, 0.02^2), blocks of 32 along the reduction axis\n")
    print(tabulate(rows, headers=["format", "PQT noise rms / w rms", "RTN error rms / w rms", "noise / error"]))
    print(f"\nThe noise has the size of the rounding error (ratio near 1; std 1/sqrt(12) = {1 / math.sqrt(12):.3f} of a step).")


if __name__ == "__main__":
    main()
