"""Round to nearest (rounding.py): the magic-number form gives exactly the bits of the textbook
form clamp(round_half_even(w / Δ) Δ, ±max_F 2^k_b), on the adversarial inputs of the formula
tests (every binade, subnormal and tiny blocks, both zeros, NaN and Inf blocks) and on exact ties."""

import pytest
import torch

from pqt_compile import PQTConfig, parse_format, quantize
from pqt_compile.formula import TorchOps, floor_log2, pow2, step_log2
from pqt_compile.rounding import rtn_value

from test_formula_forms import FORMATS, adversarial


def rtn_textbook(w: torch.Tensor, amax: torch.Tensor, spec) -> torch.Tensor:
    """The reference: a division and torch.round, per element, from method.md's Δ and k_b."""
    o = TorchOps(torch.device("cpu"))
    valid = (amax > 0) & torch.isfinite(amax)
    safe_amax = torch.where(valid, amax, torch.ones_like(amax))
    absw = torch.where(torch.isfinite(w), w.abs(), torch.zeros_like(w))
    delta = pow2(o, step_log2(o, absw, safe_amax, spec))
    usable = valid & (delta > 0)
    safe_delta = torch.where(usable, delta, torch.ones_like(delta))
    q = (torch.round(w.double() / safe_delta.double()) * safe_delta.double()).float()  # exact
    limit = spec.max_value * pow2(o, floor_log2(o, safe_amax) - spec.emax)  # in fp32, as quantize always did
    q = torch.minimum(torch.maximum(q, -limit), limit)
    return torch.where(usable, q + 0.0, w).where(w != 0, 0.0)  # every zero +0 (method.md), a zero block's too


@pytest.mark.parametrize("fmt", FORMATS)
def test_magic_number_form_is_bit_identical_to_the_textbook_form(fmt):
    spec = parse_format(fmt)
    w, amax = adversarial(seed=3)
    got = rtn_value(TorchOps(torch.device("cpu")), w, amax, spec)
    want = rtn_textbook(w, amax, spec)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("fmt", ["fp4_e2m1", "int4", "fp8_e4m3"])
def test_exact_ties_round_to_even_and_zero_is_positive(fmt):
    spec = parse_format(fmt)
    amax = torch.tensor(float(spec.max_value))  # k_b = 0: the format's own grid
    grid = quantize(torch.linspace(-spec.max_value, spec.max_value, 4001)[None], config=PQTConfig(format=fmt))
    grid = torch.unique(grid)  # the representable values (amax-scaled block: k_b = 0 needs amax in its binade)
    mids = (grid[1:] + grid[:-1]) / 2
    w = torch.cat([mids, -mids, torch.tensor([-1e-30, 1e-30])])
    got = rtn_value(TorchOps(torch.device("cpu")), w, amax.expand_as(w), spec)
    want = rtn_textbook(w, amax.expand_as(w), spec)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert (got.view(torch.int32) != torch.tensor(-0.0).view(torch.int32)).all()  # no -0
    assert not torch.isin(mids, grid).any()  # every mid-point is a real tie
    half = torch.tensor([2.5, 3.5, -2.5]) if fmt == "int4" else torch.tensor([])
    if fmt == "int4":  # half to even: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2 (torch.round agrees)
        got_half = rtn_value(TorchOps(torch.device("cpu")), half, amax.expand_as(half), spec)
        assert got_half.tolist() == [2.0, 4.0, -2.0]


def test_a_negative_key_leaves_w():
    w, amax = adversarial(n_blocks=64, seed=4)
    o = TorchOps(torch.device("cpu"))
    got = rtn_value(o, w, amax, parse_format("fp4_e2m1"), live=o.gt(torch.tensor(-1), o.i64(-1)))
    assert torch.equal(got.view(torch.int32), w.where(w != 0, 0.0).view(torch.int32))  # its zeros +0
