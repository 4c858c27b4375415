"""NVFP4 against a peer: torchao 0.18's NVFP4 quantizer (torchao.prototype.mx_formats, the numerics
of its NVFP4Tensor and of NVFP4FakeQuantizeConfig), on the CPU.

Given our tensor scale 2^k_t, torchao's codes and E4M3 scales equal ours except where one of
three stated rules differs, and each difference is pinned to its cause, element by element:
(a) torchao clamps a block scale to E4M3's smallest normal 2^-6 (a zero block included); we use
    E4M3's subnormals down to 2^-9 (and 0 for a zero block);
(b) torchao scales an element by a rounded reciprocal, w * ((1 / s_t) / s_b); we divide,
    w / (s_b s_t), which finds the nearest E2M1 point of the exact quotient: they differ only
    where the quotient lies on (or within rounding of) a mid-point of E2M1's grid;
(d) a negative weight that rounds to zero: torchao stores -0 (code 8), we store +0 (code 0), as
    quantize returns one zero;
(c) torchao's default tensor scale is amax / 2688; ours is the power of two at or above it
    (formula_nvfp4.py NOTE [power-of-two tensor scale]), so with its own scale its block scales
    land on another E4M3 grid. Our packed weight, handed to torchao's NVFP4Tensor with our tensor
    scale, dequantizes to quantize_model's values bit for bit: it is a valid NVFP4 encoding.
"""

from __future__ import annotations

import pytest
import torch

from pqt_compile import PQTConfig, pack, quantize
from pqt_compile.formula import TorchOps
from pqt_compile.rounding import nvfp4_units

from torchao.prototype.mx_formats import nvfp4_tensor  # noqa: E402  the test extra installs it: a missing package fails
from torchao.prototype.mx_formats.kernels import unpack_uint4  # noqa: E402

pytestmark = pytest.mark.third_party  # goes through another library (torchao)

NV = PQTConfig(format="nvfp4")
MIDPOINTS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=torch.float64)
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)


def weights(dtype: torch.dtype) -> torch.Tensor:
    """Blocks across 24 binades below the tensor's amax (many with E4M3 subnormal scales), zero blocks."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(128, 512, generator=g) * torch.pow(2.0, -torch.randint(0, 24, (128, 32, 1), generator=g).float()).expand(
        128, 32, 16).reshape(128, 512)
    w[5, 32:48] = 0.0
    return w.to(dtype)


def torchao_nvfp4(w: torch.Tensor, per_tensor_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E4M3 scales as float32 [rows, K/16], E2M1 codes uint8 [rows, K]) from torchao's quantizer."""
    scales, data = nvfp4_tensor.nvfp4_quantize(w.contiguous(), 16, per_tensor_scale)
    return scales.float(), unpack_uint4(data.view(torch.uint8)).view(w.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_tensor_scale_same_codes_but_for_the_clamp_and_the_ties(dtype):
    w = weights(dtype)
    ours = pack(w, axis=1, config=NV)
    s_t = 2.0**ours.tensor_exponent
    ta_scales, ta_codes = torchao_nvfp4(w, torch.tensor(s_t))
    our_scales = ours.scales.float()
    # (a) scales: equal, except where ours is below 2^-6 (or 0): there torchao's is 2^-6.
    differ = ta_scales != our_scales
    assert torch.equal(differ, our_scales < 2.0**-6)
    assert (ta_scales[differ] == 2.0**-6).all() and differ.any() and (our_scales == 0).any()
    clamped = differ.repeat_interleave(16, dim=1)

    # (d) torchao's -0 is our +0 (in blocks of the same scale; in clamped ones it is (a)'s -0).
    minus_zero = ta_codes == 8
    same = minus_zero & ~clamped
    assert same.any() and (ours.codes[same] == 0).all() and (w[minus_zero] < 0).all()
    ta_codes = torch.where(minus_zero, torch.zeros_like(ta_codes), ta_codes)

    # (b) codes: ours, or in a clamped block ours recomputed with torchao's S = 2^-6 s_t (our
    # rounding.nvfp4_units), equal torchao's except at E2M1 mid-points of |w| / S, where torchao's
    # reciprocal rounding can land on the other neighbour.
    o = TorchOps(torch.device("cpu"))
    absw = w.float().abs()
    scale = torch.where(clamped, 2.0**-6, our_scales.repeat_interleave(16, dim=1)) * s_t
    our_q = torch.where(clamped, nvfp4_units(o, absw, scale).double(), E2M1[(ours.codes & 7).long()])
    ta_q = E2M1[(ta_codes & 7).long()]
    u = absw.double() / scale.double()  # w has <= 24 bits, S 4: the fp64 quotient is within 2^-52 of the exact one
    off = ta_q != our_q
    nearest_mid = MIDPOINTS[(u[..., None] - MIDPOINTS).abs().argmin(-1)]
    assert ((u - nearest_mid).abs() <= 2.0**-22 * nearest_mid)[off].all()  # every difference sits at a mid-point
    lo_hi = torch.stack([our_q[off], ta_q[off]]).sort(0).values  # ...and the two codes are its two neighbours
    mids = nearest_mid[off]
    step = torch.where(mids < 2, 0.5, torch.where(mids < 4, 1.0, 2.0)).double()
    assert torch.equal(lo_hi[0], mids - step / 2) and torch.equal(lo_hi[1], mids + step / 2)
    if dtype == torch.bfloat16:  # 8-bit weights fall on exact mid-points: torchao breaks some ties the other way
        assert off.any() and (u[off] == mids).all()  # exact ties, which we round half to even:
        units = our_q[off] / step  # our value in steps of the grid there: an even count
        assert torch.equal(units % 2, torch.zeros_like(units))
    else:
        assert not off.any()  # fp32 weights of this draw have no tie: every code agrees
    # and the signs agree wherever the value is not zero
    nonzero = our_q > 0
    assert torch.equal((ta_codes >= 8)[nonzero], (w < 0)[nonzero])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_our_encoding_dequantizes_in_torchao_to_quantize_model(dtype):
    w = weights(dtype)
    p = pack(w, axis=1, config=NV)
    packed = (p.codes[:, 0::2] | (p.codes[:, 1::2] << 4)).contiguous()  # torchao's nibble order: element 2i low
    t = nvfp4_tensor.NVFP4Tensor(packed, p.scales, 16, dtype, torch.tensor(2.0**p.tensor_exponent), None, False, False)
    want = quantize(w, axis=1, config=NV)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(t.dequantize(dtype).view(bits), want.view(bits))


def test_torchaos_own_tensor_scale_is_the_unrounded_one():
    """(c): torchao's s_t = amax / 2688; ours is the power of two s_t' with s_t <= s_t' < 2 s_t.
    With its own s_t every block's E4M3 scale is rounded on a shifted grid, so codes differ widely
    (one in ten here) although both are nearest-point encodings of the same weights."""
    w = weights(torch.float32)
    amax = w.abs().max()
    ta_st = nvfp4_tensor.per_tensor_amax_to_scale(amax)
    assert torch.equal(ta_st, amax / 2688.0)
    ours = 2.0 ** pack(w, axis=1, config=NV).tensor_exponent
    assert float(ta_st) <= ours < 2 * float(ta_st)
    _, ta_codes = torchao_nvfp4(w, ta_st)
    _, same_scale_codes = torchao_nvfp4(w, torch.tensor(ours))
    assert (ta_codes != same_scale_codes).float().mean() > 0.05  # 9.9% with this seed
