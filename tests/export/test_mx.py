"""The MXFP4 packer (export/mx.py) and the grouping of codes (export/codes.py)."""

import pytest
import torch

from pqt_compile import PQTConfig, quantize
from pqt_compile.export import ExportError
from pqt_compile.export.codes import grouped_codes
from pqt_compile.export.mx import NibbleOrder, e8m0_scales, pack_mxfp4, pack_nibbles, unpack_mxfp4


def _weight() -> torch.Tensor:
    """[8, 96]: magnitudes over five decades (many block scales), one all-zero block, one zero row."""
    torch.manual_seed(0)
    w = torch.randn(8, 96) * torch.logspace(-3, 2, 96)
    w[1, 32:64] = 0.0
    w[5] = 0.0
    return w


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.float().contiguous().view(torch.int32)


@pytest.mark.parametrize("fmt", ["fp4_e2m1", "int2", "int3"])
@pytest.mark.parametrize("block", [32, 64, "row", "tensor"])
@pytest.mark.parametrize("order", list(NibbleOrder))
def test_decoded_mxfp4_is_quantize_bit_for_bit(fmt, block, order):
    w = _weight()
    cfg = PQTConfig(format=fmt, block_size=block)
    m = pack_mxfp4(w, axis=1, config=cfg, order=order)
    assert m.packed.shape == (8, 48) and m.scales.shape == (8, 3) and m.blocks().shape == (8, 3, 16)
    assert torch.equal(_bits(unpack_mxfp4(m)), _bits(quantize(w, axis=1, config=cfg)))
    # The reduction axis goes last: a [K, N] weight packed along axis 0 gives the same bytes.
    t = pack_mxfp4(w.t().contiguous(), axis=0, config=cfg, order=order)
    assert torch.equal(t.packed, m.packed) and torch.equal(t.scales, m.scales)


def test_scale_byte_is_the_block_exponent_plus_127_and_zero_blocks_get_0():
    w = _weight()
    cfg = PQTConfig(format="fp4_e2m1")
    m = pack_mxfp4(w, axis=1, config=cfg, order=NibbleOrder.PAIRS)
    amax = w.abs().reshape(8, 3, 32).amax(-1)
    k = torch.floor(torch.log2(amax.double())) - 2  # OCP MX: floor(log2 amax) - emax(E2M1)
    want = torch.where(amax > 0, k + 127, torch.zeros_like(k)).to(torch.uint8)
    assert torch.equal(m.scales, want)
    assert m.scales[1, 1] == 0 and bool((m.scales[5] == 0).all())


def test_nibble_orders():
    codes = torch.arange(64, dtype=torch.uint8).reshape(1, 64) % 16
    pairs = pack_nibbles(codes, NibbleOrder.PAIRS)
    halves = pack_nibbles(codes, NibbleOrder.HALVES)
    assert pairs[0, 0] == (0 | 1 << 4) and pairs[0, 1] == (2 | 3 << 4)  # elements 2i, 2i+1
    assert halves[0, 0] == (0 | 0 << 4) and halves[0, 1] == (1 | 1 << 4)  # elements j, j+16 (16 % 16 = 0)
    assert halves[0, 16] == (32 % 16 | (48 % 16) << 4)  # the second 32-element block starts at byte 16


def test_int_codes_become_e2m1_codes_of_the_same_value():
    w = torch.tensor([[3.0, -3.0, 2.0, -2.0, 1.0, -1.0, 0.0, 0.5] * 4])  # int3 block amax 3 -> k = 0
    m = pack_mxfp4(w, axis=1, config=PQTConfig(format="int3"), order=NibbleOrder.PAIRS)
    assert m.scales.tolist() == [[127]]
    # E2M1 codes: 3.0 = 0b0101, 2.0 = 0b0100, 1.0 = 0b0010, sign in bit 3; 0.5 rounds to 0 (half to even)
    assert m.packed[0, :4].tolist() == [0x5 | 0xD << 4, 0x4 | 0xC << 4, 0x2 | 0xA << 4, 0x0]


@pytest.mark.parametrize("fmt,block,msg", [("fp8_e4m3", 32, "MXFP4 holds"), ("int4", 32, "MXFP4 holds"),
                                           ("fp4_e2m1", 16, "block_size 16 is not a multiple of 32")])
def test_refuses_what_mxfp4_cannot_hold(fmt, block, msg):
    with pytest.raises(ExportError, match=msg):
        pack_mxfp4(_weight(), axis=1, config=PQTConfig(format=fmt, block_size=block), order=NibbleOrder.PAIRS)


def test_refuses_an_axis_that_is_not_a_multiple_of_32():
    with pytest.raises(ExportError, match="reduction axis has 40 elements, not a multiple of 32"):
        pack_mxfp4(torch.randn(4, 40), axis=1, config=PQTConfig(format="fp4_e2m1", block_size="row"),
                   order=NibbleOrder.PAIRS, name="fc.weight")


def test_grouped_codes_lend_each_block_scale_to_its_groups():
    w = _weight()
    g = grouped_codes(w, axis=1, config=PQTConfig(format="int4", block_size=64), group=32)
    assert g.exponents.shape == (8, 3)
    assert torch.equal(g.exponents[:, 0], g.exponents[:, 1])  # one 64-block, two groups
    assert bool(g.zero[5].all()) and not bool(g.zero[0].any())
    assert e8m0_scales(grouped_codes(w, axis=1, config=PQTConfig(format="fp8_e4m3"), group=32)).dtype == torch.uint8


def test_stacked_expert_weights_keep_their_leading_dims():
    """gpt-oss keeps its experts as one [E, N, K] tensor; the packer keeps E and N."""
    w = torch.randn(3, 8, 64)
    cfg = PQTConfig(format="fp4_e2m1")
    m = pack_mxfp4(w, axis=2, config=cfg, order=NibbleOrder.PAIRS)
    assert m.blocks().shape == (3, 8, 2, 16) and m.scales.shape == (3, 8, 2)
    assert torch.equal(_bits(unpack_mxfp4(m)), _bits(quantize(w, axis=2, config=cfg)))
