"""Bit-exact checks of the formula against the independent re-implementation, and its special cases."""

import math
import random

import pytest
import torch

from conftest import fmt_dict
from formula_py import block_amax_np, sample_element
from pqt_compile import PQTConfig, parse_format, sample

FORMATS = ["fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "fp5_e3m1", "int8", "int4", "int2"]


def check_against_python(w, axis, cfg, seed, key, out_dtype, n_checks=64, rng=None):
    got = sample(w, seed=seed, key=key, axis=axis, config=cfg, out_dtype=out_dtype)
    amax = block_amax_np(w.float().numpy(), axis % w.dim(), cfg.block_size).reshape(-1)  # independent of pqt_compile
    flat_w = w.float().contiguous().reshape(-1)
    flat_got = got.float().reshape(-1)
    rng = rng or random.Random(0)
    idx = list(range(w.numel())) if w.numel() <= n_checks else rng.sample(range(w.numel()), n_checks)
    out = str(out_dtype).split(".")[1]
    for i in idx:
        want = sample_element(float(flat_w[i]), float(amax[i]), i, seed, key, fmt_dict(cfg.spec), cfg.noise, cfg.noise_std, out)
        g = float(flat_got[i])
        assert g == want or (math.isnan(g) and math.isnan(want)), (i, g, want)
    return got


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_bit_exact_against_independent_implementation(fmt, noise):
    torch.manual_seed(hash(fmt) % 1000)
    w = torch.randn(6, 100) * torch.logspace(-3, 2, 100)  # many exponents per block
    w[2, 5] = 0.0
    cfg = PQTConfig(format=fmt, noise=noise, noise_std=0.37 if noise == "uniform" else 1 / math.sqrt(12))
    check_against_python(w, 1, cfg, seed=123456789012, key=0xDEADBEEF, out_dtype=torch.float32, n_checks=600)


@pytest.mark.parametrize("dtype,out", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), (torch.float32, torch.bfloat16), (torch.float32, torch.float16)])
def test_dtypes_single_rounding(dtype, out):
    w = (torch.randn(8, 64) * 0.05).to(dtype)
    check_against_python(w, 1, PQTConfig(format="fp4_e2m1"), seed=-5, key=7, out_dtype=out, n_checks=512)


