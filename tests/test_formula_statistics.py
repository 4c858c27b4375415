"""Statistical properties of the noise over >= 10^6 draws.

Tolerances are from sampling theory at n = 2^20 draws, chosen so that a correct generator
fails with probability well under 1e-6, and a std off by 2% fails for sure:
- mean: |mean| < 6 sd/sqrt(n) (= 0.0059 sd)
- std: |s/sd - 1| < 6 sqrt((kurt - 1)/4n) (~0.005 for kurt 2.7)
- shape: Kolmogorov distance of the integer draw to its exact PMF < 2.0/sqrt(n) (p ~ 1e-3 on
  the continuous bound, stricter still for a discrete law)
- correlation between streams / neighbours: |rho| < 6/sqrt(n)
"""

import math

import pytest
import torch

from pqt_compile.formula import TorchOps, element_hash, stream_words
from pqt_compile.formula_noise import noise_from_hash, noise_scale

N = 1 << 20


def draws(seed, key, noise="gaussian", std=1 / math.sqrt(12), start=0, n=N):
    o = TorchOps(torch.device("cpu"))
    s1, s2 = stream_words(o, torch.tensor(seed), torch.tensor(key))
    idx = torch.arange(start, start + n, dtype=torch.int64)
    return noise_from_hash(o, element_hash(o, idx, s1, s2), noise, std).double()


def moments_ok(r, std, kurt):
    n = r.numel()
    mean_ok = abs(float(r.mean())) < 6 * std / math.sqrt(n)
    ratio = float(r.std()) / std
    std_ok = abs(ratio - 1) < 6 * math.sqrt((kurt - 1) / (4 * n))
    return mean_ok and std_ok


IRWIN_HALL4_KURT = 3 - 6 / (5 * 4)
UNIFORM_KURT = 1.8


@pytest.mark.parametrize("noise,kurt", [("gaussian", IRWIN_HALL4_KURT), ("uniform", UNIFORM_KURT)])
def test_mean_and_std(noise, kurt):
    std = 1 / math.sqrt(12)
    r = draws(2024, 77, noise, std)
    assert moments_ok(r, std, kurt)
    # The same check must reject a generator whose std is 2% off.
    assert not moments_ok(r * 1.02, std, kurt)
    assert not moments_ok(r + 0.02 * std, std, kurt)


def test_custom_noise_std():
    r = draws(5, 5, "gaussian", 0.8)
    assert moments_ok(r, 0.8, IRWIN_HALL4_KURT)


def _ks(z: torch.Tensor, pmf: torch.Tensor, offset: int) -> float:
    counts = torch.bincount(z - offset, minlength=pmf.numel()).double()
    return float((counts.cumsum(0) / z.numel() - pmf.cumsum(0)).abs().max())


def test_gaussian_shape_is_irwin_hall_of_four_bytes():
    r = draws(31337, 1)
    z = torch.round(r / noise_scale("gaussian", 1 / math.sqrt(12))).long()
    byte = torch.full((256,), 1 / 256, dtype=torch.float64)
    pmf = byte
    for _ in range(3):
        pmf = torch.nn.functional.conv1d(pmf.view(1, 1, -1), byte.view(1, 1, -1), padding=255).view(-1)
    assert pmf.numel() == 1021 and z.min() >= -510 and z.max() <= 510
    bound = 2.0 / math.sqrt(z.numel())
    assert _ks(z, pmf, -510) < bound
    # A plain Gaussian of the same std is measurably different in shape (kurtosis 3 vs 2.7):
    kurt = float(((r - r.mean()) ** 4).mean() / r.var() ** 2)
    assert abs(kurt - IRWIN_HALL4_KURT) < 0.02
    # The same test rejects wrong laws: a true (discretised) Gaussian of the same std, and
    # the right law with its tails cut.
    g = torch.Generator().manual_seed(0)
    gauss = torch.round(torch.randn(z.numel(), generator=g, dtype=torch.float64) * math.sqrt(21845)).long()
    assert _ks(gauss.clamp(-510, 510), pmf, -510) > bound
    assert _ks(z.clamp(-300, 300), pmf, -510) > bound


def test_uniform_shape():
    r = draws(8, 8, "uniform", 1.0)
    a = math.sqrt(3)
    assert float(r.abs().max()) <= a
    u = ((r + a) / (2 * a)).sort().values
    ks = float((u - torch.arange(1, u.numel() + 1, dtype=torch.float64) / u.numel()).abs().max())
    assert ks < 2.0 / math.sqrt(u.numel())


@pytest.mark.parametrize(
    "a,b",
    [((1, 5), (2, 5)), ((1, 5), (1, 6)), ((0, 0), (1, 1)), ((2**40, 3), (2**40 + 1, 3)), ((1, 2), (2, 1))],
)
def test_streams_are_uncorrelated(a, b):
    ra, rb = draws(*a), draws(*b)
    rho = float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
    assert abs(rho) < 6 / math.sqrt(N)
    assert not torch.equal(ra[:64], rb[:64])


def test_neighbours_are_uncorrelated():
    r = draws(3, 3)
    for lag in (1, 2, 32, 1024):
        rho = float(torch.corrcoef(torch.stack([r[:-lag], r[lag:]]))[0, 1])
        assert abs(rho) < 6 / math.sqrt(N), lag
