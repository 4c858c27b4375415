"""NVFP4 through the op and the public API: the shard's tensor_amax argument (schema, eager, fake,
autograd), the refusals (block size, reduction axis, shards without the whole weight's amax), and
quantize / pack / unpack."""

from __future__ import annotations

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from pqt_compile import PQTConfig, pack, quantize, sample, unpack

OP = torch.ops.pqt.sample.default
OP_T = torch.ops.pqt.sample_t.default
NV = PQTConfig(format="nvfp4")


def _args(noise="gaussian", out=torch.float32):
    return (torch.tensor(11), torch.tensor(12), 1, "nvfp4", 16, noise, 1 / math.sqrt(12), out)


@pytest.mark.parametrize("noise", ["gaussian", "rtn"])
@pytest.mark.parametrize("rows,cols", [((8, 24), (0, 64)), ((0, 32), (16, 48))])
def test_a_shard_with_the_whole_amax_is_the_slice_of_the_whole_sample(noise, rows, cols):
    g = torch.Generator().manual_seed(0)
    full = torch.randn(32, 64, generator=g)
    full[30, 3] = 2.0**20  # the whole weight's amax lies outside every shard below
    whole = OP(full, *_args(noise))
    shard = full[rows[0]:rows[1], cols[0]:cols[1]].contiguous()
    place = ([64, 1], rows[0] * 64 + cols[0])
    got = OP(shard, *_args(noise), *place, full.abs().amax())
    assert torch.equal(got.view(torch.int32), whole[rows[0]:rows[1], cols[0]:cols[1]].view(torch.int32))
    # Its own amax gives another tensor scale; with a power-of-two one that changes only the
    # blocks whose E4M3 scale it moves into (or out of) E4M3's subnormals, which here are all.
    own = OP(shard, *_args(noise), place[0], place[1], shard.abs().amax())
    assert (own != got).float().mean() > 0.5


def test_a_shard_without_the_whole_amax_is_refused():
    shard = torch.randn(8, 32)
    with pytest.raises(ValueError, match="needs tensor_amax"):
        OP(shard, *_args(), [64, 1], 16)
    # a placement that is the identity is a whole weight: no amax needed
    assert torch.equal(OP(shard, *_args(), [32, 1], 0), OP(shard, *_args()))
    # other formats never need it
    OP(shard, torch.tensor(1), torch.tensor(2), 1, "fp4_e2m1", 32, "gaussian", 0.3, torch.float32, [64, 1], 16)


@pytest.mark.parametrize("bad,match", [(torch.tensor(0.5), "below the weight's own"), (torch.ones(2), "one element"),
                                       (torch.tensor(3), "floating tensor")])
def test_a_bad_tensor_amax_is_refused(bad, match):
    w = torch.ones(4, 16)
    with pytest.raises(ValueError, match=match):
        OP(w, *_args(), None, 0, bad)


def test_fake_and_autograd_take_the_new_argument():
    w = torch.randn(6, 32, requires_grad=True)
    amax = w.detach().abs().amax() * 2
    out = OP(w, *_args(out=torch.bfloat16), None, 0, amax)
    out.float().sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # the identity, in w's dtype
    t = OP_T(w, *_args(), None, 0, amax)
    assert torch.equal(t, OP(w, *_args(), None, 0, amax).t())
    w = w.detach()
    with FakeTensorMode() as mode:
        fw = mode.from_tensor(w)
        fake = OP_T(fw, *_args(out=torch.bfloat16), None, 0, mode.from_tensor(amax))
        assert fake.shape == (32, 6) and fake.dtype == torch.bfloat16
        with pytest.raises(ValueError, match="one element"):
            OP(fw, *_args(), None, 0, mode.from_tensor(torch.ones(3)))


