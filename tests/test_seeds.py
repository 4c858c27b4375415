"""seeds.py: keys, and the seed of each (step, micro-batch) (NOTE [the seed rule])."""

import pytest
import torch

import pqt_compile
from pqt_compile import seeds


def test_step_seed_is_a_pure_function_of_base_step_and_micro_batch():
    grid = {(b, s, m): seeds.step_seed(s, m, base=b) for b in (0, 1, 2**40) for s in range(20) for m in range(4)}
    assert len(set(grid.values())) == len(grid)  # no two (base, step, micro-batch) collide here
    assert all(0 <= v < 2**63 for v in grid.values())  # fits the op's int64 seed
    assert seeds.step_seed(3, 1, base=1) == grid[(1, 3, 1)]  # and is recomputed, not remembered
    # One base: manual_seed(1) and step_seed(..., base=1) agree; a base is not an offset of another.
    pqt_compile.manual_seed(1)
    assert pqt_compile.current_seed() == grid[(1, 0, 0)]
    assert seeds.step_seed(0, 0, base=2) != seeds.step_seed(1, 0, base=1)


def test_the_stream_advances_by_step_and_micro_batch_and_restores():
    pqt_compile.manual_seed(5)
    seeds.advance_micro_batch()
    assert pqt_compile.current_seed() == seeds.step_seed(0, 1, base=5)
    seeds.advance_step()
    assert pqt_compile.seed_state() == {"base": 5, "step": 1, "micro_batch": 0}
    saved = pqt_compile.seed_state()
    seeds.advance_step()
    pqt_compile.set_seed_state(saved)
    assert pqt_compile.current_seed() == seeds.step_seed(1, 0, base=5)


def test_fixed_seed_pins_and_nests():
    with pqt_compile.fixed_seed(11):
        with pqt_compile.fixed_seed(12):
            assert pqt_compile.current_seed() == 12
        assert pqt_compile.current_seed() == 11
    assert pqt_compile.current_seed() == seeds.step_seed(0, 0, base=0)


@pytest.mark.parametrize("call", [lambda: pqt_compile.manual_seed(1.5), lambda: seeds.step_seed(-1),
                                  lambda: seeds.step_seed(0, -2), lambda: pqt_compile.fixed_seed(True).__enter__(),
                                  lambda: pqt_compile.set_seed_state({"base": 1}), lambda: pqt_compile.rank_seed(3, -1),
                                  # outside int64 (the op's seed): 2**64 aliased seed 0; fixed_seed failed at the call
                                  lambda: pqt_compile.manual_seed(2**64), lambda: pqt_compile.fixed_seed(2**63).__enter__(),
                                  lambda: pqt_compile.fixed_seed(-(2**63) - 1).__enter__(),
                                  lambda: pqt_compile.set_seed_state({"base": 0, "step": 1.7, "micro_batch": 0}),
                                  lambda: pqt_compile.set_seed_state({"base": 2**63, "step": 1, "micro_batch": 0})])
def test_bad_values_are_refused(call):
    state = pqt_compile.seed_state()
    with pytest.raises(ValueError):
        call()
    assert pqt_compile.seed_state() == state  # nothing half-set


def test_int64_extremes_are_seeds():
    for seed in (-(2**63), 2**63 - 1):
        with pqt_compile.fixed_seed(seed):
            assert pqt_compile.current_seed() == seed
    state = pqt_compile.seed_state()
    pqt_compile.set_seed_state({"base": -(2**63), "step": 3, "micro_batch": 1})
    assert pqt_compile.seed_state() == {"base": -(2**63), "step": 3, "micro_batch": 1}
    pqt_compile.set_seed_state(state)


@pytest.mark.parametrize("state", [{"base": 0, "step": 2**70, "micro_batch": 0}, {"base": 0, "step": True, "micro_batch": 0},
                                   {"base": 0, "step": 1, "micro_batch": -1}])
def test_a_seed_state_step_seed_would_refuse_is_refused(state):
    """step_seed(2**70) and manual_seed(True) are refused; a state holding them was set, and its
    seed could not be reproduced."""
    with pytest.raises(ValueError, match="the seed state's"):
        pqt_compile.set_seed_state(state)


def test_pqt_state_takes_a_config_and_names_a_state_without_one():
    with pytest.raises(TypeError, match=r"PQTState takes the PQTConfig .* got 'fp4_e2m1'"):
        pqt_compile.PQTState("fp4_e2m1")
    with pytest.raises(TypeError, match="got None"):
        pqt_compile.PQTState(None)
    with pytest.raises(ValueError, match=r"holds no PQT config \(a seed_state\(\) dict.*set_seed_state"):
        pqt_compile.PQTState(pqt_compile.PQTConfig()).load_state_dict(pqt_compile.seed_state())


def test_rank_seed_checks_its_seed():
    for bad in (2**70, 1.5, torch.tensor(3)):
        with pytest.raises(ValueError, match="rank_seed's seed"):
            pqt_compile.rank_seed(bad, 0)
