import pytest
import torch

from pqt_compile import parse_format
from pqt_compile.formats import check_resolution

TABLE = {  # method.md: name -> (E, M, bias, emax, largest value)
    "fp8_e4m3": (4, 3, 7, 8, 448.0),
    "fp8_e5m2": (5, 2, 15, 15, 57344.0),
    "fp6_e3m2": (3, 2, 3, 4, 28.0),
    "fp6_e2m3": (2, 3, 1, 2, 7.5),
    "fp4_e2m1": (2, 1, 1, 2, 6.0),
}


@pytest.mark.parametrize("name", TABLE)
def test_named_formats_match_the_table(name):
    s = parse_format(name)
    assert (s.exponent_bits, s.mantissa_bits, s.bias, s.emax, s.max_value) == TABLE[name]
    assert s.emin == 1 - s.bias and not s.is_int


@pytest.mark.parametrize("e,m", [(2, 0), (3, 4), (5, 7), (4, 2)])
def test_generic_float_formats(e, m):
    s = parse_format(f"fp{1 + e + m}_e{e}m{m}")
    bias = 2 ** (e - 1) - 1
    assert s.bias == bias and s.emax == 2**e - 1 - bias
    assert s.max_value == (2 - 2.0**-m) * 2.0**s.emax


@pytest.mark.parametrize("b", [2, 8, 9, 16])
def test_int_formats(b):
    s = parse_format(f"int{b}")
    assert s.is_int and s.emax == b - 2 and s.max_value == 2 ** (b - 1) - 1


@pytest.mark.parametrize("bad", ["fp8", "fp7_e4m3", "fp8_e1m6", "fp9_e1m7", "fp10_e6m3", "int1", "int17", "int08", "bf16", ""])
def test_unknown_formats_are_refused_with_the_accepted_forms(bad):
    with pytest.raises(ValueError, match="accepted"):
        parse_format(bad)


def test_resolution_rule():
    check_resolution(parse_format("fp8_e4m3"), torch.bfloat16)
    check_resolution(parse_format("int9"), torch.bfloat16)
    check_resolution(parse_format("int12"), torch.float16)
    check_resolution(parse_format("int16"), torch.float32)
    for fmt, dt in [("int10", torch.bfloat16), ("int13", torch.float16), ("int16", torch.bfloat16)]:
        with pytest.raises(ValueError, match="resolution"):
            check_resolution(parse_format(fmt), dt)


