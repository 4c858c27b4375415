"""NVFP4's formula (formula_nvfp4.py, rounding.nvfp4_*) against the independent re-implementation
in exact rationals (nvfp4_py.py), bit for bit, on adversarial tensors: tensor amax across 2^-100 ..
2^100 and at the exact boundaries of the tensor-scale rule, blocks far below their tensor (E4M3
subnormal scales and the 2^-9 floor), exact E4M3 and E2M1 ties, zeros of both signs, zero blocks,
zero / NaN / Inf / tiny / huge tensors, bf16 weights, a negative key."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
import torch

import nvfp4_py
from pqt_compile import PQTConfig, parse_format, quantize
from pqt_compile.formula import TorchOps, block_params
from pqt_compile.formula_nvfp4 import block_scale, e4m3_round, step_units, tensor_exponent, tensor_params

OP = torch.ops.pqt.sample.default
SEED, KEY = -(2**40) + 7, 2**31 + 9
MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


@lru_cache(maxsize=None)
def _scale(amax_b: float, amax_t: float):
    return nvfp4_py.scales(amax_b, amax_t)


def with_ties(w: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """w with some elements set to exact E2M1 mid-points m S of their block (the block's amax kept)."""
    w = w.clone()
    blocks = w.view(w.shape[0], -1, 16)
    amax_t = float(w.abs().max())
    for r in range(blocks.shape[0]):
        for b in range(blocks.shape[1]):
            s = _scale(float(blocks[r, b].abs().max()), amax_t)
            if s is None:
                continue
            for j in torch.randint(0, 16, (3,), generator=g).tolist():
                m = MIDPOINTS[int(torch.randint(0, len(MIDPOINTS), (1,), generator=g))]
                v = float(m * s)
                if v < float(blocks[r, b].abs().max()) and float(np.float32(v)) == v:
                    blocks[r, b, j] = v if j % 2 else -v
    return w


def adversarial(seed: int = 0) -> list[torch.Tensor]:
    """Weights [8, 64] (fp32) whose sample and deployed values the tests check element by element."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(14):  # tensors across the range, blocks across 40 binades below their tensor
        w = torch.randn(8, 64, generator=g, dtype=torch.float64) * 2.0 ** float(torch.randint(-95, 95, (1,), generator=g))
        w = w * torch.pow(2.0, -torch.randint(0, 40, (8, 4, 1), generator=g).double()).expand(8, 4, 16).reshape(8, 64)
        w = w.float()
        w[0, :16] = 0.0  # a zero block
        w[1, 3::7] = -0.0
        w[2, 5::5] = 0.0
        out.append(with_ties(w, g))
    for k in (-20, 0, 7):  # the tensor-scale rule at its boundaries: amax = 2688 2^k exactly, one ulp above / below
        for amax in (2688.0 * 2.0**k, float(np.nextafter(np.float32(2688.0 * 2.0**k), np.float32(np.inf))),
                     float(np.nextafter(np.float32(2688.0 * 2.0**k), np.float32(0))), 1.3125 * 2.0 ** (k + 11),
                     2.0 ** (k + 12)):
            w = torch.randn(8, 64, generator=g) * (amax / 4)
            w = w.clamp(-amax, amax)
            w[3, 9] = -amax
            out.append(with_ties(w, g))
    bf = (torch.randn(8, 64, generator=g) * 0.02).to(torch.bfloat16).float()  # few bits: ties are frequent
    out.append(with_ties(bf, g))
    e4m3_ties = torch.zeros(8, 64)  # block amax / (6 s_t) exactly at an E4M3 mid-point
    e4m3_ties[:, 0] = 2688.0  # s_t = 1
    mids = torch.tensor([0.0029296875, 0.0068359375, 17.0, 19.0, 34.0, 240.0, 272.0, 432.0])  # (v + v') / 2
    e4m3_ties.view(8, 4, 16)[:, 1:, 3] = (mids[:, None] * 6).expand(8, 3)
    e4m3_ties.view(8, 4, 16)[:, 1:, 5] = (mids[:, None] * 6 * 0.75).expand(8, 3)
    out.append(e4m3_ties)
    return out


def reference_sample(w: torch.Tensor, noise: str, std: float, out: str, key: int = KEY) -> torch.Tensor:
    flat = w.reshape(-1).tolist()
    amax_t = float(w.abs().max()) if not w.isnan().any() else float("nan")
    amax_b = w.abs().view(-1, 16).amax(1).repeat_interleave(16).tolist()
    vals = []
    for i, (x, a) in enumerate(zip(flat, amax_b)):
        s = _scale(a, amax_t) if math.isfinite(amax_t) else None
        if s is None or key < 0:
            vals.append(nvfp4_py.round_to(np.float32(x), out))
        else:
            vals.append(nvfp4_py.sample_element(x, a, amax_t, i, SEED, key, noise, std, out))
    return torch.tensor(vals, dtype=torch.float64).to(getattr(torch, out)).view(w.shape)


def reference_deployed(w: torch.Tensor) -> torch.Tensor:
    amax_t = float(w.abs().max()) if not w.isnan().any() else float("nan")
    amax_b = w.abs().view(-1, 16).amax(1).repeat_interleave(16).tolist()
    vals = [nvfp4_py.deployed(x, a, amax_t) if math.isfinite(amax_t) else x
            for x, a in zip(w.reshape(-1).tolist(), amax_b)]
    return torch.tensor(vals, dtype=torch.float32).view(w.shape)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[a.dtype]
    return a.dtype == b.dtype and torch.equal(a.view(bits), b.view(bits))


@pytest.mark.parametrize("noise,std,out", [("gaussian", 1 / math.sqrt(12), "float32"), ("uniform", 0.37, "float32"),
                                           ("gaussian", 1.3, "bfloat16")])
def test_sample_is_bit_exact_against_the_rationals(noise, std, out):
    moved = 0
    for w in adversarial(seed=1):
        got = OP(w, torch.tensor(SEED), torch.tensor(KEY), 1, "nvfp4", 16, noise, std, getattr(torch, out))
        assert same_bits(got, reference_sample(w, noise, std, out))
        moved += int((got.float() != w).sum())
    assert moved > 10000  # real samples are compared, not copies of w


def test_deployed_values_are_the_exact_nearest_points():
    ties = 0
    for w in adversarial(seed=2):
        got = OP(w, torch.tensor(0), torch.tensor(0), 1, "nvfp4", 16, "rtn", 0.0, torch.float32)
        want = reference_deployed(w)
        assert same_bits(got, want)
        assert same_bits(quantize(w, axis=1, config=PQTConfig(format="nvfp4")), want)
        amax_t = float(w.abs().max())
        for x, a in zip(w.reshape(-1).tolist(), w.abs().view(-1, 16).amax(1).repeat_interleave(16).tolist()):
            s = _scale(a, amax_t)
            ties += s is not None and x != 0 and float(abs(x) / s) in MIDPOINTS
    assert ties > 200  # exact ties were decided (round half to even), not only easy cases


def test_tensor_scale_rule():
    """k_t is the smallest integer with 2688 2^k_t >= amax_t, found without a division or a log."""
    o = TorchOps(torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    amax = torch.pow(2.0, torch.rand(4000, generator=g, dtype=torch.float64) * 199 - 99.5).float()
    edges = [2688.0 * 2.0**k for k in range(-100, 80, 7)]
    edges += [float(np.nextafter(np.float32(e), np.float32(np.inf))) for e in edges]
    edges += [1.3125 * 2.0**e for e in range(-90, 90, 9)] + [2.0**-100, 2.0**100, 2.0**-101, float("nan"), float("inf"), 0.0]
    amax = torch.cat([amax, torch.tensor(edges, dtype=torch.float32)])
    valid, k = tensor_exponent(o, amax)
    want = [nvfp4_py.tensor_exponent(a) for a in amax.tolist()]
    assert valid.tolist() == [x is not None for x in want]
    assert [int(x) for x, v in zip(k.tolist(), want) if v is not None] == [v for v in want if v is not None]
    s_t, s_inv = tensor_params(o, amax)
    assert torch.equal(s_t[valid] * s_inv[valid], torch.ones(int(valid.sum())))
    assert (s_t[~valid] == -1).all()
    assert (2688 * s_t[valid].double() >= amax[valid].double()).all() and (1344 * s_t[valid].double() < amax[valid].double()).all()
    # a negative key switches the tensor off
    assert (tensor_params(o, amax, live=torch.tensor(False))[0] == -1).all()


def test_e4m3_rounding_and_block_scale_floor():
    o = TorchOps(torch.device("cpu"))
    table = sorted(v for v, _ in nvfp4_py.E4M3)
    mids = [(a + b) / 2 for a, b in zip(table, table[1:])]
    x = torch.tensor([float(v) for v in table + mids], dtype=torch.float32)
    x = torch.cat([x, torch.rand(5000, generator=torch.Generator().manual_seed(4)) * 448, torch.tensor([2.0**-11, 2.0**-10])])
    assert torch.equal(torch.tensor([float(v) for v in mids], dtype=torch.float32), x[len(table):len(table) + len(mids)])
    got = e4m3_round(o, x)
    want = torch.tensor([float(nvfp4_py.nearest_even(nvfp4_py.E4M3, float(v))[0]) for v in x.tolist()])
    assert torch.equal(got, want)
    assert torch.equal(got, x.to(torch.float8_e4m3fn).float())  # torch's own cast agrees (ties to even, subnormals)
    # the floor: a non-zero block far below its tensor still gets the smallest E4M3 scale, 2^-9
    s = block_scale(o, torch.tensor([1e-30, 0.0]), torch.tensor(1.0))
    assert s.tolist() == [2.0**-9, 2.0**-9]


@pytest.mark.parametrize("case", ["zero", "nan", "inf", "tiny", "huge", "bf16"])
def test_tensors_without_scales_are_left_as_they_are(case):
    w = torch.randn(4, 32)
    if case == "zero":
        w = torch.zeros(4, 32)
        w[1, 3] = -0.0
    elif case == "nan":
        w[2, 7] = float("nan")
    elif case == "inf":
        w[0, 0] = -float("inf")
    elif case == "tiny":
        w = w / w.abs().max() * 2.0**-101
    elif case == "huge":
        w = w / w.abs().max() * 2.0**100
    else:  # a bf16 weight with amax in range: it does move (the control case)
        w = w.to(torch.bfloat16)
    for noise in ("gaussian", "rtn"):
        got = OP(w, torch.tensor(SEED), torch.tensor(KEY), 1, "nvfp4", 16, noise, 0.3, w.dtype)
        want = w if noise == "gaussian" else w.where(w != 0, 0.0)  # round to nearest: every zero +0 (method.md)
        same = torch.equal(got.nan_to_num(), want.nan_to_num()) and torch.equal(got.isnan(), want.isnan())
        same = same and torch.equal(got.nan_to_num().view(torch.int32 if w.dtype == torch.float32 else torch.int16),
                                    want.nan_to_num().view(torch.int32 if w.dtype == torch.float32 else torch.int16))
        assert same == (case != "bf16"), (case, noise)


def test_a_negative_key_leaves_w():
    w = adversarial(seed=5)[0]
    for noise in ("gaussian", "rtn"):
        got = OP(w, torch.tensor(SEED), torch.tensor(-1), 1, "nvfp4", 16, noise, 0.3, torch.float32)
        assert same_bits(got, w if noise == "gaussian" else w.where(w != 0, 0.0))  # round to nearest: zeros +0
    assert same_bits(reference_sample(w, "gaussian", 0.3, "float32", key=-1), w)


def test_noise_is_the_rounding_step_there():
    """Δ = p S (step_units) is the spacing of the deployed grid at w: every deployed value is
    within Δ/2 of w where |w| / S <= 6 (= only at an exact tie), and the sample's noise is Δ r."""
    o = TorchOps(torch.device("cpu"))
    g = torch.Generator().manual_seed(6)
    w = torch.randn(256, 1024, generator=g) * torch.rand(256, 64, 1, generator=g).expand(256, 64, 16).reshape(256, 1024)
    w = w.to(torch.bfloat16).float()  # 8-bit values: some fall exactly on mid-points
    amax_b = w.abs().view(-1, 16).amax(1).repeat_interleave(16).view(w.shape)
    tensor = tensor_params(o, w.abs().max())
    from pqt_compile.formula_nvfp4 import block_params as nv_block_params

    (scale,) = nv_block_params(o, amax_b, tensor)
    delta = step_units(o, w.abs(), scale).double() * scale.double()
    deployed = quantize(w, axis=1, config=PQTConfig(format="nvfp4")).double()
    inside = w.abs().double() <= 6 * scale.double()
    err = (deployed - w.double())[inside]
    assert (err.abs() <= delta[inside] / 2).all()
    # Beyond 6 S (in blocks whose E4M3 scale was rounded down, < 6.4 S): saturated at 6 S.
    assert (~inside).any() and torch.equal(deployed[~inside], (6 * scale.double() * w.sign().double())[~inside])
    half = err.abs() == delta[inside] / 2  # only at exact ties: |w| / S a mid-point of E2M1's grid
    units = (w.abs().double() / scale.double())[inside][half]
    assert half.any() and torch.isin(units, torch.tensor(MIDPOINTS, dtype=torch.float64)).all()
    noise = (OP(w, torch.tensor(3), torch.tensor(4), 1, "nvfp4", 16, "gaussian", 1 / math.sqrt(12), torch.float32).double()
             - w.double()) / delta
    n = noise.numel()
    assert abs(float(noise.mean())) < 6 * (1 / math.sqrt(12)) / math.sqrt(n)
    assert abs(float(noise.std()) * math.sqrt(12) - 1) < 6 * math.sqrt((2.7 - 1) / (4 * n))
    wrong = noise * 1.02  # the same check rejects a noise 2% too large
    assert not abs(float(wrong.std()) * math.sqrt(12) - 1) < 6 * math.sqrt((2.7 - 1) / (4 * n))


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fma(a, b, c) in float32 (one rounding), emulated in float64 where that is exact: a * b of
    two fp32 is exact in fp64, and the sum is exact when it needs <= 53 bits (returned mask)."""
    p = a.astype(np.float64) * b.astype(np.float64)
    s = p + c.astype(np.float64)
    exact = (s - p) == c.astype(np.float64)  # no bits lost in the fp64 add (both ways round-trip)
    exact &= (s - c.astype(np.float64)) == p
    return s.astype(np.float32), exact


def test_a_fused_multiply_add_cannot_change_the_sample():
    """NOTE [exact products]: the product that meets the add is p (S r) with p a power of two, so
    fma(p, S r, w) == w + p (S r). The naive order w + (p S) r would not be safe."""
    o = TorchOps(torch.device("cpu"))
    g = torch.Generator().manual_seed(7)
    w = torch.randn(64, 1024, generator=g)
    amax_b = w.abs().view(-1, 16).amax(1).repeat_interleave(16).view(w.shape)
    from pqt_compile.formula_nvfp4 import block_params as nv_block_params

    (scale,) = nv_block_params(o, amax_b, tensor_params(o, w.abs().max()))
    r = torch.randn(w.shape, generator=g) * 0.3
    p = step_units(o, w.abs(), scale)
    sr = scale * r
    ours = w + p * sr
    fused, exact = _fma(p.numpy(), sr.numpy(), w.numpy())
    assert exact.mean() > 0.99 and np.array_equal(fused[exact], ours.numpy()[exact])
    naive = w + (p * scale) * r
    fused_naive, exact_n = _fma((p * scale).numpy(), r.numpy(), w.numpy())
    assert (fused_naive[exact_n] != naive.numpy()[exact_n]).any()  # a contracted naive order gives other bits


def test_power_of_two_paths_refuse_nvfp4():
    spec = parse_format("nvfp4")
    assert spec.two_level and spec.max_value == 6.0 and spec.mantissa_bits == 1
    o = TorchOps(torch.device("cpu"))
    with pytest.raises(ValueError, match="E4M3 block scales"):
        block_params(o, torch.tensor(1.0), spec)
