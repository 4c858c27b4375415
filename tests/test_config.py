import math

import pytest

from pqt_compile import PQTConfig


def test_config_defaults():
    c = PQTConfig()
    assert (c.format, c.block_size, c.noise, c.include, c.exclude) == ("fp6_e3m2", 32, "gaussian", (), ())
    assert c.noise_std == pytest.approx(1 / math.sqrt(12), abs=0)


@pytest.mark.parametrize(
    "field,value",
    [("format", "fp3"), ("block_size", 0), ("block_size", "col"), ("block_size", True), ("noise", "laplace"),
     ("noise_std", 0.0), ("noise_std", float("nan")), ("noise_std", 1e300), ("noise_std", 1e-50), ("block_size", 2**70), ("include", "("),
     ("exclude", 3), ("share_sample", 1)],
)
def test_config_errors_name_the_field_and_value(field, value):
    with pytest.raises(ValueError) as e:
        PQTConfig(**{field: value})
    assert field in str(e.value) or "format" in str(e.value)
    assert repr(value) in str(e.value) or str(value) in str(e.value)


def test_config_is_frozen_and_keeps_patterns_as_tuples():
    c = PQTConfig(include=[r"\.attn\."], exclude="lm_head")
    with pytest.raises(Exception):
        c.format = "int8"  # type: ignore[misc]
    assert c.include == (r"\.attn\.",) and c.exclude == ("lm_head",)
    assert hash(c) == hash(PQTConfig(include=(r"\.attn\.",), exclude=("lm_head",)))  # a memo key (selection.admits)


@pytest.mark.parametrize("how", ["PQTConfig", "from_options", "replace"])
def test_the_removed_seed_field_is_refused_with_its_fix(how):
    """The run's seed has one home, pqt_compile.manual_seed; an old config that sets one fails loudly."""
    with pytest.raises(ValueError, match="manual_seed"):
        if how == "PQTConfig":
            PQTConfig(seed=3)
        elif how == "from_options":
            PQTConfig.from_options({"seed": 3})
        else:
            PQTConfig().replace(seed=3)
    assert "seed" not in PQTConfig().to_options() and "seed" not in repr(PQTConfig())
    assert PQTConfig(format="int4").replace(block_size=16) == PQTConfig(format="int4", block_size=16)


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


def test_a_format_name_in_place_of_the_config_is_refused_with_the_fix():
    """One rule (config.config_or_default) for every entry point that takes a config."""
    import torch

    import pqt_compile

    w, lin = torch.randn(8, 32), torch.nn.Linear(32, 8)
    calls = {
        "pqt_compile.sample": lambda: pqt_compile.sample(w, seed=1, config="int4"),
        "pqt_compile.quantize": lambda: pqt_compile.quantize(w, config="int4"),
        "pqt_compile.quantize_model": lambda: pqt_compile.quantize_model(lin, "int4"),
        "pqt_compile.compile": lambda: pqt_compile.compile(lin, "int4"),
    }
    for where, call in calls.items():
        with pytest.raises(TypeError, match=rf"{where}: config must be a PQTConfig, got str; .*PQTConfig\(format='int4'\)"):
            call()
    with pytest.raises(TypeError, match="got int$"):
        pqt_compile.quantize(w, config=4)
    assert torch.equal(pqt_compile.quantize(w, config=None), pqt_compile.quantize(w, config=PQTConfig()))
