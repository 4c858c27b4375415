"""The per-block form of the formula (formula.py NOTE [per-block step]) gives exactly the bits of
method.md's step-by-step form (`sample_value_direct`), on adversarial inputs: every binade of
fp32, subnormal and tiny blocks, zeros of both signs, blocks holding NaN or Inf, amax at exact
powers of two, and a negative key."""

import math

import pytest
import torch

from pqt_compile import parse_format
from pqt_compile.formula import TorchOps, sample_value, sample_value_direct

FORMATS = ["fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "fp5_e3m1", "fp5_e2m2", "fp8_e3m4",
           "int8", "int4", "int2", "int16"]


def adversarial(n_blocks: int = 4096, b: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """w (flat) and each element's block amax."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.pow(2.0, torch.randint(-150, 128, (n_blocks, 1), generator=g).double())
    w = (torch.randn(n_blocks, b, generator=g, dtype=torch.float64) * scale).clamp(-3e38, 3e38).float()
    w[::7] *= torch.pow(2.0, -torch.randint(0, 40, (1, b), generator=g).float())  # a wide range inside a block
    w[1::11, ::3] = 0.0
    w[2::13, 1::3] = -0.0
    w[3::17] = 0.0  # zero blocks
    w[4::19, 5] = float("nan")
    w[5::23, 6] = float("inf")
    w[6::29, 7] = -float("inf")
    w[8::31, 0] = torch.pow(2.0, torch.randint(-149, 127, (w[8::31].shape[0],), generator=g).float())
    w[9::37] = torch.randint(-3, 4, (w[9::37].shape[0], b), generator=g).float() * 2.0**-149  # subnormal
    amax = w.abs().amax(dim=1, keepdim=True)
    amax = torch.where(w.isnan().any(dim=1, keepdim=True), torch.tensor(float("nan")), amax)
    return w.reshape(-1), amax.expand(-1, b).reshape(-1)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("noise", ["gaussian", "uniform", "rounded_gaussian"])
def test_per_block_form_is_bit_identical(fmt, noise):
    o = TorchOps(torch.device("cpu"))
    spec = parse_format(fmt)
    w, amax = adversarial(seed=len(fmt))
    idx = torch.arange(w.numel(), dtype=torch.int64)
    seed = torch.tensor(-(2**40) + 7)
    std = {"uniform": 0.37, "gaussian": 1 / math.sqrt(12), "rounded_gaussian": 1.0}[noise]
    for key in (torch.tensor(2**31 + 9), torch.tensor(-1)):
        a = sample_value(o, w, amax, idx, seed, key, spec, noise, std)
        b = sample_value_direct(o, w, amax, idx, seed, key, spec, noise, std)
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    moved = sample_value(o, w, amax, idx, seed, torch.tensor(5), spec, noise, std)
    assert (moved != w).float().mean() > 0.3  # the noise is there: the test compares real samples
