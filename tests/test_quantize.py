import itertools
import math

import pytest
import torch

from pqt_compile import PQTConfig, pack, parse_format, quantize, unpack
from pqt_compile.quantize import is_packing_of
from pqt_compile.formula import TorchOps, floor_log2, pow2, step_log2
from pqt_compile.blocks import block_amax

FORMATS = ["fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "fp3_e2m0", "int8", "int4", "int2"]


def format_values(name):
    """Every finite value of a format, enumerated from its definition (not from pqt code)."""
    s = parse_format(name)
    if s.is_int:
        m = 2 ** (s.bits - 1) - 1
        return {float(v) for v in range(-m, m + 1)}
    vals = set()
    for field, mant in itertools.product(range(2**s.exponent_bits), range(2**s.mantissa_bits)):
        e = s.emin if field == 0 else field - s.bias
        v = (mant if field == 0 else 2**s.mantissa_bits + mant) * 2.0 ** (e - s.mantissa_bits)
        if v <= s.max_value:
            vals.update({v, -v})
    return vals


def _w(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 96, generator=g) * torch.logspace(-2, 1, 96)
    w[0, :32] = 0
    return w


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("block", [32, "row", "tensor"])
def test_values_are_representable(fmt, block):
    cfg = PQTConfig(format=fmt, block_size=block)
    w = _w()
    q = quantize(w, axis=1, config=cfg)
    amax = block_amax(w, 1, cfg.block_code)
    o = TorchOps(torch.device("cpu"))
    k = floor_log2(o, torch.where(amax > 0, amax, torch.ones_like(amax))) - cfg.spec.emax
    x = (q / pow2(o, k)).reshape(-1).tolist()
    allowed = format_values(fmt)
    assert all(v in allowed for v in x)


@pytest.mark.parametrize("fmt", FORMATS)
def test_idempotent_and_half_step_and_saturation(fmt):
    cfg = PQTConfig(format=fmt)
    w = _w(1)
    q = quantize(w, axis=1, config=cfg)
    assert torch.equal(quantize(q, axis=1, config=cfg), q)
    # Δ and the range from the independent re-implementation (tests/formula_py.py), not pqt code.
    from conftest import fmt_dict
    from formula_py import block_amax_np, floor_log2 as flog2, step_np

    amax = block_amax_np(w.numpy(), 1, 32)
    fd = fmt_dict(cfg.spec)
    delta = torch.tensor([[step_np(float(v), float(a), fd) if a > 0 else 1.0 for v, a in zip(rw, ra)] for rw, ra in zip(w.tolist(), amax.tolist())])
    limit = torch.tensor([[cfg.spec.max_value * math.ldexp(1.0, flog2(a) - cfg.spec.emax) if a > 0 else 0.0 for a in ra] for ra in amax.tolist()])
    inside = w.abs() <= limit
    assert ((q - w).abs() <= delta / 2)[inside].all()
    # beyond the range: saturate to +-max * 2^k
    assert torch.equal(q[~inside], (torch.sign(w) * limit)[~inside])


def test_saturation_is_exercised():
    w = torch.full((1, 32), 7.9)  # 7.9 in a block of amax 7.9: x = 7.9 > max 6 of fp4_e2m1 (scale 1)
    q = quantize(w, axis=1, config=PQTConfig(format="fp4_e2m1"))
    assert torch.equal(q, torch.full((1, 32), 6.0))
    assert torch.equal(quantize(torch.full((1, 8), 127.6), axis=1, config=PQTConfig(format="int8")), torch.full((1, 8), 127.0))


def test_negative_values_that_round_to_zero_give_plus_zero():
    w = torch.tensor([[-1e-3, 1.0, -0.0, 5e-4] * 8])
    for fmt in ("int4", "fp4_e2m1"):
        q = quantize(w, axis=1, config=PQTConfig(format=fmt))
        zeros = q == 0
        assert zeros.any() and not torch.signbit(q[zeros]).any()


def test_tiny_blocks_of_wide_formats_do_not_turn_into_nan():
    w = torch.randn(2, 32) * 1e-36  # fp8_e5m2's step underflows fp32 here
    w[0, 3] = 0.0
    q = quantize(w, axis=1, config=PQTConfig(format="fp8_e5m2"))
    assert torch.isfinite(q).all() and (q - w).abs().max() <= w.abs().max()


def test_special_blocks():
    w = torch.randn(3, 64)
    w[0, :32] = 0
    w[1, 5] = float("nan")
    q = quantize(w, axis=1, config=PQTConfig(format="int4"))
    assert torch.equal(q[0, :32], w[0, :32])
    assert torch.equal(q[1, :32].nan_to_num(), w[1, :32].nan_to_num())


@pytest.mark.parametrize("fmt", FORMATS + ["int16", "fp9_e5m3"])
@pytest.mark.parametrize("block", [32, 5, "row", "tensor"])
@pytest.mark.parametrize("axis", [0, 1])
def test_pack_unpack_exact(fmt, block, axis):
    cfg = PQTConfig(format=fmt, block_size=block)
    w = _w(2)
    p = pack(w, axis=axis, config=cfg)
    assert p.codes.dtype == (torch.uint8 if cfg.spec.bits <= 8 else torch.int16)
    assert p.exponents.dtype == torch.int8 and p.codes.shape == w.shape
    nb = {32: math.ceil(w.shape[axis] / 32), 5: math.ceil(w.shape[axis] / 5), "row": 1}.get(block)
    if nb:
        assert p.exponents.shape[axis] == nb
    bits = torch.int32  # compare bit patterns: +0.0 and -0.0 must not be confused
    assert torch.equal(unpack(p).view(bits), quantize(w, axis=axis, config=cfg).view(bits))
    if cfg.spec.bits < 8:
        assert int(p.codes.max()) < 2**cfg.spec.bits  # codes use only the format's bits


def test_pack_bf16_and_errors():
    w = _w(3).to(torch.bfloat16)
    cfg = PQTConfig(format="fp8_e4m3")
    assert torch.equal(unpack(pack(w, axis=1, config=cfg)), quantize(w, axis=1, config=cfg))
    bad = _w(3)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        pack(bad, axis=1, config=cfg)


def _nvfp4_block_with_subnormal_scale() -> torch.Tensor:
    """A [2, 16] weight whose second block re-quantizes differently (quantize.py NOTE [re-quantizing
    NVFP4]): amax_t 3 gives s_t = 2^-9; w[1, 0] / (6 s_t) = 1.53 * 2^-9 rounds to the subnormal
    E4M3 s_b = 2^-8, and w[1, 0] / (s_b s_t) = 4.59 rounds to E2M1's 4 (the block's largest code)."""
    w = torch.full((2, 16), 1e-6)
    w[0, 0] = 3.0
    w[1, 0] = 3.5e-5
    return w


def test_nvfp4_alone_is_not_idempotent_and_a_known_packing_is_written_as_it_is():
    cfg = PQTConfig(format="nvfp4")
    w = _nvfp4_block_with_subnormal_scale()
    q = quantize(w, axis=1, config=cfg)
    assert q[1, 0].item() == 4 * 2.0**-17 and quantize(q, axis=1, config=cfg)[1, 0].item() == 6 * 2.0**-18
    p = pack(w, axis=1, config=cfg)
    assert is_packing_of(p, q, 1, cfg) and not is_packing_of(p, w, 1, cfg)
    assert pack(q, axis=1, config=cfg, known=p) is p and quantize(q, axis=1, config=cfg, known=p) is q
    assert not torch.equal(unpack(pack(q, axis=1, config=cfg)), q)  # without it: other values
    # The same values in another dtype (a model built in bf16, loaded with them): still its packing.
    assert is_packing_of(p, q.to(torch.bfloat16), 1, cfg) and torch.equal(q.to(torch.bfloat16).float(), q)
    # Not w's packing (other values, in any dtype, axis or format): w is packed afresh.
    assert not is_packing_of(p, w.to(torch.bfloat16), 1, cfg)
    assert not is_packing_of(p, q, 1, PQTConfig(format="fp4_e2m1", block_size=16))
    changed = q.clone()
    changed[0, 1] = 0.5
    assert torch.equal(unpack(pack(changed, axis=1, config=cfg, known=p)), quantize(changed, axis=1, config=cfg))


@pytest.mark.parametrize("fmt,block", [("fp8_e4m3", 4), ("nvfp4", 16)])
def test_an_all_zero_block_of_negative_zeros_quantizes_to_plus_zero_as_it_packs(fmt, block):
    """method.md: quantize returns +0.0 for every zero. A block of -0.0 (no scale: left as it was)
    kept its sign, while the packed form stores +0, so unpack(pack(w)) was not quantize(w) bit for
    bit (and a writer could not recognise the weight as its own packing)."""
    cfg = PQTConfig(format=fmt, block_size=block)
    w = torch.cat([torch.full((1, block), -0.0), torch.linspace(0.1, 1.0, block)[None]], dim=1)
    q = quantize(w, axis=1, config=cfg)
    assert not torch.signbit(q).any()
    assert torch.equal(unpack(pack(w, axis=1, config=cfg)).view(torch.int32), q.view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_all_zero_weight_packs_in_nvfp4(dtype):
    """A zero-initialised or pruned projection: its max |w| 0 has no tensor scale, and pack (so
    export.save and every NVFP4 writer) refused it, telling the user to set it to zero."""
    cfg = PQTConfig(format="nvfp4")
    w = torch.zeros(4, 32, dtype=dtype)
    w[1, 3] = -0.0
    p = pack(w, axis=1, config=cfg)
    assert not p.codes.any() and not p.scales.float().any() and p.tensor_exponent == 0
    q = quantize(w, axis=1, config=cfg)
    assert torch.equal(unpack(p).view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       q.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))  # +0 everywhere, bit for bit
    assert is_packing_of(p, q, 1, cfg)
    with pytest.raises(ValueError, match="outside"):  # tiny but not zero: still no tensor scale
        pack(torch.full((4, 32), 2.0**-110), axis=1, config=cfg)