@pytest.mark.parametrize("block", [32, 7, "row", "tensor"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_blocks_and_axes(block, axis):
    w = torch.randn(40, 70) * torch.rand(40, 1) * 10
    check_against_python(w, axis, PQTConfig(block_size=block), seed=1, key=2, out_dtype=torch.float32, n_checks=300)


def test_a_negative_key_adds_no_noise():
    """The compiled path's per-weight switch (graph_abi.DISABLED_KEY): the op returns w, cast."""
    w = torch.randn(8, 64)
    op = torch.ops.pqt.sample.default
    for out in (torch.float32, torch.bfloat16):
        got = op(w, torch.tensor(3), torch.tensor(-1), 1, "fp4_e2m1", 32, "gaussian", 0.3, out)
        assert torch.equal(got, w.to(out))
    spec = fmt_dict(parse_format("fp4_e2m1"))
    assert sample_element(0.25, 0.5, 3, 3, -1, spec, "gaussian", 0.3, "float32") == 0.25  # the re-implementation agrees
    assert sample_element(0.25, 0.5, 3, 3, 1, spec, "gaussian", 0.3, "float32") != 0.25


def test_batched_weight_and_tiny_shapes():
    cfg = PQTConfig(format="int4")
    check_against_python(torch.randn(3, 5, 9), 1, cfg, 3, 4, torch.float32)
    check_against_python(torch.randn(1, 1), 0, cfg, 3, 4, torch.float32)
    check_against_python(torch.randn(1, 45), 1, cfg, 3, 4, torch.float32)


def test_zero_block_gives_w():
    w = torch.randn(4, 64)
    w[1, :32] = 0.0
    w[2, 32:] = -0.0
    out = sample(w, seed=1, key=1, axis=1)
    assert torch.equal(out[1, :32], w[1, :32]) and torch.equal(out[2, 32:].view(torch.int32), w[2, 32:].view(torch.int32))
    assert not torch.equal(out[1, 32:], w[1, 32:])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_block_gets_no_noise_and_stays_put(bad):
    w = torch.randn(3, 96)
    w[1, 40] = bad
    out = sample(w, seed=9, key=9, axis=1)
    blk = slice(32, 64)
    assert torch.equal(out[1, blk], w[1, blk]) if not math.isnan(bad) else (
        torch.equal(out[1, blk].nan_to_num(), w[1, blk].nan_to_num()) and out[1, 40].isnan()
    )
    assert not torch.equal(out[1, :32], w[1, :32]) and not torch.equal(out[0], w[0])


def test_fp32_subnormal_amax_is_exact():
    w = torch.randn(2, 64) * 1e-40  # subnormal in fp32
    w[1] = torch.randn(64) * 1e-44
    assert (w.abs().max() < 2**-126).item()
    got = check_against_python(w, 1, PQTConfig(format="int8"), 11, 12, torch.float32, n_checks=128)
    assert torch.isfinite(got).all() and not torch.equal(got, w)


def test_partial_last_block_uses_only_its_own_elements():
    w = torch.randn(2, 70)
    w[:, 64:] *= 1e-3  # the last block (6 elements) is tiny: its step must be tiny too
    noise = sample(w, seed=4, key=4, axis=1) - w
    # fp6_e3m2 (M = 2): |noise| <= 3.45 sd * Δ/sqrt(12) with Δ <= amax/4 -> < 0.5 amax of that block.
    assert noise[:, 64:].abs().max() < 0.5 * w[:, 64:].abs().max()
    assert noise[:, :64].abs().max() > 1e-2


def test_noise_does_not_depend_on_strides():
    base = torch.randn(48, 80)
    nc = base.t().contiguous().t()  # same logical values, column-major storage
    assert not nc.is_contiguous()
    a = sample(base, seed=5, key=6, axis=1)
    b = sample(nc, seed=5, key=6, axis=1)
    assert torch.equal(a, b)
    sl = torch.randn(48, 160)[:, ::2]  # a strided slice
    assert torch.equal(sample(sl, seed=5, key=6, axis=1), sample(sl.contiguous(), seed=5, key=6, axis=1))


def test_beyond_range_is_not_clipped():
    cfg = PQTConfig(format="fp4_e2m1", noise_std=1.0)
    w = torch.full((1, 32), 7.9)  # x = 7.9 > 6 = max of fp4_e2m1 in the block's scale
    out = sample(w, seed=1, key=1, axis=1, config=cfg)
    assert (out > 7.9).any() and (out < 7.9).any()


@pytest.mark.parametrize(
    "w,kw,exc,match",
    [
        (torch.ones(4, 4, dtype=torch.int32), {}, TypeError, "float32"),
        (torch.ones(4, 4, dtype=torch.complex64), {}, TypeError, "float32"),
        (torch.ones(4, dtype=torch.float32), {}, ValueError, "at least 2 dims"),
        (torch.ones(4, 4), {"axis": 2}, ValueError, "axis 2 is out of range"),
        (torch.ones(0, 4), {}, ValueError, "empty"),
        (torch.ones(4, 4, dtype=torch.bfloat16), {"config": PQTConfig(format="int12")}, ValueError, "resolution"),
        (torch.ones(4, 4), {"out_dtype": torch.bfloat16, "config": PQTConfig(format="int10")}, ValueError, "resolution"),
        (torch.ones(4, 4), {"seed": 1.5}, ValueError, "seed"),
    ],
)
def test_bad_inputs_say_what_is_wrong(w, kw, exc, match):
    kw = {"seed": 0, **kw}
    with pytest.raises(exc, match=match):
        sample(w, **kw)