def test_config_spelling_and_block_size():
    assert NV.block_size == 16 and NV.block_code == 16
    assert PQTConfig(format="nvfp4", block_size=16) == NV
    assert NV.replace(format="fp4_e2m1").block_size == 32  # the default follows the format
    assert PQTConfig(format="fp4_e2m1", block_size=16).replace(format="nvfp4").block_size == 16
    for bad in (32, 8, "row", "tensor"):
        with pytest.raises(ValueError, match="block_size 16 only"):
            PQTConfig(format="nvfp4", block_size=bad)
    assert PQTConfig.from_options(NV.to_options()) == NV


@pytest.mark.parametrize("shape,axis", [((8, 40), 1), ((40, 8), 0), ((3, 4, 24), -1)])
def test_a_reduction_axis_not_a_multiple_of_16_is_refused_with_the_fix(shape, axis):
    w = torch.randn(shape)
    for call in (lambda: sample(w, seed=1, axis=axis, config=NV), lambda: quantize(w, axis=axis, config=NV),
                 lambda: pack(w, axis=axis, config=NV)):
        with pytest.raises(ValueError, match=r"multiple of 16.*pad the layer's input dimension"):
            call()
    with pytest.raises(ValueError, match="block_size 16 only"):
        OP(torch.randn(4, 32), torch.tensor(1), torch.tensor(2), 1, "nvfp4", 32, "gaussian", 0.3, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("axis", [0, 1])
def test_pack_unpack_is_quantize_bit_for_bit(dtype, axis):
    g = torch.Generator().manual_seed(axis)
    w = (torch.randn(48, 64, generator=g) * torch.logspace(-6, 0, 64)).to(dtype)
    w.select(1 - axis, 5).zero_()  # zero blocks: scale 0
    p = pack(w, axis=axis, config=NV)
    assert p.exponents is None and p.scales.dtype == torch.float8_e4m3fn and p.codes.dtype == torch.uint8
    assert p.scales.shape == ((48, 4) if axis == 1 else (3, 64))
    q = quantize(w, axis=axis, config=NV)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(unpack(p).view(bits), q.view(bits))
    assert int(p.codes.max()) < 16 and (p.scales.float() <= 448).all()
    # every deployed value is e2m1 * s_b * 2^k_t exactly: it has at most 6 significant bits
    mant = q.float().abs().frexp().mantissa * 64
    assert torch.equal(mant, mant.round())


def test_pack_refuses_what_it_cannot_store():
    with pytest.raises(ValueError, match="NaN or Inf"):
        pack(torch.full((2, 16), float("nan")), axis=1, config=NV)
    with pytest.raises(ValueError, match=r"outside \[2\^-100, 2\^100\)"):
        pack(torch.full((2, 16), 1e-35), axis=1, config=NV)
    tiny = torch.full((2, 16), 1e-35)
    assert torch.equal(quantize(tiny, axis=1, config=NV), tiny)  # left as it is (docs/method.md)


def test_a_tensor_amax_below_the_weights_own_samples_to_nan_under_compile():
    """formula_nvfp4.block_params: eager refuses such an amax; compiled code cannot without a
    device sync, and sampled the weight almost clean (every scale at E4M3's floor), silently. Now
    the blocks above the given amax are NaN; the right amax is bit-exact with eager."""
    import pqt_compile.compiler.lowering  # noqa: F401  (the Inductor lowering of pqt.sample)

    torch._dynamo.reset()
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    f = lambda w, a: OP(w, torch.tensor(1), torch.tensor(2), 1, "nvfp4", 16, "gaussian", 0.3, torch.float32, None, 0, a)  # noqa: E731
    low = torch.tensor([0.5])
    with pytest.raises(ValueError, match="below the weight's own max"):
        f(w, low)
    cf = torch.compile(f, fullgraph=True)
    got = cf(w, low)
    over = w.abs().reshape(4, 2, 16).amax(-1) > 2688 * 2.0**-12  # s_t of amax 0.5 is 2^-12
    assert over.any() and torch.isnan(got.reshape(4, 2, 16)[over]).all() and not torch.isnan(got.reshape(4, 2, 16)[~over]).any()
    right = w.abs().amax().reshape(1)
    assert torch.equal(cf(w, right).view(torch.int32), f(w, right).view(torch.int32))
