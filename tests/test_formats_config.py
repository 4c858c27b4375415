import math

import pytest
import torch

from pqt_compile import PQTConfig, parse_format
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


def test_config_defaults():
    c = PQTConfig()
    assert (c.format, c.block_size, c.noise, c.seed, c.include, c.exclude) == ("fp6_e3m2", 32, "gaussian", 0, (), ())
    assert c.noise_std == pytest.approx(1 / math.sqrt(12), abs=0)


@pytest.mark.parametrize(
    "field,value",
    [("format", "fp3"), ("block_size", 0), ("block_size", "col"), ("block_size", True), ("noise", "laplace"),
     ("noise_std", 0.0), ("noise_std", float("nan")), ("seed", 1.5), ("include", "("), ("exclude", 3)],
)
def test_config_errors_name_the_field_and_value(field, value):
    with pytest.raises(ValueError) as e:
        PQTConfig(**{field: value})
    assert field in str(e.value) or "format" in str(e.value)
    assert repr(value) in str(e.value) or str(value) in str(e.value)


def test_config_is_frozen_and_admits():
    c = PQTConfig(include=[r"\.attn\."], exclude="lm_head")
    with pytest.raises(Exception):
        c.format = "int8"  # type: ignore[misc]
    assert c.include == (r"\.attn\.",)
    assert c.admits("h.0.attn.c_attn.weight") and not c.admits("h.0.mlp.c_fc.weight")
    assert not PQTConfig(exclude=["lm_head"]).admits("lm_head.weight")


def test_from_options():
    c = PQTConfig.from_options({"format": "fp4_e2m1", "block_size": "row"})
    assert c.format == "fp4_e2m1" and c.block_code == 0
    assert PQTConfig.from_options(None) == PQTConfig()
    with pytest.raises(ValueError, match="formt"):
        PQTConfig.from_options({"formt": "int8"})
    c = PQTConfig(format="int4", exclude=("head",), per_rank_noise=True)
    assert PQTConfig.from_options(c.to_options()) == c  # to_options is the inverse


def test_per_rank_noise_and_rank_seed_validate():
    with pytest.raises(ValueError, match="per_rank_noise must be a bool"):
        PQTConfig(per_rank_noise=1)  # type: ignore[arg-type]
    from pqt_compile import rank_seed

    with pytest.raises(ValueError, match="rank"):
        rank_seed(3, -1)
    seeds = {rank_seed(3, r) for r in range(64)} | {rank_seed(4, 0), 3}
    assert len(seeds) == 66 and all(0 <= s < 2**63 for s in seeds)  # distinct, and fit the int64 input
